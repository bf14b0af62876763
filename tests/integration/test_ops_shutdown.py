"""SIGTERM: no new connections, running statements finish within [gateway] shutdown_grace,
every session ends with FATAL 57P01 and a session log that is closed and verifies."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from helpers import unique_name
from opsclient import find_log
from rawclient import LogCursor, config_edit

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

SHUTDOWN = "pgguard: the gateway is shutting down"


def wait_running(postgres: PostgresServer, application: str, present: bool = True, timeout: float = 10) -> None:
    """Until the session's pg_sleep is (or is no longer) running upstream."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        while True:
            running = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                     "AND state = 'active' AND query LIKE '%%pg_sleep%%'", [application]).fetchone()
            if bool(running[0]) == present:
                return
            assert time.monotonic() < deadline, f"pg_sleep of {application} {'never ran' if present else 'still runs'}"
            time.sleep(0.05)


def in_thread(conn: psycopg.Connection, sql: str) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["row"] = conn.execute(sql).fetchone()
        except psycopg.Error as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_sigterm_lets_a_running_statement_finish_then_ends_the_session(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"shutdown_grace": 30}}))
    application = unique_name("drain")
    with psycopg.connect(gateway.dsn("dba", application_name=application), autocommit=True) as conn:
        # The FATAL comes right after the statement's answer, while the client is idle:
        # libpq reports such a message to the notice handler, as it does PostgreSQL's own.
        told: list[tuple[str | None, str | None, str | None]] = []
        conn.add_notice_handler(lambda diag: told.append((diag.severity, diag.sqlstate, diag.message_primary)))
        with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as idle:
            thread, outcome = in_thread(conn, "SELECT pg_sleep(2), 'finished'")
            wait_running(postgres, application)
            log = LogCursor(gateway)
            gateway.process.send_signal(signal.SIGTERM)
            log.wait_for(r"shutting down: 2 session\(s\) open")
            # The idle session is ended at once; the busy one only after its statement.
            with pytest.raises(psycopg.OperationalError, match=SHUTDOWN):
                idle.execute("SELECT 1")
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gateway.dsn("analyst"), connect_timeout=5)
            thread.join(30)
            assert outcome == {"row": ("", "finished")}
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            assert told == [("FATAL", "57P01", SHUTDOWN)]
    assert gateway.process.wait(30) == 0
    records = find_log(gateway, application)
    close = next(record for record in records if record["type"] == "close")
    assert close["reason"] == "the gateway is shutting down"
    statements = [record["sql"] for record in records if record["type"] == "statement"]
    assert statements == ["SELECT pg_sleep(2), 'finished'"]


def test_a_statement_still_running_after_the_grace_is_cancelled(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"shutdown_grace": 1}}))
    application = unique_name("grace")
    with psycopg.connect(gateway.dsn("dba", application_name=application), autocommit=True) as conn:
        thread, outcome = in_thread(conn, "SELECT pg_sleep(60)")
        wait_running(postgres, application)
        gateway.process.send_signal(signal.SIGTERM)
        thread.join(30)
        assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
        assert outcome["error"].sqlstate == "57P01" and SHUTDOWN in str(outcome["error"])
    assert gateway.process.wait(30) == 0
    wait_running(postgres, application, present=False)  # cancelled upstream, not left to run
    close = next(record for record in find_log(gateway, application) if record["type"] == "close")
    assert close["reason"] == "the gateway is shutting down"
    assert "ended with a statement still running" in gateway.log_text()
