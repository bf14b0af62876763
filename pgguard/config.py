"""pgguard.toml: loading and validating the one configuration file.

The file is parsed into frozen dataclasses once; every error names the key at
fault so that `pgguard check` and a reload can say exactly what is wrong.
Secrets are never inline: a login's password comes from `password_file` or
`password_env`, read when the config is loaded.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SSLMODES = ("disable", "prefer", "require", "verify-ca", "verify-full")


class ConfigError(Exception):
    """The configuration file is invalid; the message names the key."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, where: str) -> Listen:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"{where}: expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class GatewayConfig:
    listen: tuple[Listen, ...]
    # A directory for a Unix-domain socket named as PostgreSQL names its
    # own (.s.PGSQL.PORT, PORT from the first listen address), so that
    # `psql -h DIR` works unchanged.
    unix_socket_dir: Path | None
    admin_listen: Listen | None
    tls_cert: Path | None
    tls_key: Path | None
    # Cleartext tokens are accepted without TLS only from loopback or the
    # Unix socket, and only when this is set.
    allow_plaintext_loopback: bool
    session_dir: Path
    max_message_size: int
    max_connections: int
    login_timeout: float
    # Failed logins one client address may have within the window before its
    # new connections are refused at accept; 0 turns the limit off.
    max_failed_logins: int
    failed_login_window: float
    # Seconds a session may sit with no request running and no byte either
    # way before it is ended (FATAL 57P05); 0 keeps idle sessions forever.
    idle_timeout: float = 0.0
    # On SIGTERM: seconds running statements get to finish before their
    # sessions are ended anyway.
    shutdown_grace: float = 30.0
    # "text" or "json" (one object a line, with the session id where there is one).
    log_format: str = "text"
    # Groups whose bearer tokens may use the admin API's operator endpoints
    # (POST /reload); none: those endpoints refuse everyone.
    admin_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuditConfig:
    """[audit]: how session logs are written and kept (docs/session-log.md)."""

    # When false, sessions are relayed without a log; the gateway warns at start.
    enabled: bool
    fsync: str
    checkpoint_records: int
    checkpoint_seconds: float
    # Disk space each open session keeps allocated ahead of its log.
    reserve_bytes: int
    max_rows: int
    max_cell_bytes: int
    max_values_bytes: int
    max_text_bytes: int
    # Detectors run over extended-protocol parameters before they are recorded.
    parameter_detectors: tuple[str, ...]
    # Logs of finished sessions older than this are pruned; None keeps them.
    retention_seconds: int | None


@dataclass(frozen=True)
class ApprovalsConfig:
    """[approvals]: who approves held statements, for how long they wait (docs/approvals.md)."""

    approver_groups: tuple[str, ...]
    # Seconds a held statement waits before it fails as timed out.
    timeout: int
    # Held requests at most, across the gateway; past it, statements needing approval are refused.
    max_pending: int
    # Told (POST, JSON with a Slack-compatible `text`) of every request and decision; None: nobody.
    webhook_url: str | None
    # The admin listener's address as approvers reach it, for the notice; None: the bound address.
    public_url: str | None
    # The longest grant (`approve --grant`) an approver may give.
    max_grant: int


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key_file: Path


# JWT algorithms a token may be signed with: public-key ones only. `none`
# and the HMAC family are never accepted, whatever a config says, so a public
# key can never be used as a shared secret (key confusion).
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                         "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True)
class ProviderConfig:
    """An OIDC provider whose tokens the gateway accepts ([[identity.providers]])."""

    name: str
    issuer: str
    audience: tuple[str, ...]
    # Exactly one of the two is set.
    jwks_url: str | None
    jwks_file: Path | None
    username_claim: str
    groups_claim: str
    algorithms: tuple[str, ...]
    leeway: float
    jwks_timeout: float
    # An unknown kid refetches the JWKS at most once per this many seconds;
    # keys older than jwks_max_age are refetched on their next use.
    jwks_min_refetch: float
    jwks_max_age: float


@dataclass(frozen=True)
class IdentityConfig:
    # The gateway's own (service-account) tokens.
    issuer: str
    audience: str
    username_claim: str
    groups_claim: str
    signing_keys: tuple[SigningKey, ...]
    leeway: float
    providers: tuple[ProviderConfig, ...]
    # Revoked tokens (jti) and subjects, written by `pgguard token revoke`.
    revocation_file: Path
    # Seconds a session may outlive its token.
    expiry_grace: float


@dataclass(frozen=True)
class Login:
    """Credentials the gateway holds for one upstream user."""

    user: str
    password: str | None = field(repr=False)
    # Defence in depth: sessions on this login run with
    # default_transaction_read_only=on, which pgguard never lets them turn off.
    read_only: bool = False


@dataclass(frozen=True)
class TargetConfig:
    name: str
    host: str
    port: int
    dbname: str
    sslmode: str
    sslrootcert: Path | None
    sslcert: Path | None
    sslkey: Path | None
    logins: dict[str, Login]
    # Seconds a read of the target's catalog (policy/catalog.py) may take before it is given up.
    catalog_timeout: float = 30.0


@dataclass(frozen=True)
class RoleConfig:
    name: str
    groups: tuple[str, ...]
    login: str
    # Everything else in the role's table (scopes, masking clearance,
    # approvals) is kept raw here until the features that enforce it read it.
    rules: dict[str, Any]


@dataclass(frozen=True)
class Config:
    path: Path
    gateway: GatewayConfig
    identity: IdentityConfig
    targets: dict[str, TargetConfig]
    roles: dict[str, RoleConfig]
    audit: AuditConfig
    raw: dict[str, Any]
    approvals: ApprovalsConfig = field(default_factory=lambda: _approvals({}))

    def roles_for_groups(self, groups: list[str]) -> list[RoleConfig]:
        wanted = set(groups)
        return [role for role in self.roles.values() if wanted.intersection(role.groups)]


def load(path: str | os.PathLike[str]) -> Config:
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    base = path.parent
    _known(raw, "", {"gateway", "identity", "targets", "masking", "roles", "approvals", "audit", "policy"})
    gateway = _gateway(_table(raw, "gateway"), base)
    identity = _identity(_table(raw, "identity"), base)
    targets = {
        name: _target(name, _table(raw["targets"], name, "targets"), base)
        for name in _table(raw, "targets")
    }
    if not targets:
        raise ConfigError("[targets]: at least one target is required")
    roles = {
        name: _role(name, _table(raw["roles"], name, "roles"), targets)
        for name in _table(raw, "roles")
    }
    config = Config(path, gateway, identity, targets, roles, _audit(_table(raw, "audit")), raw,
                    _approvals(_table(raw, "approvals")))
    # Approval rules are compiled by the package that enforces them, which builds on this module.
    from pgguard.approvals.rules import compile_rules
    from pgguard.policy.extensions import trusted_extensions
    for role in roles.values():
        compile_rules(role)
    trusted_extensions(_table(raw, "policy"))
    return config


def _table(parent: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = parent.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{_join(where, key)}] must be a table")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _known(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"[{where or 'top level'}]: unknown key(s) {', '.join(unknown)}")


def _get(table: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"[{where}] {key} is required")
        return default
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"[{where}] {key} must be a {names}, got {value!r}")
    return value


def _path(table: dict[str, Any], key: str, where: str, base: Path) -> Path | None:
    value = _get(table, key, where, str, None)
    return None if value is None else (base / value)


def _gateway(table: dict[str, Any], base: Path) -> GatewayConfig:
    where = "gateway"
    _known(table, where, {
        "listen", "unix_socket_dir", "admin_listen", "tls_cert", "tls_key", "allow_plaintext_loopback",
        "session_dir", "max_message_size", "max_connections", "login_timeout",
        "max_failed_logins", "failed_login_window", "idle_timeout", "shutdown_grace",
        "log_format", "admin_groups",
    })
    listen = tuple(Listen.parse(item, f"[{where}] listen") for item in _get(table, "listen", where, list))
    if not listen:
        raise ConfigError(f"[{where}] listen needs at least one address")
    admin = _get(table, "admin_listen", where, str, None)
    tls_cert = _path(table, "tls_cert", where, base)
    tls_key = _path(table, "tls_key", where, base)
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError(f"[{where}] tls_cert and tls_key go together")
    for file in (tls_cert, tls_key):
        if file is not None and not file.is_file():
            raise ConfigError(f"[{where}] no such file: {file}")
    return GatewayConfig(
        listen=listen,
        unix_socket_dir=_path(table, "unix_socket_dir", where, base),
        admin_listen=Listen.parse(admin, f"[{where}] admin_listen") if admin else None,
        tls_cert=tls_cert,
        tls_key=tls_key,
        allow_plaintext_loopback=_get(table, "allow_plaintext_loopback", where, bool, False),
        session_dir=_path(table, "session_dir", where, base) or base / "sessions",
        max_message_size=_get(table, "max_message_size", where, int, 64 * 1024 * 1024),
        max_connections=_get(table, "max_connections", where, int, 1000),
        login_timeout=float(_get(table, "login_timeout", where, (int, float), 10)),
        max_failed_logins=_not_negative(table, "max_failed_logins", where, int, 50),
        failed_login_window=_seconds(table, "failed_login_window", where, 60),
        idle_timeout=_seconds(table, "idle_timeout", where, 0),
        shutdown_grace=_seconds(table, "shutdown_grace", where, 30),
        log_format=_choice(table, "log_format", where, ("text", "json"), "text"),
        admin_groups=tuple(_strings(table, "admin_groups", where)),
    )


def _choice(table: dict[str, Any], key: str, where: str, choices: tuple[str, ...], default: str) -> str:
    value = _get(table, key, where, str, default)
    if value not in choices:
        raise ConfigError(f"[{where}] {key} must be one of {', '.join(choices)}, not {value!r}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    values = _get(table, key, where, list, [])
    if not all(isinstance(value, str) and value for value in values):
        raise ConfigError(f"[{where}] {key} must be a list of names")
    return values


def _not_negative(table: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = _get(table, key, where, kind, default)
    if value < 0:
        raise ConfigError(f"[{where}] {key} must not be negative")
    return value


def _seconds(table: dict[str, Any], key: str, where: str, default: float) -> float:
    return float(_not_negative(table, key, where, (int, float), default))


_FSYNC_POLICIES = ("never", "checkpoint", "always")
_ALL_DETECTORS = ("card_number", "email", "ssn", "iban", "phone")


def _audit(table: dict[str, Any]) -> AuditConfig:
    where = "audit"
    _known(table, where, {"enabled", "fsync", "checkpoint_records", "checkpoint_seconds", "reserve_bytes", "max_rows",
                          "max_cell_bytes", "max_values_bytes", "max_text_bytes", "parameter_detectors",
                          "retention"})
    fsync = _get(table, "fsync", where, str, "checkpoint")
    if fsync not in _FSYNC_POLICIES:
        raise ConfigError(f"[{where}] fsync must be one of {', '.join(_FSYNC_POLICIES)}, not {fsync!r}")
    detectors = _get(table, "parameter_detectors", where, list, list(_ALL_DETECTORS))
    unknown = [name for name in detectors if name not in _ALL_DETECTORS]
    if unknown:
        raise ConfigError(f"[{where}] parameter_detectors: unknown detector {unknown[0]!r}; "
                          f"known: {', '.join(_ALL_DETECTORS)}")
    retention = _get(table, "retention", where, str, None)
    return AuditConfig(
        enabled=_get(table, "enabled", where, bool, True),
        fsync=fsync,
        checkpoint_records=_positive(table, "checkpoint_records", where, 1000),
        checkpoint_seconds=float(_positive(table, "checkpoint_seconds", where, 10)),
        reserve_bytes=_positive(table, "reserve_bytes", where, 1 << 20),
        max_rows=_not_negative(table, "max_rows", where, int, 100),
        max_cell_bytes=_not_negative(table, "max_cell_bytes", where, int, 4096),
        max_values_bytes=_not_negative(table, "max_values_bytes", where, int, 256 * 1024),
        max_text_bytes=_positive(table, "max_text_bytes", where, 64 * 1024),
        parameter_detectors=tuple(detectors),
        retention_seconds=None if retention is None else _duration(retention, f"[{where}] retention"),
    )


def _approvals(table: dict[str, Any]) -> ApprovalsConfig:
    where = "approvals"
    _known(table, where, {"approver_groups", "timeout", "max_pending", "webhook_url", "public_url", "max_grant"})
    groups = _get(table, "approver_groups", where, list, [])
    if not all(isinstance(group, str) for group in groups):
        raise ConfigError(f"[{where}] approver_groups must be strings")
    webhook = _get(table, "webhook_url", where, str, None)
    public = _get(table, "public_url", where, str, None)
    for key, url in (("webhook_url", webhook), ("public_url", public)):
        if url is not None and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"[{where}] {key} must be an http or https URL, got {url!r}")
    return ApprovalsConfig(
        approver_groups=tuple(groups),
        timeout=_duration(_get(table, "timeout", where, str, "10m"), f"[{where}] timeout"),
        max_pending=_positive(table, "max_pending", where, 100),
        webhook_url=webhook,
        public_url=public.rstrip("/") if public else None,
        max_grant=_duration(_get(table, "max_grant", where, str, "8h"), f"[{where}] max_grant"),
    )


def _positive(table: dict[str, Any], key: str, where: str, default: int) -> Any:
    value = _get(table, key, where, (int, float) if key.endswith("seconds") else int, default)
    if value <= 0:
        raise ConfigError(f"[{where}] {key} must be positive")
    return value


def parse_duration(text: str) -> int:
    """'90s', '15m', '1h', '7d' or plain seconds -> seconds."""
    match = re.fullmatch(r"(\d+)\s*([smhd]?)", text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h, 7d)")
    number, unit = match.groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _duration(text: str, where: str) -> int:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if seconds <= 0:
        raise ConfigError(f"{where}: must be longer than 0 s")
    return seconds


def _identity(table: dict[str, Any], base: Path) -> IdentityConfig:
    where = "identity"
    _known(table, where, {"issuer", "audience", "username_claim", "groups_claim", "signing_keys", "leeway",
                          "providers", "revocation_file", "expiry_grace"})
    keys = []
    for index, item in enumerate(_get(table, "signing_keys", where, list, [])):
        key_where = f"{where}.signing_keys[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"[{key_where}] must be a table")
        _known(item, key_where, {"kid", "private_key_file"})
        key_file = _path(item, "private_key_file", key_where, base)
        if key_file is None or not key_file.is_file():
            raise ConfigError(f"[{key_where}] private_key_file is required and must exist")
        keys.append(SigningKey(_get(item, "kid", key_where, str), key_file))
    issuer = _get(table, "issuer", where, str, "pgguard")
    leeway = _seconds(table, "leeway", where, 30)
    providers = tuple(
        _provider(item, f"{where}.providers[{index}]", base, leeway)
        for index, item in enumerate(_get(table, "providers", where, list, []))
    )
    issuers = [issuer, *(provider.issuer for provider in providers)]
    names = [provider.name for provider in providers]
    for kind, values in (("issuer", issuers), ("name", names)):
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise ConfigError(f"[{where}] {kind} {twice[0]!r} is used twice: each must be unique")
    return IdentityConfig(
        issuer=issuer,
        audience=_get(table, "audience", where, str, "pgguard"),
        username_claim=_get(table, "username_claim", where, str, "sub"),
        groups_claim=_get(table, "groups_claim", where, str, "groups"),
        signing_keys=tuple(keys),
        leeway=leeway,
        providers=providers,
        revocation_file=_path(table, "revocation_file", where, base) or base / "revoked.json",
        expiry_grace=_seconds(table, "expiry_grace", where, 0),
    )


def _provider(table: Any, where: str, base: Path, leeway: float) -> ProviderConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table")
    _known(table, where, {"name", "issuer", "audience", "jwks_url", "jwks_file", "username_claim", "groups_claim",
                          "algorithms", "leeway", "jwks_timeout", "jwks_min_refetch", "jwks_max_age"})
    audience = _get(table, "audience", where, (str, list))
    audiences = (audience,) if isinstance(audience, str) else tuple(audience)
    if not audiences or not all(isinstance(item, str) and item for item in audiences):
        raise ConfigError(f"[{where}] audience must be a string or a list of strings")
    algorithms = _get(table, "algorithms", where, list, list(ASYMMETRIC_ALGORITHMS))
    refused = [alg for alg in algorithms if alg not in ASYMMETRIC_ALGORITHMS]
    if refused or not algorithms:
        problem = f"{refused[0]!r} is not accepted" if refused else "none listed"
        raise ConfigError(f"[{where}] algorithms: {problem}; choose from {', '.join(ASYMMETRIC_ALGORITHMS)}")
    jwks_url = _get(table, "jwks_url", where, str, None)
    jwks_file = _path(table, "jwks_file", where, base)
    if (jwks_url is None) == (jwks_file is None):
        raise ConfigError(f"[{where}] exactly one of jwks_url and jwks_file is required")
    if jwks_url is not None:
        _check_jwks_url(jwks_url, where)
    return ProviderConfig(
        name=_get(table, "name", where, str),
        issuer=_get(table, "issuer", where, str),
        audience=audiences,
        jwks_url=jwks_url,
        jwks_file=jwks_file,
        username_claim=_get(table, "username_claim", where, str, "preferred_username"),
        groups_claim=_get(table, "groups_claim", where, str, "groups"),
        algorithms=tuple(algorithms),
        leeway=_seconds(table, "leeway", where, leeway),
        jwks_timeout=_seconds(table, "jwks_timeout", where, 5),
        jwks_min_refetch=_seconds(table, "jwks_min_refetch", where, 30),
        jwks_max_age=_seconds(table, "jwks_max_age", where, 3600),
    )


def _check_jwks_url(url: str, where: str) -> None:
    """https, or http to this machine: keys fetched in the clear could be swapped on the way."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and (parts.hostname == "localhost" or is_loopback(parts.hostname)):
        return
    raise ConfigError(f"[{where}] jwks_url must be an https:// URL (http:// only on loopback), got {url!r}")


def _secret(table: dict[str, Any], where: str, base: Path) -> str | None:
    if "password" in table:
        raise ConfigError(f"[{where}] password must not be inline: use password_file or password_env")
    file = _path(table, "password_file", where, base)
    env = _get(table, "password_env", where, str, None)
    if file is not None:
        try:
            return file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"[{where}] password_file {file}: {exc.strerror}") from exc
    if env is not None:
        if env not in os.environ:
            raise ConfigError(f"[{where}] environment variable {env} is not set")
        return os.environ[env]
    return None


def _target(name: str, table: dict[str, Any], base: Path) -> TargetConfig:
    where = f"targets.{name}"
    _known(table, where, {"host", "port", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey", "logins",
                          "catalog_timeout"})
    sslmode = _get(table, "sslmode", where, str, "prefer")
    if sslmode not in SSLMODES:
        raise ConfigError(f"[{where}] sslmode must be one of {', '.join(SSLMODES)}")
    sslrootcert = _path(table, "sslrootcert", where, base)
    if sslmode.startswith("verify") and sslrootcert is None:
        raise ConfigError(f"[{where}] sslmode {sslmode} needs sslrootcert")
    logins = {}
    for login_name, login in _table(table, "logins", where).items():
        login_where = f"{where}.logins.{login_name}"
        if not isinstance(login, dict):
            raise ConfigError(f"[{login_where}] must be a table")
        _known(login, login_where, {"user", "password", "password_file", "password_env", "read_only"})
        logins[login_name] = Login(_get(login, "user", login_where, str), _secret(login, login_where, base),
                                   _get(login, "read_only", login_where, bool, False))
    if not logins:
        raise ConfigError(f"[{where}.logins] at least one login is required")
    return TargetConfig(
        name=name,
        host=_get(table, "host", where, str),
        port=_get(table, "port", where, int, 5432),
        dbname=_get(table, "dbname", where, str, name),
        sslmode=sslmode,
        sslrootcert=sslrootcert,
        sslcert=_path(table, "sslcert", where, base),
        sslkey=_path(table, "sslkey", where, base),
        logins=logins,
        catalog_timeout=_positive_seconds(table, "catalog_timeout", where, 30),
    )


def _positive_seconds(table: dict[str, Any], key: str, where: str, default: float) -> float:
    seconds = _seconds(table, key, where, default)
    if not seconds:
        raise ConfigError(f"[{where}] {key} must be more than 0")
    return seconds


def _role(name: str, table: dict[str, Any], targets: dict[str, TargetConfig]) -> RoleConfig:
    where = f"roles.{name}"
    groups = _get(table, "groups", where, list, [])
    if not all(isinstance(group, str) for group in groups):
        raise ConfigError(f"[{where}] groups must be strings")
    login = _get(table, "login", where, str)
    for target in targets.values():
        if login not in target.logins:
            raise ConfigError(f"[{where}] login {login!r} is not defined for target {target.name!r}")
    rules = {key: value for key, value in table.items() if key not in ("groups", "login")}
    return RoleConfig(name, tuple(groups), login, rules)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False
