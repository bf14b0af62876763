"""The gateway's ways in: TCP with TLS, the Unix socket, raw protocol corners, the token CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
from rawclient import login_as

from pgguard.wire import backend, frontend


def test_psycopg_over_tls_reaches_the_target_as_the_roles_login(gateway):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        row = conn.execute("SELECT current_user, count(*) FROM customers GROUP BY 1").fetchone()
    assert row == ("pgguard_reader", 1200)


def test_psql_over_the_unix_socket_without_tls(gateway):
    """Like PostgreSQL: `psql -h DIR -p PORT` finds DIR/.s.PGSQL.PORT."""
    ident = gateway.identities["analyst"]
    result = subprocess.run(
        ["psql", "-X", "-At", "-h", str(gateway.config_path.parent), "-p", str(gateway.port),
         "-U", ident.user, "-d", "demo", "-c", "SELECT current_user, inet_client_addr() IS NOT NULL"],
        capture_output=True, text=True, env={**os.environ, "PGPASSWORD": ident.token}, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pgguard_reader|t"


def test_function_call_message_is_relayed(gateway):
    """The FunctionCall message (no client library sends it any more, but it is protocol 3.0)."""
    with login_as(gateway, "dba") as conn:
        _, _ = conn.query("SELECT 1")
        int4abs = 1397  # pg_proc oid of abs(integer)
        conn.send(frontend.FunctionCall(int4abs, [1], [(-42).to_bytes(4, "big", signed=True)], 1))
        answer = conn.expect(backend.FunctionCallResponse)
        assert int.from_bytes(answer.value, "big", signed=True) == 42
        conn.expect(backend.ReadyForQuery)


def test_token_issue_cli_makes_a_token_that_logs_in(gateway):
    result = subprocess.run(
        [sys.executable, "-m", "pgguard.cli", "token", "issue", "-c", str(gateway.config_path),
         "--sub", "report-bot", "--group", "analysts", "--ttl", "10m", "--target", "demo"],
        capture_output=True, text=True, check=True,
    )
    token = result.stdout.strip()
    with psycopg.connect(gateway.dsn("analyst", user="report-bot", token=token)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("pgguard_reader",)
