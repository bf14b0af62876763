"""Loading pgguard.toml: the demo config as written by `pgguard demo`, and what must be refused."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pgguard.config import ASYMMETRIC_ALGORITHMS, ConfigError, load
from pgguard.demo import data
from pgguard.demo.gateway_config import write_config
from rawclient import TomlValue, set_keys

DB = data.DATABASE
PASSWORDS = {name: f"secret-of-{name}" for name in data.LOGINS}


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    tls = tmp_path / "tls"
    tls.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (tls / name).write_text("placeholder")
    return write_config(
        tmp_path / "gw", host="127.0.0.1", port=6432, admin_port=6433, tls_cert=tls / "server.crt",
        tls_key=tls / "server.key", pg_host="127.0.0.1", pg_port=5432, pg_ca=tls / "ca.crt",
        database=DB, login_passwords=PASSWORDS,
    )


def refusal(config: Path, section: str, values: dict[str, TomlValue]) -> str:
    """The ConfigError message for the demo config with `values` set in `[section]`."""
    config.write_text(set_keys(config.read_text(), section, values))
    with pytest.raises(ConfigError) as caught:
        load(config)
    return str(caught.value)


def test_demo_config_loads(demo_config: Path) -> None:
    config = load(demo_config)
    assert [str(address) for address in config.gateway.listen] == ["127.0.0.1:6432"]
    assert config.gateway.allow_plaintext_loopback is True
    assert config.gateway.login_timeout == 10 and config.gateway.max_connections == 1000
    assert config.identity.issuer == "pgguard-demo" and config.identity.signing_keys[0].kid == "demo-1"
    target = config.targets[DB]
    assert (target.host, target.port, target.sslmode) == ("127.0.0.1", 5432, "verify-full")
    assert target.sslrootcert is not None and target.sslrootcert.name == "ca.crt"
    assert {name: login.user for name, login in target.logins.items()} == {
        "reader": data.READER, "support": data.SUPPORT, "engineer": data.ENGINEER, "admin": data.ADMIN}
    assert {login.user: login.password for login in target.logins.values()} == PASSWORDS
    assert set(config.roles) == {"analysts", "support", "engineering", "dba"}
    assert [role.name for role in config.roles_for_groups(["analysts"])] == ["analysts"]
    assert config.roles["support"].login == "support"


def test_passwords_are_not_in_the_repr(demo_config: Path) -> None:
    assert not any(password in repr(load(demo_config)) for password in PASSWORDS.values())


def test_settings_are_read(demo_config: Path) -> None:
    demo_config.write_text(set_keys(demo_config.read_text(), "gateway", {"login_timeout": 1, "max_connections": 8}))
    config = load(demo_config)
    assert (config.gateway.login_timeout, config.gateway.max_connections) == (1.0, 8)


def test_password_from_environment(demo_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGGUARD_TEST_READER_PASSWORD", "from-env")
    demo_config.write_text(set_keys(demo_config.read_text(), f"targets.{DB}.logins.reader",
                                    {"password_file": None, "password_env": "PGGUARD_TEST_READER_PASSWORD"}))
    assert load(demo_config).targets[DB].logins["reader"].password == "from-env"


def test_inline_password_is_refused(demo_config: Path) -> None:
    message = refusal(demo_config, f"targets.{DB}.logins.reader", {"password_file": None, "password": "hunter2"})
    assert f"targets.{DB}.logins.reader" in message and "must not be inline" in message
    assert "hunter2" not in message


@pytest.mark.parametrize("section", ["gateway", "identity", f"targets.{DB}", f"targets.{DB}.logins.reader"])
def test_unknown_key_is_refused_by_name(demo_config: Path, section: str) -> None:
    message = refusal(demo_config, section, {"lsiten_typo": "x"})
    assert "lsiten_typo" in message and section in message


def test_unknown_top_level_table_is_refused(demo_config: Path) -> None:
    demo_config.write_text(demo_config.read_text() + "\n[rolez.analysts]\ngroups = []\n")
    with pytest.raises(ConfigError, match="rolez"):
        load(demo_config)


@pytest.mark.parametrize("sslmode", ["verify_full", "allow", "REQUIRE", ""])
def test_bad_sslmode_is_refused(demo_config: Path, sslmode: str) -> None:
    message = refusal(demo_config, f"targets.{DB}", {"sslmode": sslmode})
    assert "sslmode" in message and "verify-full" in message


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_verification_without_a_root_certificate_is_refused(demo_config: Path, sslmode: str) -> None:
    message = refusal(demo_config, f"targets.{DB}", {"sslmode": sslmode, "sslrootcert": None})
    assert "sslrootcert" in message and sslmode in message


def test_role_naming_an_undefined_login_is_refused(demo_config: Path) -> None:
    message = refusal(demo_config, "roles.analysts", {"login": "superuser_please"})
    assert "roles.analysts" in message and "superuser_please" in message


@pytest.mark.parametrize(("section", "values", "names"), [
    ("gateway", {"max_connections": "many"}, "max_connections"),
    ("gateway", {"allow_plaintext_loopback": "yes"}, "allow_plaintext_loopback"),
    ("gateway", {"listen": "127.0.0.1:6432"}, "listen"),
    (f"targets.{DB}", {"port": True}, "port"),
])
def test_wrong_types_are_refused_by_name(demo_config: Path, section: str, values: dict[str, TomlValue],
                                         names: str) -> None:
    assert names in refusal(demo_config, section, values)


def test_missing_password_file_is_refused(demo_config: Path) -> None:
    message = refusal(demo_config, f"targets.{DB}.logins.reader", {"password_file": "/nonexistent/pw"})
    assert "password_file" in message and "/nonexistent/pw" in message


def test_invalid_toml_is_refused(demo_config: Path) -> None:
    demo_config.write_text(re.sub(r"\[gateway\]", "[gateway", demo_config.read_text(), count=1))
    with pytest.raises(ConfigError):
        load(demo_config)


def with_provider(config: Path, **changes: object) -> Path:
    """The demo config plus one [[identity.providers]] table, with `changes` (None removes a key)."""
    values = {"name": "okta", "issuer": "https://example.okta.com", "audience": "api://pgguard",
              "jwks_url": "https://example.okta.com/v1/keys", **changes}
    table = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items() if value is not None)
    config.write_text(config.read_text() + "\n[[identity.providers]]\n" + table)
    return config


def test_identity_defaults_and_a_provider(demo_config: Path) -> None:
    identity = load(with_provider(demo_config, audience=["api://pgguard", "api://other"])).identity
    assert identity.revocation_file == demo_config.parent / "revoked.json"
    assert identity.expiry_grace == 0
    (provider,) = identity.providers
    assert (provider.name, provider.issuer, provider.audience) == (
        "okta", "https://example.okta.com", ("api://pgguard", "api://other"))
    assert (provider.username_claim, provider.groups_claim) == ("preferred_username", "groups")
    assert provider.algorithms == ASYMMETRIC_ALGORITHMS
    assert (provider.leeway, provider.jwks_timeout, provider.jwks_min_refetch, provider.jwks_max_age) == (
        identity.leeway, 5, 30, 3600)


@pytest.mark.parametrize(("changes", "message"), [
    ({"algorithms": ["RS256", "HS256"]}, "algorithms: 'HS256' is not accepted"),
    ({"algorithms": ["none"]}, "algorithms: 'none' is not accepted"),
    ({"algorithms": []}, "algorithms: none listed; choose from RS256"),
    ({"jwks_url": "http://idp.example.com/keys"}, "jwks_url must be an https:// URL"),
    ({"jwks_file": "keys.json"}, "exactly one of jwks_url and jwks_file"),
    ({"jwks_url": None}, "exactly one of jwks_url and jwks_file"),
    ({"audience": []}, "audience must be a string or a list of strings"),
    ({"issuer": "pgguard-demo"}, "issuer 'pgguard-demo' is used twice"),
    ({"leeway": -1}, "leeway must not be negative"),
    ({"name": None}, "name is required"),
    ({"groups_claim": 5}, "groups_claim must be a str"),
    ({"jwks_urls": "typo"}, "unknown key(s) jwks_urls"),
])
def test_a_bad_provider_is_refused_by_name(demo_config: Path, changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(with_provider(demo_config, **changes))
    assert "identity.providers[0]" in str(caught.value) or "[identity]" in str(caught.value)
    assert message in str(caught.value)


def test_plain_http_jwks_is_allowed_on_loopback_only(demo_config: Path) -> None:
    provider = load(with_provider(demo_config, jwks_url="http://127.0.0.1:8080/certs")).identity.providers[0]
    assert provider.jwks_url == "http://127.0.0.1:8080/certs"


@pytest.mark.parametrize(("section", "values", "message"), [
    ("gateway", {"max_failed_logins": -1}, "max_failed_logins must not be negative"),
    ("gateway", {"failed_login_window": "1m"}, "failed_login_window must be a int or float"),
    ("identity", {"expiry_grace": -5}, "expiry_grace must not be negative"),
    (f"targets.{DB}", {"catalog_timeout": 0}, "catalog_timeout must be more than 0"),
    (f"targets.{DB}", {"catalog_timeout": -1}, "catalog_timeout must not be negative"),
])
def test_bad_limits_are_refused(demo_config: Path, section: str, values: dict[str, TomlValue], message: str) -> None:
    assert message in refusal(demo_config, section, values)


def test_audit_defaults(demo_config: Path) -> None:
    audit = load(demo_config).audit
    assert audit.enabled and audit.fsync == "checkpoint" and audit.retention_seconds is None
    assert audit.max_rows == 100 and "email" in audit.parameter_detectors


@pytest.mark.parametrize(("values", "message"), [
    ({"fsync": "sometimes"}, "fsync must be one of never, checkpoint, always"),
    ({"retention": "soon"}, "[audit] retention: not a duration"),
    ({"retention": "0d"}, "[audit] retention: must be longer than 0 s"),
    ({"checkpoint_records": 0}, "checkpoint_records must be positive"),
    ({"max_rows": -1}, "max_rows must not be negative"),
    ({"compress": True}, "compress"),
])
def test_bad_audit_settings_are_refused(demo_config: Path, values: dict[str, TomlValue], message: str) -> None:
    assert message in refusal(demo_config, "audit", values)


def test_audit_retention_is_read(demo_config: Path) -> None:
    demo_config.write_text(set_keys(demo_config.read_text(), "audit", {"retention": "30d", "fsync": "always"}))
    audit = load(demo_config).audit
    assert audit.retention_seconds == 30 * 86400 and audit.fsync == "always"


def test_an_unknown_parameter_detector_is_refused(demo_config: Path) -> None:
    text = demo_config.read_text().replace("[audit]\n", '[audit]\nparameter_detectors = ["email", "zip"]\n')
    demo_config.write_text(text)
    with pytest.raises(ConfigError, match="unknown detector 'zip'"):
        load(demo_config)
