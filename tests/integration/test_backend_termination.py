"""Upstream backends ended under the gateway: by an administrator, by a timeout, by a restart or a crash.

The affected client gets PostgreSQL's own FATAL (or a clear pgguard error) and a clean close,
never a hang; its session log closes with the reason and verifies; every other session goes on.
The gateway's own connections to the target (the catalog reader, policy/catalog.py) may be ended
too: logins never wait on them for ever, a session is never guarded without a snapshot, and the
gateway process never dies of it.

No assertion is timed: every wait that could hang is bounded, and fails the test when it runs out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import pytest

from conftest import demo_server, start_gateway, stop_gateway
from helpers import scratch_table, unique_name
from opsclient import find_log, request
from pgguard.wire import backend, frontend
from rawclient import config_edit, login_as, login_error
from test_approvals import api, pending
from test_replay_cli import replay

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

# A bound on every wait that could hang: reached only when something does.
HANG = 30.0
CATALOG_APP = "pgguard catalog"
STALL_APP = "catalog_stall"


def bounded(work: Callable[[], Any], timeout: float = HANG) -> Any:
    """`work()`'s result, or the exception it raised; fails the test if it has not returned in `timeout`."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s: the client hangs"
    return outcome["value"]


def wait_for_backend(postgres: PostgresServer, application: str, condition: str = "true") -> int:
    """The pid of the backend whose application_name is `application`, once `condition` holds for it."""
    deadline = time.monotonic() + HANG
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        while True:
            row = direct.execute(f"SELECT pid FROM pg_stat_activity WHERE application_name = %s AND "
                                 f"{condition.replace('%', '%%')}", [application]).fetchone()
            if row is not None:
                return int(row[0])
            assert time.monotonic() < deadline, f"no backend for {application} where {condition}"
            time.sleep(0.05)


def wait_gone(postgres: PostgresServer, pid: int) -> None:
    """Until the backend `pid` has exited."""
    deadline = time.monotonic() + HANG
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        while direct.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.05)


def terminate(killer: str, gateway: RunningGateway, postgres: PostgresServer, pid: int) -> None:
    """pg_terminate_backend(pid), by the dba through the gateway or by a superuser connected directly."""
    dsn = gateway.dsn("dba") if killer == "dba" else postgres.dsn()
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


def close_reason(gateway: RunningGateway, application: str) -> str:
    """The reason in the close record of the session that set `application_name`, whose log
    `pgguard-replay verify` finds intact."""
    records = find_log(gateway, application)
    verified = replay(gateway, "verify", records[0]["session_id"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return str(next(r for r in records if r["type"] == "close")["reason"])


def masked_email(gateway: RunningGateway) -> str:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as newcomer:
        return str(newcomer.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0])


def assert_gateway_healthy(gateway: RunningGateway) -> None:
    """The process runs, logged no traceback, and a new guarded session reads masked rows."""
    assert gateway.process.poll() is None, "the gateway process exited"
    email = bounded(lambda: masked_email(gateway))
    assert isinstance(email, str) and email.startswith("***@"), email
    assert "Traceback" not in gateway.log_text()


# -- 1. a session's own backend ---------------------------------------------------------------------------


@pytest.mark.parametrize("killer", ["dba", "superuser"])
@pytest.mark.parametrize("when", ["idle", "in transaction", "mid-statement"])
def test_a_sessions_own_backend_terminated_ends_that_session_alone(
        gateway: RunningGateway, postgres: PostgresServer, killer: str, when: str) -> None:
    victim_app, bystander_app = unique_name("victim"), unique_name("bystander")
    with psycopg.connect(gateway.dsn("analyst", application_name=bystander_app)) as bystander, \
            psycopg.connect(gateway.dsn("analyst", application_name=victim_app), autocommit=True) as victim:
        bystander.execute("SELECT id FROM orders LIMIT 1")  # a transaction left open
        running: threading.Thread | None = None
        outcome: dict[str, Any] = {}
        if when == "in transaction":
            victim.execute("BEGIN")
            victim.execute("SELECT email FROM customers WHERE id = 1")
        elif when == "mid-statement":
            def sleep() -> None:
                try:
                    victim.execute("SELECT pg_sleep(60)")
                except psycopg.Error as exc:
                    outcome["error"] = exc
            running = threading.Thread(target=sleep, daemon=True)
            running.start()
        condition = "state = 'active' AND query LIKE '%pg_sleep%'" if running else "true"
        pid = wait_for_backend(postgres, victim_app, condition)
        terminate(killer, gateway, postgres, pid)
        if running is not None:
            running.join(HANG)
            assert not running.is_alive(), "the client hangs"
            error = outcome.get("error")
        else:
            wait_gone(postgres, pid)
            error = bounded(lambda: victim.execute("SELECT 1"))
        assert isinstance(error, psycopg.OperationalError), error
        assert error.sqlstate == "57P01", error
        assert victim.closed
        assert bystander.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
        bystander.commit()
    reason = close_reason(gateway, victim_app)
    assert reason == "target ended the session: FATAL 57P01 terminating connection due to administrator command"
    assert close_reason(gateway, bystander_app) == "client terminated"
    assert_gateway_healthy(gateway)


@pytest.mark.parametrize("killer", ["dba", "superuser"])
def test_a_statement_cancelled_mid_result_leaves_its_session_masked(
        gateway: RunningGateway, postgres: PostgresServer, killer: str) -> None:
    """pg_cancel_backend ends the statement, not the session: the rows it had sent and the ones after are masked."""
    application = unique_name("cancelled")
    with login_as(gateway, "analyst", application_name=application) as conn:
        conn.send(frontend.Query("SELECT email, pg_sleep(CASE WHEN id > 3 THEN 60 ELSE 0 END) FROM customers"))
        pid = wait_for_backend(postgres, application, "state = 'active' AND query LIKE '%pg_sleep%'")
        with connect(gateway.dsn("dba") if killer == "dba" else postgres.dsn()) as other:
            assert other.execute("SELECT pg_cancel_backend(%s)", [pid]).fetchone() == (True,)
        said, ready = conn.receive_until(backend.ErrorResponse, HANG)
        assert (ready.code, ready.severity) == ("57014", "ERROR"), ready
        rows = [m.values[0] for m in said if isinstance(m, backend.DataRow)]
        assert len(rows) == 3 and all(value.startswith(b"***@") for value in rows), rows
        conn.expect(backend.ReadyForQuery, HANG)
        said, _ = conn.query("SELECT email FROM customers WHERE id <= 5", HANG)
        rows = [m.values[0] for m in said if isinstance(m, backend.DataRow)]
        assert len(rows) == 5 and all(value.startswith(b"***@") for value in rows), rows
        conn.send(frontend.Terminate())
    assert close_reason(gateway, application) == "client terminated"


def test_psql_gets_the_fatal_of_its_terminated_statement(gateway: RunningGateway, postgres: PostgresServer) -> None:
    application = unique_name("psql")
    psql = subprocess.Popen(["psql", gateway.dsn("engineer", application_name=application), "-X",
                             "-c", "SELECT pg_sleep(60)"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_for_backend(postgres, application, "state = 'active' AND query LIKE '%pg_sleep%'")
        terminate("superuser", gateway, postgres, pid)
        _, stderr = psql.communicate(timeout=HANG)
    finally:
        psql.kill()
    assert psql.returncode == 2, stderr
    assert "FATAL:  terminating connection due to administrator command" in stderr
    assert close_reason(gateway, application).startswith("target ended the session: FATAL 57P01")


def test_asyncpg_mid_statement_in_a_transaction_gets_the_fatal(
        gateway: RunningGateway, postgres: PostgresServer) -> None:
    application = unique_name("asyncpg")

    def terminate_the_sleep() -> None:
        pid = wait_for_backend(postgres, application, "state = 'active' AND query LIKE '%pg_sleep%'")
        terminate("dba", gateway, postgres, pid)

    async def main() -> BaseException | None:
        conn = await asyncpg.connect(gateway.dsn("analyst", application_name=application, sslmode="disable"))
        try:
            await conn.execute("BEGIN")
            await conn.fetchval("SELECT count(*) FROM orders")
            killer = asyncio.create_task(asyncio.to_thread(terminate_the_sleep))
            await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(60)"), HANG)
        except asyncpg.PostgresError as exc:
            return exc
        finally:
            await killer
            await conn.close(timeout=HANG)
        return None

    error = asyncio.run(main())
    # asyncpg reports the FATAL that closed the connection as the reason it no longer exists.
    assert isinstance(error, asyncpg.ConnectionDoesNotExistError), repr(error)
    assert "terminating connection due to administrator command" in str(error)
    assert close_reason(gateway, application).startswith("target ended the session: FATAL 57P01")


def test_terminated_while_the_client_reads_a_large_result_slowly(
        gateway: RunningGateway, postgres: PostgresServer) -> None:
    """The client gets every message the gateway had for it, then an end it can tell, then EOF."""
    application = unique_name("slow")
    with login_as(gateway, "analyst", application_name=application) as conn:
        conn.send(frontend.Query("SELECT o.*, g FROM orders o CROSS JOIN generate_series(1, 60) g"))
        assert isinstance(conn.receive(), backend.RowDescription)
        pid = wait_for_backend(postgres, application)
        terminate("superuser", gateway, postgres, pid)
        wait_gone(postgres, pid)
        said = conn.wait_closed(HANG)
    rows = [m for m in said if isinstance(m, backend.DataRow)]
    assert rows and len(rows) < 5000 * 60, "the statement ran to its end"
    last = said[-1]
    assert isinstance(last, backend.ErrorResponse) and last.severity == "FATAL", last
    assert last.code in ("57P01", "08006"), last
    assert not any(isinstance(m, backend.ReadyForQuery) for m in said)
    reason = close_reason(gateway, application)
    assert reason.startswith("target ended the session: FATAL 57P01") or \
        reason == "target closed the connection unexpectedly", reason
    assert_gateway_healthy(gateway)


def test_terminated_while_a_statement_waits_for_approval(gateway: RunningGateway, postgres: PostgresServer) -> None:
    """The held statement's client hears the FATAL, and its request is withdrawn: no one can approve it now."""
    application = unique_name("held")
    sql = "DELETE FROM orders WHERE id = -1"
    with connect(gateway.dsn("engineer", application_name=application)) as engineer:
        holding = threading.Thread(target=lambda: outcome.append(bounded(lambda: engineer.execute(sql))))
        outcome: list[Any] = []
        holding.start()
        request_id = pending(gateway, sql)["id"]
        terminate("superuser", gateway, postgres, wait_for_backend(postgres, application))
        holding.join(HANG)
        error = outcome[0]
        assert isinstance(error, psycopg.OperationalError) and error.sqlstate == "57P01", error
    status, answer = api(gateway, f"/api/approvals/{request_id}", gateway.identities["dba"].token)
    assert status == 200 and answer["status"] == "cancelled", answer
    assert close_reason(gateway, application).startswith("target ended the session: FATAL 57P01")


def test_terminated_during_copy_from_stdin(gateway: RunningGateway, postgres: PostgresServer) -> None:
    """The client, busy sending, may fail on its send before it reads the FATAL, exactly as it does
    connected to PostgreSQL directly; the log has the FATAL, and nothing of the COPY is kept."""
    application = unique_name("copy")
    started = threading.Event()
    with scratch_table(postgres.dsn(), "id int, note text", "copy") as table, \
            connect(gateway.dsn("engineer", application_name=application)) as engineer:
        def copy() -> None:
            with engineer.cursor().copy(f"COPY {table} (id, note) FROM STDIN") as feed:
                for number in range(10_000_000):
                    feed.write_row((number, "x" * 100))
                    if number == 1000:
                        started.set()

        thread = threading.Thread(target=lambda: outcome.append(bounded(copy)))
        outcome: list[Any] = []
        thread.start()
        assert started.wait(HANG)
        terminate("superuser", gateway, postgres, wait_for_backend(postgres, application))
        thread.join(HANG)
        error = outcome[0]
        assert isinstance(error, psycopg.OperationalError), error
        with psycopg.connect(postgres.dsn()) as direct:
            assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert close_reason(gateway, application).startswith("target ended the session: FATAL 57P01")


def test_terminated_during_copy_to_stdout(gateway: RunningGateway, postgres: PostgresServer) -> None:
    application = unique_name("copyout")
    with connect(gateway.dsn("analyst", application_name=application)) as analyst:
        def copy() -> int:
            got = 0
            with analyst.cursor().copy("COPY (SELECT o.id, o.total FROM orders o, generate_series(1, 500)) "
                                       "TO STDOUT") as out:
                for block in out:
                    got += 1
                    if got == 10:
                        pid = wait_for_backend(postgres, application)
                        terminate("superuser", gateway, postgres, pid)
                        wait_gone(postgres, pid)
            return got
        error = bounded(copy)
    # A backend terminated while it waits to send ends without its FATAL: the gateway then says 08006.
    assert isinstance(error, psycopg.OperationalError) and error.sqlstate in ("57P01", "08006"), error
    assert close_reason(gateway, application) in (
        "target ended the session: FATAL 57P01 terminating connection due to administrator command",
        "target closed the connection unexpectedly")


# -- 4. PostgreSQL's idle timeouts -----------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "sqlstate", "message"), [
    ("idle_session_timeout", "57P05", "terminating connection due to idle-session timeout"),
    ("idle_in_transaction_session_timeout", "25P03", "terminating connection due to idle-in-transaction timeout"),
])
def test_postgresqls_idle_timeouts_end_the_session_with_their_fatal(
        gateway: RunningGateway, postgres: PostgresServer, setting: str, sqlstate: str, message: str) -> None:
    application = unique_name("idle")
    with psycopg.connect(gateway.dsn("analyst", application_name=application)) as conn:
        conn.execute(f"SET {setting} = '200ms'")
        conn.execute("SELECT email FROM customers WHERE id = 1")  # in a transaction (psycopg's default)
        if setting == "idle_session_timeout":
            conn.commit()
        pid = wait_for_backend(postgres, application)
        wait_gone(postgres, pid)
        error = bounded(lambda: conn.execute("SELECT 1"))
        assert isinstance(error, psycopg.Error) and error.sqlstate == sqlstate, error
        assert message in str(error)
        assert conn.closed
    assert close_reason(gateway, application) == f"target ended the session: FATAL {sqlstate} {message}"


# -- 2. the gateway's own connections: the catalog reader -----------------------------------------------


class CatalogStall:
    """A superuser transaction holding pg_depend: the gateway's catalog read waits on it (as on any lock,
    or a network that stopped answering), while logins and queries of other backends go on (only DDL
    reads pg_depend)."""

    def __init__(self, postgres: PostgresServer) -> None:
        self.conn = psycopg.connect(postgres.dsn(application_name=STALL_APP))
        self.conn.execute("LOCK TABLE pg_catalog.pg_depend IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        try:
            self.conn.rollback()
        except psycopg.OperationalError:
            pass  # its backend is gone already
        self.conn.close()


@pytest.fixture
def stall(postgres: PostgresServer) -> Iterator[Callable[[], CatalogStall]]:
    held: list[CatalogStall] = []

    def hold() -> CatalogStall:
        held.append(CatalogStall(postgres))
        return held[-1]

    yield hold
    for each in held:
        each.release()


def stalled_reader(postgres: PostgresServer) -> int:
    return wait_for_backend(postgres, CATALOG_APP, "wait_event_type = 'Lock'")


def ask_for_a_new_snapshot(conn: psycopg.Connection[Any]) -> None:
    """A name the snapshot does not know has the gateway read the catalog again (policy/guard.py); a role that
    may not run DDL is refused it before it reaches the server (docs/masking.md, Unknown relations)."""
    with pytest.raises((psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege)) as caught:
        conn.execute(f"SELECT * FROM {unique_name('nowhere')}")
    if isinstance(caught.value, psycopg.errors.InsufficientPrivilege):
        assert "pgguard is reading the catalog again" in (caught.value.diag.message_hint or "")


@pytest.mark.parametrize("killer", ["dba", "superuser"])
def test_the_catalog_reader_terminated_at_the_first_login_refuses_it_clearly(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer,
        stall: Callable[[], CatalogStall], killer: str) -> None:
    """With no snapshot, the login is refused, saying why: never a session guarded without one."""
    gateway = gateway_factory()
    with connect(gateway.dsn("dba")) as bystander:  # unrestricted: it needs no snapshot
        held = stall()
        login = threading.Thread(target=lambda: outcome.append(bounded(lambda: connect(gateway.dsn("analyst")))))
        outcome: list[Any] = []
        login.start()
        terminate(killer, gateway, postgres, stalled_reader(postgres))
        login.join(HANG)
        error = outcome[0]
        assert isinstance(error, psycopg.OperationalError), error
        assert 'FATAL:  pgguard: cannot guard the session: the catalog of target "demo" could not be read ' \
            "(catalog query failed: terminating connection due to administrator command)" in str(error)
        assert bounded(lambda: bystander.execute("SELECT count(*) FROM customers").fetchone()) == (1200,)
        held.release()
    assert_gateway_healthy(gateway)


def test_a_catalog_read_that_never_answers_does_not_hold_logins_for_ever(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer,
        stall: Callable[[], CatalogStall]) -> None:
    gateway = gateway_factory(config_edit({"targets.demo": {"catalog_timeout": 1}}))
    held = stall()
    error = bounded(lambda: connect(gateway.dsn("analyst")))
    assert isinstance(error, psycopg.OperationalError), error
    assert "could not be read (no answer within 1 s)" in str(error)
    refused = bounded(lambda: login_error(gateway, "agent"))
    assert (refused.severity, refused.code) == ("FATAL", "57P03"), refused
    held.release()
    assert_gateway_healthy(gateway)


@pytest.mark.parametrize("killer", ["dba", "superuser"])
def test_the_catalog_reader_terminated_mid_refresh_leaves_sessions_and_logins_working(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer,
        stall: Callable[[], CatalogStall], killer: str) -> None:
    gateway = gateway_factory(config_edit({"targets.demo": {"catalog_timeout": 5}}))
    with connect(gateway.dsn("analyst")) as analyst, connect(gateway.dsn("agent")) as agent, \
            connect(gateway.dsn("engineer")) as engineer:
        held = stall()
        ask_for_a_new_snapshot(analyst)
        reader = stalled_reader(postgres)
        terminate(killer, gateway, postgres, reader)
        wait_gone(postgres, reader)
        # The sessions keep the snapshot they had: masking and the write check still hold.
        assert bounded(lambda: analyst.execute("SELECT email FROM customers WHERE id = 2").fetchone())[0] \
            .startswith("***@")
        assert bounded(lambda: agent.execute("SELECT count(*) FROM orders").fetchone()) == (6000,)
        assert bounded(lambda: engineer.execute("UPDATE tickets SET status = status WHERE id = -1").rowcount) == 0
        refused = bounded(lambda: agent.execute("DELETE FROM tickets WHERE id = -1"))
        assert isinstance(refused, psycopg.errors.InsufficientPrivilege), refused
        newcomer = bounded(lambda: connect(gateway.dsn("analyst")))
        assert isinstance(newcomer, psycopg.Connection), newcomer
        with newcomer:
            assert newcomer.execute("SELECT card_number FROM customers WHERE id = 3").fetchone()[0].startswith("*")
        held.release()
    assert_gateway_healthy(gateway)
    assert "catalog of demo not refreshed: catalog query failed: terminating connection" in gateway.log_text()


# -- 3. PostgreSQL restarts and crashes (a server of this module's own) ----------------------------------


@pytest.fixture(scope="module")
def own_postgres(test_ca: TLSFiles) -> Iterator[PostgresServer]:
    with demo_server(test_ca) as server:
        yield server


@pytest.fixture
def own_gateway(tmp_path: Any, own_postgres: PostgresServer, test_ca: TLSFiles) -> Iterator[RunningGateway]:
    running = start_gateway(tmp_path, own_postgres, test_ca)
    yield running
    stop_gateway(running)


def test_a_fast_restart_ends_every_session_clearly_and_the_gateway_serves_again(
        own_gateway: RunningGateway, own_postgres: PostgresServer) -> None:
    gateway, server = own_gateway, own_postgres
    idle_app, busy_app = unique_name("idle"), unique_name("busy")
    idle = connect(gateway.dsn("analyst", application_name=idle_app))
    busy = connect(gateway.dsn("engineer", application_name=busy_app))
    in_transaction = psycopg.connect(gateway.dsn("agent"))
    outcome: list[Any] = []
    try:
        in_transaction.execute("SELECT count(*) FROM tickets")
        sleeper = threading.Thread(target=lambda: outcome.append(bounded(lambda: busy.execute("SELECT pg_sleep(60)"))))
        sleeper.start()
        wait_for_backend(server, busy_app, "query LIKE '%pg_sleep%'")
        server.cluster.stop()
        try:
            sleeper.join(HANG)
            assert isinstance(outcome[0], psycopg.OperationalError) and outcome[0].sqlstate == "57P01", outcome
            for conn in (idle, in_transaction):
                error = bounded(lambda conn=conn: conn.execute("SELECT 1"))
                assert isinstance(error, psycopg.OperationalError), error
            # While the server is down: a clear refusal at login, and /readyz says why.
            error = bounded(lambda: connect(gateway.dsn("analyst")))
            assert isinstance(error, psycopg.OperationalError), error
            assert "FATAL:  pgguard: cannot reach target 'demo'" in str(error)
            refused = bounded(lambda: login_error(gateway, "dba"))
            assert (refused.severity, refused.code) == ("FATAL", "08001"), refused
            assert request(gateway, "/readyz")[0] == 503
        finally:
            server.cluster.start()
    finally:
        for conn in (idle, busy, in_transaction):
            conn.close()
    assert close_reason(gateway, idle_app) == \
        "target ended the session: FATAL 57P01 terminating connection due to administrator command"
    assert close_reason(gateway, busy_app).startswith("target ended the session: FATAL 57P01")
    assert request(gateway, "/readyz")[0] == 200
    assert_gateway_healthy(gateway)


def test_a_crash_during_a_catalog_refresh_leaves_the_gateway_running(
        own_gateway: RunningGateway, own_postgres: PostgresServer) -> None:
    """A crash ends every backend with a WARNING, not a FATAL: the catalog reader sees its connection close."""
    gateway, server = own_gateway, own_postgres
    with connect(gateway.dsn("analyst")) as analyst:
        held = CatalogStall(server)
        try:
            ask_for_a_new_snapshot(analyst)
            stalled_reader(server)
            holder = wait_for_backend(server, STALL_APP)
            os.kill(holder, signal.SIGKILL)  # the postmaster restarts every backend
        finally:
            held.release()
        error = bounded(lambda: analyst.execute("SELECT 1"))
        assert isinstance(error, psycopg.OperationalError), error
        assert "pgguard: the target database closed the connection unexpectedly" in str(error)
    deadline = time.monotonic() + HANG
    while True:
        try:
            psycopg.connect(server.dsn(), connect_timeout=5).close()
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.1)
    assert_gateway_healthy(gateway)
