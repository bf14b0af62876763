"""pgguard.toml: loading and validating the one configuration file.

The file is parsed into frozen dataclasses once; every error names the key at
fault so that `pgguard check` and a reload can say exactly what is wrong.
Secrets are never inline: a login's password comes from `password_file` or
`password_env`, read when the config is loaded.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key_file: Path


@dataclass(frozen=True)
class IdentityConfig:
    issuer: str
    audience: str
    username_claim: str
    groups_claim: str
    signing_keys: tuple[SigningKey, ...]
    leeway: float


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
    raw: dict[str, Any]

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
    _known(raw, "", {"gateway", "identity", "targets", "masking", "roles", "approvals", "audit"})
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
    return Config(path, gateway, identity, targets, roles, raw)


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
    )


def _identity(table: dict[str, Any], base: Path) -> IdentityConfig:
    where = "identity"
    _known(table, where, {"issuer", "audience", "username_claim", "groups_claim", "signing_keys", "leeway"})
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
    return IdentityConfig(
        issuer=_get(table, "issuer", where, str, "pgguard"),
        audience=_get(table, "audience", where, str, "pgguard"),
        username_claim=_get(table, "username_claim", where, str, "sub"),
        groups_claim=_get(table, "groups_claim", where, str, "groups"),
        signing_keys=tuple(keys),
        leeway=float(_get(table, "leeway", where, (int, float), 30)),
    )


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
    _known(table, where, {"host", "port", "dbname", "sslmode", "sslrootcert", "sslcert", "sslkey", "logins"})
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
    )


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
