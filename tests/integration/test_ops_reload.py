"""Reloading pgguard.toml in a running gateway: SIGHUP and POST /reload.

Open sessions take the new policy from their next statement, on the same
connection; a file that is invalid in any way is refused whole and the
running policy stays; what only a restart can change is logged as ignored.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest

from opsclient import metrics, request_json
from pgguard.wire import backend
from rawclient import LogCursor, config_edit, login_as, login_error, set_keys

if TYPE_CHECKING:
    from conftest import RunningGateway

# Analysts start with customers only; the reload gives them every public table.
NARROW = {"roles.analysts": {"read": ["public.customers"]}}
WIDE = {"read": ["public.*"]}
ORDERS = 6000  # rows in the demo's public.orders


@pytest.fixture
def narrow(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return gateway_factory(config_edit(NARROW))


def rewrite(gateway: RunningGateway, section: str, values: dict) -> None:
    gateway.config_path.write_text(set_keys(gateway.config_path.read_text(), section, values))


def sighup(gateway: RunningGateway, expect: str) -> LogCursor:
    """Signal a reload and wait for the line that says how it went; the cursor reads on from there."""
    log = LogCursor(gateway)
    gateway.process.send_signal(signal.SIGHUP)
    log.wait_for(expect)
    return log


def orders_refused(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT count(*) FROM orders").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def test_sighup_gives_an_open_session_the_new_policy_at_its_next_statement(narrow: RunningGateway) -> None:
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as conn:
        backend_pid = conn.info.backend_pid
        assert orders_refused(conn)
        rewrite(narrow, "roles.analysts", WIDE)
        sighup(narrow, r"configuration reloaded from .*1 open session\(s\) updated, 0 ended")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (ORDERS,)
        assert conn.info.backend_pid == backend_pid  # the same session, never reconnected
        # And back: tightening applies as well.
        rewrite(narrow, "roles.analysts", {"read": ["public.customers"]})
        sighup(narrow, r"configuration reloaded")
        assert orders_refused(conn)
    assert metrics(narrow)['pgguard_config_reloads_total{result="ok"}'] == 2


def test_an_invalid_config_is_refused_whole_and_the_old_policy_stays(narrow: RunningGateway) -> None:
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as conn:
        good = narrow.config_path.read_text()
        # Valid keys first, then one bad one: nothing of it may apply.
        text = set_keys(good, "roles.analysts", {"read": ["public.*"], "statements": ["read", "no-such-class"]})
        narrow.config_path.write_text(text)
        sighup(narrow, r"configuration reload refused, keeping the running configuration: "
                            r".*roles\.analysts.*statements.*no-such-class")
        assert orders_refused(conn)
        narrow.config_path.write_text("[gateway\nthis is not toml")
        sighup(narrow, r"configuration reload refused, keeping the running configuration: .*pgguard\.toml")
        assert orders_refused(conn)
        assert conn.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
    # The gateway goes on serving new logins under the old policy.
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as newcomer:
        assert orders_refused(newcomer)
    assert narrow.process.poll() is None
    narrow.config_path.write_text(good)  # the test reads the admin address from it
    assert metrics(narrow)['pgguard_config_reloads_total{result="rejected"}'] == 2


def test_what_needs_a_restart_is_logged_and_left_alone(narrow: RunningGateway) -> None:
    rewrite(narrow, "gateway", {"listen": ["127.0.0.1:1"], "idle_timeout": 300})
    text = narrow.config_path.read_text().replace('issuer = "pgguard-demo"', 'issuer = "someone-else"')
    narrow.config_path.write_text(text)
    rewrite(narrow, "roles.analysts", WIDE)
    log = sighup(narrow, r"configuration reload: \[gateway\] listen changed; ignored until restart")
    log.wait_for(r"configuration reload: \[identity\] changed; ignored until restart")
    # Still on its port, still trusting its own tokens; the roles did change.
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (ORDERS,)


def test_a_session_whose_login_would_change_is_ended_with_the_reason(narrow: RunningGateway) -> None:
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as conn:
        rewrite(narrow, "roles.analysts", {"login": "support"})
        sighup(narrow, r"configuration reloaded .* 0 open session\(s\) updated, 1 ended")
        with pytest.raises(psycopg.OperationalError, match="needs another database login"):
            conn.execute("SELECT 1")
    with psycopg.connect(narrow.dsn("analyst"), autocommit=True) as newcomer:
        assert newcomer.execute("SELECT current_user").fetchone() == ("pgguard_support",)


def test_post_reload_needs_a_token_of_an_admin_group(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({**NARROW, "gateway": {"admin_groups": ["dba"]}}))
    assert request_json(gateway, "/reload", method="POST")[0] == 401
    assert request_json(gateway, "/reload", method="POST", token="not-a-jwt")[0] == 401
    status, body = request_json(gateway, "/reload", method="POST", token=gateway.identities["analyst"].token)
    assert status == 403, body
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        assert orders_refused(conn)
        rewrite(gateway, "roles.analysts", WIDE)
        status, body = request_json(gateway, "/reload", method="POST", token=gateway.identities["dba"].token)
        assert (status, body["status"], body["by"]) == (200, "reloaded", "dana"), body
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (ORDERS,)
        rewrite(gateway, "roles.analysts", {"read": "everything"})
        status, body = request_json(gateway, "/reload", method="POST", token=gateway.identities["dba"].token)
        assert status == 422 and "roles.analysts" in body["error"], body
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (ORDERS,)


def test_without_admin_groups_post_reload_refuses_everyone(narrow: RunningGateway) -> None:
    status, body = request_json(narrow, "/reload", method="POST", token=narrow.identities["dba"].token)
    assert status == 403, body


def test_a_reload_changes_the_limits_for_new_and_open_sessions(narrow: RunningGateway) -> None:
    with login_as(narrow, "analyst") as open_session:
        rewrite(narrow, "gateway", {"max_connections": 1, "idle_timeout": 1})
        sighup(narrow, r"configuration reloaded")
        assert login_error(narrow, "support").code == "53300"  # the open session holds the one slot
        # The open session took the idle timeout too.
        said = open_session.wait_closed(timeout=10)
    assert [(m.code, m.message) for m in said if isinstance(m, backend.ErrorResponse)] == \
        [("57P05", "pgguard: session ended: idle for 1 s ([gateway] idle_timeout)")]
