"""examples/pgguard.toml is complete, and valid once its secrets exist."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pgguard.config import ASYMMETRIC_ALGORITHMS, load
from pgguard.demo.certs import issue_server_cert, make_ca
from pgguard.identity.tokens import generate_signing_key
from pgguard.policy.extensions import BUILT_IN
from pgguard.policy.guard import Policy

EXAMPLE = Path(__file__).parents[2] / "examples" / "pgguard.toml"


def _materialise(directory: Path) -> Path:
    """Copy the example next to the files it names, as an operator would lay them out."""
    config = directory / "pgguard.toml"
    shutil.copy(EXAMPLE, config)
    (directory / "secrets").mkdir()
    generate_signing_key(directory / "secrets" / "signing-2026-11.pem")
    for name in ("pgguard_reader", "pgguard_admin"):
        (directory / "secrets" / f"{name}.password").write_text("s3cret\n")
    ca = make_ca("example CA")
    ca.write(directory / "tls", "db-ca")
    issue_server_cert(ca).write(directory / "tls", "gateway")
    return config


def test_example_config_loads_with_every_section(tmp_path, monkeypatch):
    monkeypatch.setenv("PGGUARD_WRITER_PASSWORD", "from-env")
    config = load(_materialise(tmp_path))
    target = config.targets["analytics"]
    assert target.sslmode == "verify-full"
    assert target.logins["writer"].password == "from-env"
    assert target.logins["reader"].password == "s3cret"
    assert [role.name for role in config.roles.values()] == ["analysts", "writers", "dba"]
    assert config.roles_for_groups(["data-agents"])[0].login == "reader"
    assert not config.gateway.allow_plaintext_loopback
    assert config.gateway.max_failed_logins == 50
    assert (config.gateway.idle_timeout, config.gateway.shutdown_grace) == (3600, 30)
    assert (config.gateway.log_format, config.gateway.admin_groups) == ("json", ("dba",))
    assert [provider.name for provider in config.identity.providers] == ["okta", "keycloak"]
    assert config.identity.providers[1].groups_claim == "realm_access.roles"
    assert config.identity.providers[1].algorithms == ASYMMETRIC_ALGORITHMS
    assert config.approvals.approver_groups == ("dba",) and config.approvals.timeout == 600
    assert config.approvals.webhook_url is not None and config.approvals.max_grant == 8 * 3600
    assert Policy(config).extensions.names == BUILT_IN
    rules = Policy(config).scopes["writers"].approval
    assert [(rule.kinds, rule.approvers) for rule in rules] == [
        (frozenset({"update", "delete"}), 1), (frozenset({"unfiltered", "truncate"}), 2)]


def test_pgguard_check_prints_roles(tmp_path):
    config = _materialise(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pgguard.cli", "check", "-c", str(config)],
        capture_output=True, text=True, env={"PGGUARD_WRITER_PASSWORD": "x", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "role analysts: groups analysts, data-agents; login reader" in result.stdout
    assert "held for approval (roles.writers.approval[1]): kinds truncate, unfiltered; 2 approvers" in result.stdout
    assert "approvals: approver groups dba; timeout 600 s" in result.stdout


def test_pgguard_check_names_a_missing_secret(tmp_path):
    config = _materialise(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pgguard.cli", "check", "-c", str(config)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "PGGUARD_WRITER_PASSWORD" in result.stderr
