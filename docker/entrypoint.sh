#!/bin/sh
# The pgguard image's entrypoint.
#   serve [ARGS]            the gateway, with the config at $PGGUARD_CONFIG (the default command)
#   setup                   the quickstart's secrets in $PGGUARD_SECRETS, demo SQL in $PGGUARD_INITDB
#   idp-token USER GROUP..  a token from the quickstart's sample identity provider
#   anything else           run as given (pgguard token issue ..., sh, ...)
set -eu
: "${PGGUARD_CONFIG:=/etc/pgguard/pgguard.toml}"
: "${PGGUARD_SECRETS:=/var/lib/pgguard/secrets}"
: "${PGGUARD_INITDB:=/var/lib/pgguard/initdb}"
: "${PYTHON:=python}"

command="${1:-serve}"
[ $# -gt 0 ] && shift

case "$command" in
    serve)
        if [ ! -f "$PGGUARD_CONFIG" ]; then
            echo "pgguard-entrypoint: no configuration at $PGGUARD_CONFIG: mount one there" >&2
            exit 2
        fi
        # exec: the gateway replaces this shell as PID 1, so SIGTERM and SIGHUP reach it.
        exec "$PYTHON" -m pgguard.cli serve -c "$PGGUARD_CONFIG" "$@"
        ;;
    setup)
        exec "$PYTHON" -m pgguard.demo.compose setup --secrets "$PGGUARD_SECRETS" --initdb "$PGGUARD_INITDB" "$@"
        ;;
    idp-token)
        exec "$PYTHON" -m pgguard.demo.compose idp-token --secrets "$PGGUARD_SECRETS" "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
