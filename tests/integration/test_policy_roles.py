"""Each demo role through the real gateway: support writes tickets and nothing else, engineering
writes public.*, and dba may do anything.

Refusals are asserted to be the gateway's own (42501, message starting
`pgguard:`); where the upstream login would refuse too, the prefix is what
tells the two apart. Everything written is checked directly as superuser and
cleaned up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from helpers import fetch_all, fetch_value, scratch_table, unique_name, without_ddl_approval
from rawclient import login_as
from pgguard.config import load
from pgguard.demo import data
from pgguard.identity.tokens import TokenService
from pgguard.wire import backend, frontend

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

SECRET = "policy_roles_secret"
DOTTED_SCHEMA = "public.policy_payroll"


@pytest.fixture(scope="module")
def direct(postgres: PostgresServer) -> str:
    return postgres.dsn(sslmode="verify-full")


@pytest.fixture(scope="module")
def outside_the_scopes(direct: str) -> Iterator[None]:
    """A table of public that support may not read, and a schema whose name starts "public." that
    engineering may not touch; the upstream logins are granted both, so only pgguard refuses."""
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(f"""
            CREATE TABLE public.{SECRET} (id int PRIMARY KEY, note text);
            INSERT INTO public.{SECRET} VALUES (1, 'support may not read this');
            GRANT SELECT ON public.{SECRET} TO {data.SUPPORT};
            CREATE SCHEMA "{DOTTED_SCHEMA}";
            CREATE TABLE "{DOTTED_SCHEMA}".salaries (id int PRIMARY KEY, amount int);
            INSERT INTO "{DOTTED_SCHEMA}".salaries VALUES (1, 100);
            GRANT USAGE ON SCHEMA "{DOTTED_SCHEMA}" TO {data.ENGINEER};
            GRANT ALL ON "{DOTTED_SCHEMA}".salaries TO {data.ENGINEER};
        """)
    yield
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(f'DROP TABLE public.{SECRET}; DROP SCHEMA "{DOTTED_SCHEMA}" CASCADE')


def assert_refused(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> str:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql, params)
    error = caught.value
    assert error.sqlstate == "42501", f"{type(error).__name__} {error.sqlstate}: {error}"
    text = error.diag.message_primary or ""
    assert text.startswith("pgguard:"), f"not refused by the gateway: {text}"
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return text


def no_gateway_refusal(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]] | str:
    """Run `sql`; its rows, or PostgreSQL's own error text. A pgguard refusal fails the test."""
    try:
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        text = exc.diag.message_primary or str(exc)
        assert not text.startswith("pgguard:"), text
        return text


# --- support --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("client_side", [False, True], ids=["extended", "simple"])
def test_support_writes_a_ticket_it_created(gateway: RunningGateway, direct: str, client_side: bool) -> None:
    subject = f"policy test {uuid.uuid4().hex[:8]}"
    factory = psycopg.ClientCursor if client_side else psycopg.Cursor
    ticket = None
    try:
        with psycopg.connect(gateway.dsn("support"), autocommit=True, cursor_factory=factory) as conn:
            ticket = conn.execute(
                "INSERT INTO tickets (customer_id, subject, body, status) VALUES (%s, %s, %s, 'open') RETURNING id",
                (7, subject, "printer on fire")).fetchone()[0]
            assert fetch_all(direct, "SELECT customer_id, subject, status FROM tickets WHERE id = %s", (ticket,)) \
                == [(7, subject, "open")]
            assert conn.execute("UPDATE tickets SET status = 'closed' WHERE id = %s", (ticket,)).rowcount == 1
            assert fetch_value(direct, "SELECT status FROM tickets WHERE id = %s", (ticket,)) == "closed"
            locked = conn.execute("SELECT id FROM tickets WHERE id = %s FOR UPDATE", (ticket,)).fetchall()
            assert locked == [(ticket,)]
            assert conn.execute("DELETE FROM tickets WHERE id = %s", (ticket,)).rowcount == 1
            assert fetch_value(direct, "SELECT count(*) FROM tickets WHERE id = %s", (ticket,)) == 0
    finally:
        if ticket is not None:
            fetch_all(direct, "DELETE FROM tickets WHERE id = %s RETURNING id", (ticket,))


def test_support_reads_its_three_tables(gateway: RunningGateway, direct: str) -> None:
    query = ("SELECT (SELECT count(*) FROM customers), (SELECT count(*) FROM orders),"
             " (SELECT count(*) FROM tickets WHERE status = 'open')")
    assert fetch_all(gateway.dsn("support"), query) == fetch_all(direct, query)


SUPPORT_REFUSED = [
    "DELETE FROM customers WHERE id = 1",
    "UPDATE customers SET city = 'x' WHERE id = 1",
    "INSERT INTO customers (full_name, email, phone, card_number, ssn, city, created_at)"
    " VALUES ('x', 'x@example.com', 'x', 'x', 'x', 'x', now())",
    "DELETE FROM orders WHERE id = 1",
    "UPDATE orders SET status = 'refunded' WHERE id = 1",
    "INSERT INTO orders (customer_id, total, status, created_at) VALUES (1, 1, 'paid', now())",
    "MERGE INTO orders o USING tickets t ON o.id = t.id WHEN MATCHED THEN UPDATE SET total = 0",
    "WITH x AS (UPDATE customers SET city = 'x' WHERE id = 1 RETURNING id) SELECT * FROM x",
    "INSERT INTO tickets SELECT * FROM tickets WHERE false; DELETE FROM orders WHERE id = 1",
    "WITH t AS (INSERT INTO tickets (customer_id, subject, body, status) VALUES (1, 's', 'b', 'open') RETURNING id)"
    " DELETE FROM orders WHERE id IN (SELECT id FROM t)",
    "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
    "SELECT count(*) FROM orders o WHERE EXISTS (SELECT 1 FROM orders WHERE id = 1 FOR UPDATE)",
    "LOCK TABLE customers",
    "TRUNCATE orders",
    "COPY orders FROM STDIN",
    "SELECT nextval('orders_id_seq')",
    "SELECT setval('tickets_id_seq', 1)",
    "CREATE TABLE public.policy_support_x (a int)",
    "ALTER TABLE tickets ADD COLUMN x int",
    "DO $$ BEGIN DELETE FROM orders; END $$",
    "SET ROLE postgres",
    f"SELECT * FROM {SECRET}",
    f"WITH {SECRET} AS (SELECT * FROM {SECRET}) SELECT * FROM {SECRET}",
    f"WITH a AS (SELECT * FROM {SECRET}), {SECRET} AS (SELECT 1) SELECT * FROM a",
    f"SELECT t.id FROM tickets t WHERE EXISTS (SELECT 1 FROM public.{SECRET})",
]


@pytest.mark.parametrize("sql", SUPPORT_REFUSED)
def test_support_may_write_nothing_but_tickets(gateway: RunningGateway, outside_the_scopes: None,
                                               support: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(support, sql)


@pytest.fixture(scope="module")
def support(gateway: RunningGateway) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gateway.dsn("support"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        yield conn


def test_support_refusals_name_the_table(support: psycopg.Connection[Any]) -> None:
    assert assert_refused(support, "DELETE FROM customers WHERE id = 1") == \
        "pgguard: DELETE refused: role support may not write (delete) public.customers (rule roles.support.write)"
    assert assert_refused(support, "SELECT * FROM orders FOR SHARE") == \
        "pgguard: SELECT refused: role support may not write (lock) public.orders (rule roles.support.write)"


# --- engineering -------------------------------------------------------------------------------------------


def test_engineering_writes_public_tables(gateway: RunningGateway, direct: str) -> None:
    with scratch_table(direct, "id int PRIMARY KEY, label text", "policy_eng") as table:
        with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
            conn.execute(f"INSERT INTO {table} VALUES (1, 'one'), (2, 'two'), (3, 'three')")
            conn.execute(f"UPDATE public.{table} SET label = upper(label) WHERE id < 3")
            conn.execute(f"DELETE FROM {table} WHERE id = 3")
            conn.execute(f"WITH moved AS (DELETE FROM {table} WHERE id = 2 RETURNING id, label)"
                         f" INSERT INTO {table} SELECT id + 10, label FROM moved")
            with conn.transaction():
                conn.execute(f"SELECT * FROM {table} FOR UPDATE")
                conn.execute(f"LOCK TABLE {table} IN SHARE MODE")
        assert fetch_all(direct, f"SELECT id, label FROM {table} ORDER BY id") == [(1, "ONE"), (12, "TWO")]


def test_engineering_creates_and_drops_a_table_in_public(gateway_factory: Any, direct: str) -> None:
    # The demo's rule that holds engineering's DDL for approval is left out: this is about policy
    # (tests/integration/test_approvals.py has DDL approved).
    gateway = gateway_factory(without_ddl_approval)
    table = unique_name("policy_eng_ddl")
    exists = f"SELECT to_regclass('public.{table}') IS NOT NULL"
    try:
        with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
            conn.execute(f"CREATE TABLE public.{table} (id int PRIMARY KEY, note text)")
            assert fetch_value(direct, exists) is True
            conn.execute(f"INSERT INTO {table} VALUES (1, 'made by engineering')")
            assert conn.execute(f"SELECT note FROM {table}").fetchall() == [("made by engineering",)]
            conn.execute(f"DROP TABLE public.{table}")
        assert fetch_value(direct, exists) is False
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS public.{table}")


ENGINEERING_REFUSED = [
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT pg_read_file('postgresql.conf')",
    "SELECT pg_catalog.pg_read_file('postgresql.conf')",
    "DO $$ BEGIN NULL; END $$",
    "DO $$ BEGIN PERFORM pg_read_file('postgresql.conf'); END $$",
    "CALL no_such_procedure()",
    "VACUUM orders",
    "GRANT SELECT ON orders TO PUBLIC",
    "ALTER SYSTEM SET work_mem = '64MB'",
    "COPY orders TO '/tmp/policy-engineering'",
    "SELECT lo_import('/etc/hostname')",
    "SELECT pg_terminate_backend(1)",
    f'SELECT * FROM "{DOTTED_SCHEMA}".salaries',
    f'DELETE FROM "{DOTTED_SCHEMA}".salaries',
    f'INSERT INTO "{DOTTED_SCHEMA}".salaries VALUES (2, 200)',
    f'SET search_path = "{DOTTED_SCHEMA}"; DELETE FROM salaries',
]


@pytest.mark.parametrize("sql", ENGINEERING_REFUSED)
def test_engineering_may_not(outside_the_scopes: None, engineer: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(engineer, sql)


@pytest.fixture(scope="module")
def engineer(gateway: RunningGateway) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gateway.dsn("engineer"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        yield conn


def test_engineering_left_the_dotted_schema_alone(outside_the_scopes: None, engineer: psycopg.Connection[Any],
                                                  direct: str) -> None:
    assert_refused(engineer, f'UPDATE "{DOTTED_SCHEMA}".salaries SET amount = 0')
    assert fetch_all(direct, f'SELECT id, amount FROM "{DOTTED_SCHEMA}".salaries') == [(1, 100)]


# --- dba -------------------------------------------------------------------------------------------------------


def test_dba_may_run_do_blocks_and_read_server_files(gateway: RunningGateway, direct: str) -> None:
    with scratch_table(direct, "id int PRIMARY KEY", "policy_dba") as table:
        with psycopg.connect(gateway.dsn("dba"), autocommit=True) as conn:
            assert no_gateway_refusal(conn, f"DO $$ BEGIN INSERT INTO {table} VALUES (1); END $$") == []
            config = no_gateway_refusal(conn, "SELECT pg_read_file('postgresql.conf')")
            # The dba's login is a superuser: the file is read (a permission error would do too).
            assert isinstance(config, str) and "permission denied" in config or "include" in config[0][0]
            assert no_gateway_refusal(conn, "SET ROLE postgres") == []
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
            assert no_gateway_refusal(conn, "RESET ROLE") == []
            assert no_gateway_refusal(conn, f"VACUUM ANALYZE {table}") == []
            assert no_gateway_refusal(conn, "SELECT pg_advisory_lock(42), pg_advisory_unlock(42)") == [("", True)]
            assert no_gateway_refusal(conn, "SET standard_conforming_strings = off") == []
            assert no_gateway_refusal(conn, "RESET standard_conforming_strings") == []
        assert fetch_value(direct, f"SELECT count(*) FROM {table}") == 1


def test_dba_may_send_function_call_messages(gateway: RunningGateway) -> None:
    with login_as(gateway, "dba") as conn:
        int4abs = 1397  # pg_catalog.int4abs(int4)
        conn.send(frontend.FunctionCall(int4abs, [1], [(-5).to_bytes(4, "big", signed=True)], 1))
        seen, ready = conn.receive_until(backend.ReadyForQuery)
        assert [type(m).__name__ for m in seen] == ["FunctionCallResponse"]
        assert ready == backend.ReadyForQuery("I")


# --- several roles ---------------------------------------------------------------------------------------------


def test_a_caller_with_two_roles_gets_the_union_of_their_grants(gateway: RunningGateway, outside_the_scopes: None,
                                                                direct: str) -> None:
    """analysts + support: reads public.* (analysts), writes tickets (support), nothing else."""
    tokens = TokenService(load(gateway.config_path).identity)
    token = tokens.issue("policy-two-roles", ["analysts", "support"], 600)
    dsn = gateway.dsn("analyst", user="policy-two-roles", token=token)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (data.SUPPORT,)
        assert conn.execute(f"SELECT note FROM {SECRET}").fetchall() == [("support may not read this",)]
        ticket = conn.execute("INSERT INTO tickets (customer_id, subject, body, status)"
                              " VALUES (1, 'two roles', 'b', 'open') RETURNING id").fetchone()[0]
        try:
            assert conn.execute("DELETE FROM tickets WHERE id = %s", (ticket,)).rowcount == 1
        finally:
            fetch_all(direct, "DELETE FROM tickets WHERE id = %s RETURNING id", (ticket,))
        assert "may not write (delete) public.orders" in assert_refused(conn, "DELETE FROM orders WHERE id = 1")


# --- analysts -------------------------------------------------------------------------------------------


def test_analysts_ddl_hint_lists_only_what_they_may_run(gateway: RunningGateway) -> None:
    """Analysts have the write class but no table to write: the hint must not offer writing."""
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("CREATE TABLE analysts_hint_probe (id int)")
    diag = caught.value.diag
    assert caught.value.sqlstate == "42501"
    assert "may not run ddl statements" in (diag.message_primary or "")
    assert diag.message_hint == "allowed classes: read, session, transaction"
