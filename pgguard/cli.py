"""The `pgguard` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import jwt
import trio

from pgguard import __version__
from pgguard.approvals import client as approvals_client
from pgguard.audit.writer import prune
from pgguard.config import ConfigError, RoleConfig, load, parse_duration
from pgguard.identity import TokenError, revocation
from pgguard.identity.tokens import TokenService
from pgguard.masking.session import MaskingConfig
from pgguard.policy.explain import dumps, explain, render
from pgguard.policy.guard import Policy
from pgguard.relay.server import server_tls_context
from pgguard.runtime import run_gateway, setup_logging


def _serve(args: argparse.Namespace) -> int:
    config = load(args.config)
    setup_logging(json_lines=args.log_json or config.gateway.log_format == "json")
    trio.run(run_gateway, config)
    return 0


def _check(args: argparse.Namespace) -> int:
    config = load(args.config)
    TokenService(config.identity)
    revoked = revocation.load(config.identity.revocation_file)
    policy = Policy(config)
    scopes = policy.scopes
    masking = MaskingConfig(config)
    masked = {name: _masked_for(masking, role) for name, role in config.roles.items()}  # raises as serve would
    server_tls_context(config)
    print(f"{config.path}: ok")
    print(f"issuer {config.identity.issuer} (the gateway's own tokens); {len(revoked)} revocation(s) in "
          f"{config.identity.revocation_file}")
    for provider in config.identity.providers:
        print(f"provider {provider.name}: issuer {provider.issuer}; keys from {provider.jwks_url or provider.jwks_file}")
    for name, target in config.targets.items():
        print(f"target {name}: {target.host}:{target.port}/{target.dbname} sslmode={target.sslmode}")
    for name, role in config.roles.items():
        print(f"role {name}: groups {', '.join(role.groups) or '-'}; login {role.login}")
        scope = scopes[name]
        if scope.unrestricted:
            print("  may run anything (not analysed)")
        else:
            print(f"  statements: {', '.join(sorted(scope.statements))}")
            print(f"  read:  {', '.join(scope.read) or '-'} (and the system catalogs)")
            print(f"  write: {', '.join(scope.write) or '-'}")
        if scope.allow_functions:
            print(f"  functions allowed: {', '.join(scope.allow_functions)}")
        for rule in scope.approval:
            print(f"  held for approval ({rule.label}): {rule}")
        print(f"  masked: {masked[name]}")
    approvals = config.approvals
    print(f"approvals: approver groups {', '.join(approvals.approver_groups) or '- (nobody can approve)'}; "
          f"timeout {approvals.timeout} s; at most {approvals.max_pending} pending; "
          f"webhook {approvals.webhook_url or '-'}")
    print(f"extensions whose functions count as PostgreSQL's own: {', '.join(sorted(policy.extensions.names))}")
    return 0


def _masked_for(masking: MaskingConfig, role: RoleConfig) -> str:
    """What a session of this role alone sees masked: columns with their functions, the detectors, strictness."""
    clearance = masking.clearance([role])
    specs = ((column, clearance.spec_for(column)) for column in masking.rules.sensitive)
    columns = [f"{column} ({spec.function})" for column, spec in specs if spec is not None]
    detectors = f"detectors {', '.join(clearance.scrubber.names)}" if clearance.scrubber else "no detectors"
    strict = "; filters on masked columns refused (strict_inference)" if clearance.strict else ""
    return f"{', '.join(columns) or 'no column'}; {detectors}{strict}"


def _explain(args: argparse.Namespace) -> int:
    config = load(args.config)
    explained = explain(config, args.group, args.sql, target=args.target, offline=args.offline)
    print(dumps(explained) if args.json else f"user {args.user}, groups {', '.join(args.group)}\n"
          + render(explained))
    return 0 if all(item.decision.allowed for item in explained) else 1


def _token_issue(args: argparse.Namespace) -> int:
    config = load(args.config)
    if args.target is not None and args.target not in config.targets:
        raise ConfigError(f"no target named {args.target!r}")
    token = TokenService(config.identity).issue(args.sub, args.group, parse_duration(args.ttl), args.target)
    print(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    print(f"pgguard: token for {args.sub}: jti {claims['jti']}, expires "
          f"{datetime.fromtimestamp(claims['exp'], UTC).isoformat()}", file=sys.stderr)
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    config = load(args.config)
    kind, value = ("jti", args.jti) if args.jti is not None else ("sub", args.sub)
    entry, new = revocation.revoke(config.identity.revocation_file, kind, value, args.reason)
    if new:
        print(f"revoked: {entry.describe()}")
        print("a running gateway refuses it and ends its sessions within a second")
    else:
        print(f"already revoked: {entry.describe()}")
    return 0


def _sessions_prune(args: argparse.Namespace) -> int:
    config = load(args.config)
    older_than = parse_duration(args.older_than) if args.older_than else config.audit.retention_seconds
    if older_than is None:
        raise ConfigError("no retention: set [audit] retention, or pass --older-than")
    directory = config.gateway.session_dir
    removed = prune(directory, older_than) if directory.is_dir() else []
    for path in removed:
        print(path)
    print(f"pgguard: removed {len(removed)} session logs older than {older_than} s from {directory}",
          file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from pgguard.demo.runner import run_demo

    return run_demo(port=args.port, as_json=args.json)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pgguard", description="Identity-aware PostgreSQL gateway.")
    top.add_argument("--version", action="version", version=f"pgguard {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("-c", "--config", required=True, help="path to pgguard.toml")
        return sub

    server = with_config("serve", "run the gateway")
    server.add_argument("--log-json", action="store_true",
                        help='log one JSON object a line (as [gateway] log_format = "json")')
    server.set_defaults(func=_serve)
    with_config("check", "validate a config and print its roles").set_defaults(func=_check)
    explainer = with_config("explain", "the decision and masking plan for a statement, as the gateway would make them")
    explainer.add_argument("--user", default="explain", help="the caller's user name (for the output)")
    explainer.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    explainer.add_argument("--target", help="target whose catalog to read (default: the first)")
    explainer.add_argument("--offline", action="store_true", help="do not read the target's catalog")
    explainer.add_argument("--json", action="store_true", help="machine-readable output")
    explainer.add_argument("sql")
    explainer.set_defaults(func=_explain)

    demo = commands.add_parser("demo", help="private PostgreSQL + sample data + gateway, all in one")
    demo.add_argument("--port", type=int, default=6432, help="gateway port (0 picks free ports)")
    demo.add_argument("--json", action="store_true", help="print one JSON object once ready")
    demo.set_defaults(func=_demo)

    token = commands.add_parser("token", help="service-account tokens signed by the gateway")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    issue = token_commands.add_parser("issue", help="issue a token")
    issue.add_argument("-c", "--config", required=True)
    issue.add_argument("--sub", required=True, help="the user name the token is for")
    issue.add_argument("--group", action="append", default=[], help="a group (repeatable)")
    issue.add_argument("--ttl", default="1h", help="lifetime, e.g. 15m, 1h, 7d")
    issue.add_argument("--target", help="restrict the token to one target")
    issue.set_defaults(func=_token_issue)
    revoke = token_commands.add_parser("revoke", help="revoke a token, or every token of a subject issued so far")
    revoke.add_argument("-c", "--config", required=True)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--jti", help="the token's jti claim")
    which.add_argument("--sub", help="the subject (sub claim): all its tokens issued until now")
    revoke.add_argument("--reason", default="", help="recorded with the revocation and logged by the gateway")
    revoke.set_defaults(func=_token_revoke)

    approvals_client.add_parser(commands)

    sessions = commands.add_parser("sessions", help="the session logs")
    session_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    pruner = session_commands.add_parser("prune", help="remove the logs of finished sessions older than the "
                                                       "retention ([audit] retention)")
    pruner.add_argument("-c", "--config", required=True)
    pruner.add_argument("--older-than", help="instead of the configured retention, e.g. 30d, 12h")
    pruner.set_defaults(func=_sessions_prune)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, TokenError, ValueError, OSError) as exc:
        print(f"pgguard: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
