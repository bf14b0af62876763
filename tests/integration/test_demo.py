"""`pgguard demo --json`: the one command a new user runs first."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg


@contextlib.contextmanager
def running_demo(stop_signal: int) -> Iterator[dict[str, Any]]:
    """The demo's JSON summary while it runs; on exit, stop it with `stop_signal` and expect a clean exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pgguard.cli", "demo", "--json", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert process.stdout is not None
        yield json.loads(process.stdout.readline())
    finally:
        process.send_signal(stop_signal)
        assert process.wait(30) == 0


def test_demo_prints_its_summary_serves_every_identity_and_cleans_up():
    with running_demo(signal.SIGTERM) as summary:
        assert set(summary) >= {"gateway", "admin_url", "database", "upstream_dsn", "config",
                                "session_dir", "identities"}
        assert set(summary["identities"]) == {"analyst", "support", "engineer", "dba", "agent"}
        expected_logins = {"analyst": "pgguard_reader", "agent": "pgguard_reader",
                           "support": "pgguard_support", "engineer": "pgguard_engineer",
                           "dba": "pgguard_admin"}
        for name, identity in summary["identities"].items():
            with psycopg.connect(identity["dsn"]) as conn:
                user, customers = conn.execute("SELECT current_user, count(*) FROM customers").fetchone()
            assert (user, customers >= 1000) == (expected_logins[name], True)
        with psycopg.connect(summary["upstream_dsn"]) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] >= 5000
        base = Path(summary["config"]).parents[1]
        assert base.is_dir()
    assert not base.exists(), "the demo left its directory behind"


def test_demo_over_tls_with_its_own_ca():
    with running_demo(signal.SIGINT) as summary:
        gateway = summary["gateway"]
        analyst = summary["identities"]["analyst"]
        with psycopg.connect(host=gateway["host"], port=gateway["port"], dbname=summary["database"],
                             user=analyst["user"], password=analyst["token"], sslmode="verify-full",
                             sslrootcert=summary["ca_cert"]) as conn:
            assert conn.pgconn.ssl_in_use
