"""Reloading pgguard.toml in a running gateway (SIGHUP, or POST /reload on the admin API).

A reload is all or nothing: the file is read and validated, and the policy
and masking rules compiled from it, before anything running is touched. A
file that fails any of that leaves the gateway on the configuration it has.

What a reload changes, from the next statement of every open session:
[roles], [masking], [approvals], and the [gateway] limits (max_connections,
login_timeout, idle_timeout, max_message_size for new sessions,
max_failed_logins and failed_login_window, shutdown_grace,
allow_plaintext_loopback, admin_groups). What it cannot change -- the
addresses the gateway listens on, its TLS files, where session logs go, the
log format, [identity], [targets] and [audit] -- is kept as it is and logged
as ignored until a restart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pgguard.config import Config, ConfigError, load
from pgguard.masking.session import MaskingConfig
from pgguard.policy.guard import Policy

# [gateway] keys a running gateway cannot take: they were used once, at start.
RESTART_ONLY_GATEWAY = ("listen", "unix_socket_dir", "admin_listen", "tls_cert", "tls_key", "session_dir",
                        "log_format")
# Sections read once, at start: issuers and keys, upstream addresses and logins, session-log settings.
RESTART_ONLY_SECTIONS = ("identity", "targets", "audit")


@dataclass(frozen=True)
class Reloaded:
    """A validated configuration and what the sessions consult, ready to be swapped in."""

    config: Config
    policy: Policy
    masking: MaskingConfig
    # What changed in the file but waits for a restart, as "[gateway] listen", "[targets]".
    ignored: tuple[str, ...]


def prepare(current: Config) -> Reloaded:
    """Everything a reload swaps in, built from the file `current` was loaded from.

    ConfigError, naming the key at fault, when the file is invalid or does
    not fit the running gateway.
    """
    new = load(current.path)
    ignored = [f"[gateway] {key}" for key in RESTART_ONLY_GATEWAY
               if getattr(new.gateway, key) != getattr(current.gateway, key)]
    ignored += [f"[{section}]" for section in RESTART_ONLY_SECTIONS
                if new.raw.get(section) != current.raw.get(section)]
    raw = {key: value for key, value in new.raw.items() if key not in RESTART_ONLY_SECTIONS}
    raw.update({key: current.raw[key] for key in RESTART_ONLY_SECTIONS if key in current.raw})
    effective = replace(
        new,
        gateway=replace(new.gateway, **{key: getattr(current.gateway, key) for key in RESTART_ONLY_GATEWAY}),
        identity=current.identity, targets=current.targets, audit=current.audit, raw=raw,
    )
    for role in effective.roles.values():
        for target in effective.targets.values():
            if role.login not in target.logins:
                raise ConfigError(f"[roles.{role.name}] login {role.login!r} is not defined for the running "
                                  f"target {target.name!r} ([targets] change only on restart)")
    try:
        policy = Policy(effective)
        masking = MaskingConfig(effective)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    return Reloaded(effective, policy, masking, tuple(ignored))
