"""Limits that keep one client, or many, from taking the gateway from others:
idle sessions and slow logins do not hold slots, idle sessions end, and a busy one is not idle."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg

from helpers import unique_name
from opsclient import deltas, find_log, metrics
from pgguard.demo.data import SUPPORT
from pgguard.wire import backend
from rawclient import RawConnection, config_edit, login_as

if TYPE_CHECKING:
    from conftest import RunningGateway

IDLE_CLIENTS = 300


def test_300_idle_sessions_and_a_slow_loris_do_not_keep_a_newcomer_out(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"max_connections": IDLE_CLIENTS + 10, "login_timeout": 2}}))
    before = metrics(gateway)
    idle: list[RawConnection] = []
    try:
        for _ in range(IDLE_CLIENTS):
            idle.append(login_as(gateway, "analyst"))
        # Half a startup packet's length word, and then silence.
        with RawConnection.to(gateway) as loris:
            loris.send(b"\x00\x00")
            with psycopg.connect(gateway.dsn("support"), autocommit=True) as newcomer:
                assert newcomer.execute("SELECT current_user").fetchone() == (SUPPORT,)
            said = loris.wait_closed(timeout=10)
        assert [(m.severity, m.code, m.message) for m in said if isinstance(m, backend.ErrorResponse)] == \
            [("FATAL", "08P01", "pgguard: login timed out")]
        for conn in idle[::30]:
            _, ready = conn.query("SELECT 1")
            assert ready.status == "I"
        changed = deltas(before, metrics(gateway))
        assert changed["pgguard_sessions"] == IDLE_CLIENTS
        assert changed['pgguard_logins_total{outcome="ok"}'] == IDLE_CLIENTS + 1
        assert changed['pgguard_logins_total{outcome="timeout"}'] == 1
    finally:
        for conn in idle:
            conn.close()


def test_an_idle_session_is_ended_and_its_log_closed(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"idle_timeout": 1}}))
    application = unique_name("idle")
    with login_as(gateway, "analyst", application_name=application) as conn:
        _, ready = conn.query("SELECT 1")
        said = conn.wait_closed(timeout=10)
    errors = [(m.severity, m.code, m.message) for m in said if isinstance(m, backend.ErrorResponse)]
    assert errors == [("FATAL", "57P05", "pgguard: session ended: idle for 1 s ([gateway] idle_timeout)")]
    records = find_log(gateway, application)
    close = next(record for record in records if record["type"] == "close")
    assert close["reason"] == "idle timeout"


def test_a_long_statement_is_not_idle(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"idle_timeout": 1}}))
    with psycopg.connect(gateway.dsn("dba"), autocommit=True) as conn:
        assert conn.execute("SELECT pg_sleep(2.5), 'done'").fetchone() == ("", "done")
