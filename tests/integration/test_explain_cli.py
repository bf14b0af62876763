"""`pgguard explain` and `pgguard check`, as policy authors and CI pipelines use them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _pgguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgguard.cli", *args], capture_output=True, text=True,
                          timeout=60)


def test_explain_refuses_a_hidden_write_and_exits_1(gateway):
    result = _pgguard("explain", "-c", str(gateway.config_path), "--user", "alice", "--group", "analysts",
                      "SELECT 1; WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone")
    assert result.returncode == 1, result.stderr
    assert "writes:    orders (delete)" in result.stdout
    assert "REFUSED: pgguard: WITH refused: role analysts may not write (delete) public.orders" in result.stdout


def test_explain_reads_the_catalog_and_knows_user_defined_functions(gateway, postgres):
    postgres.cluster.psql("CREATE OR REPLACE FUNCTION public.explain_probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                          "demo")
    try:
        result = _pgguard("explain", "-c", str(gateway.config_path), "--group", "analysts", "--json",
                          "SELECT explain_probe(), lower(full_name) FROM customers")
    finally:
        postgres.cluster.psql("DROP FUNCTION public.explain_probe()", "demo")
    assert result.returncode == 1, result.stderr
    (decision,) = json.loads(result.stdout)
    assert decision["functions"] == ["explain_probe", "lower"]
    assert "user-defined function public.explain_probe() is not listed as safe" in decision["message"]


def test_explain_allows_an_engineers_write_offline(gateway):
    result = _pgguard("explain", "-c", str(gateway.config_path), "--group", "engineering", "--offline", "--json",
                      "UPDATE orders SET status = 'paid' WHERE id = $1")
    assert result.returncode == 0, result.stdout + result.stderr
    (decision,) = json.loads(result.stdout)
    assert decision["allowed"] and decision["writes"] == {"orders": ["update"]}


def test_check_prints_what_each_role_may_do(gateway):
    result = _pgguard("check", "-c", str(gateway.config_path))
    assert result.returncode == 0, result.stderr
    assert "role support: groups support; login support" in result.stdout
    assert "  write: public.tickets" in result.stdout
    assert "role dba: groups dba; login admin\n  may run anything" in result.stdout
    assert ("  masked: public.customers.email (email), public.customers.phone (partial), "
            "public.customers.card_number (partial), public.customers.ssn (redact), public.tickets.body (scrub); "
            "detectors card_number, email; filters on masked columns refused (strict_inference)\n") in result.stdout
    assert "  masked: public.customers.phone (partial), public.customers.card_number (partial), " \
           "public.customers.ssn (redact); detectors card_number\n" in result.stdout  # support
    assert "  may run anything (not analysed)\n  masked: no column; no detectors\n" in result.stdout


@pytest.mark.parametrize(("old", "new", "error"), [
    ('"public.tickets.body" = "scrub"', '"public.tickets.body" = "scurb"', "unknown masking function 'scurb'"),
    ('detectors = ["card_number"]', 'detectors = ["card-number"]', "unknown detector 'card-number'"),
])
def test_check_refuses_a_masking_config_the_gateway_would_refuse(tmp_path, gateway, old, new, error):
    """Fixed: check said ok, and printed every role, for a [masking] that serve refuses at start."""
    config = tmp_path / "pgguard.toml"
    text = gateway.config_path.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    result = _pgguard("check", "-c", str(config))
    assert result.returncode == 2 and result.stdout == ""
    assert error in result.stderr


def test_check_names_an_unknown_statement_class(tmp_path, gateway):
    config = tmp_path / "pgguard.toml"
    config.write_text(gateway.config_path.read_text().replace(
        'statements = ["read", "write", "ddl", "session", "transaction"]',
        'statements = ["read", "wirte"]'))
    result = _pgguard("check", "-c", str(config))
    assert result.returncode == 2
    assert "[roles.engineering] statements: unknown class(es) wirte" in result.stderr


def test_explain_shows_each_columns_masking_and_refuses_what_masking_cannot_guarantee(gateway):
    result = _pgguard("explain", "-c", str(gateway.config_path), "--group", "analysts",
                      "SELECT id, email, lower(email), city, body FROM customers JOIN tickets ON customer_id = "
                      "customers.id; SELECT upper(body) FROM tickets; "
                      "SELECT id FROM customers WHERE ssn LIKE '4%'; SELECT reverse(body) FROM tickets")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "  column id: detectors card_number, email\n" in result.stdout
    assert "  column email: email (from public.customers.email)\n" in result.stdout
    assert "  column lower: null (from public.customers.email)\n" in result.stdout
    assert "  column body: detectors card_number, email (from public.tickets.body)\n" in result.stdout
    assert "  column upper: null (from public.tickets.body)\n" in result.stdout
    # The gateway's own refusal, word for word: masking refuses inference on a hidden column, and, for strict
    # roles, computing on one with what may fail.
    assert ("REFUSED: pgguard: statement refused: the statement filters, groups, joins or sorts on "
            "public.customers.ssn, which reveals its values (rule masking)") in result.stdout
    assert ("REFUSED: pgguard: statement refused: the statement computes with public.tickets.body (reverse()), "
            "which reveals its values") in result.stdout


def test_explain_json_masking_for_a_role_cleared_for_everything(gateway):
    result = _pgguard("explain", "-c", str(gateway.config_path), "--group", "dba", "--json",
                      "SELECT email FROM customers")
    assert result.returncode == 0, result.stdout + result.stderr
    (item,) = json.loads(result.stdout)
    assert item["columns"] is None and item["masking"] == "none: these roles see every column raw"
    result = _pgguard("explain", "-c", str(gateway.config_path), "--group", "support", "--json",
                      "SELECT email, ssn FROM customers")
    (item,) = json.loads(result.stdout)
    assert item["columns"] == [{"column": "email", "shown": "detectors card_number", "from": []},
                               {"column": "ssn", "shown": "redact", "from": ["public.customers.ssn"]}]


def test_check_and_serve_name_a_tls_key_that_is_no_key(tmp_path, gateway):
    """Fixed: check said ok, and serve stopped with OpenSSL's `[SSL] PEM lib (_ssl.c:…)`, naming no file."""
    junk = tmp_path / "gateway.key"
    junk.write_text("not a key\n")
    text = gateway.config_path.read_text()
    key = next(line for line in text.splitlines() if line.startswith("tls_key = "))
    config = tmp_path / "pgguard.toml"
    config.write_text(text.replace(key, f'tls_key = "{junk}"'))
    for command in ("check", "serve"):
        result = _pgguard(command, "-c", str(config))
        assert result.returncode == 2 and "ok" not in result.stdout, (command, result.stdout)
        assert f"tls_key {junk}: not a certificate and its private key" in result.stderr, (command, result.stderr)
