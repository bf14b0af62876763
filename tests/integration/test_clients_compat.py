"""Client compatibility: what real clients and tools send that the gateway used to refuse or garble.

Each test goes through the real gateway with a real client (psql, pg_dump, psycopg, SQLAlchemy),
and where a refusal was loosened, the dangerous neighbours are shown still refused.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from helpers import fetch_all
from pgguard.demo.data import ENGINEER

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

ADVISORY = ('allow_functions = ["pg_catalog.pg_advisory_lock", "pg_catalog.pg_advisory_xact_lock",'
            ' "pg_catalog.pg_try_advisory_lock"]\n')


def error_of(dsn: str, sql: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(sql)
    return caught.value


def refusal(dsn: str, sql: str) -> psycopg.Error:
    error = error_of(dsn, sql)
    assert isinstance(error, psycopg.errors.InsufficientPrivilege), error
    return error


def with_engineering_advisory_locks(text: str) -> str:
    """The demo config, with engineering listing three advisory lock functions, as a migration tool needs."""
    anchor = 'statements = ["read", "write", "ddl", "session", "transaction"]\n'
    assert text.count(anchor) == 1
    return text.replace(anchor, anchor + ADVISORY)


@pytest.fixture
def advisory_gateway(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return gateway_factory(with_engineering_advisory_locks)


# --- advisory locks --------------------------------------------------------------------------------


def test_an_advisory_lock_refusal_says_how_to_allow_it(gateway: RunningGateway) -> None:
    error = refusal(gateway.dsn("engineer"), "SELECT pg_advisory_lock(4711)")
    assert error.diag.message_primary.startswith("pgguard: SELECT refused: function pg_advisory_lock() is denied")
    assert error.diag.message_hint is not None
    assert 'allow_functions = ["pg_catalog.pg_advisory_lock"]' in error.diag.message_hint


def test_a_role_that_lists_advisory_locks_takes_and_releases_them(advisory_gateway: RunningGateway,
                                                                  postgres: PostgresServer) -> None:
    """What migration tools (Rails, Prisma, golang-migrate, Flyway) run before they migrate."""
    direct = postgres.dsn(sslmode="verify-full")
    held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s AND granted"
    with psycopg.connect(advisory_gateway.dsn("engineer"), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(4711)")
        assert fetch_all(direct, held, [4711]) == [(1,)]
        assert conn.execute("SELECT pg_try_advisory_lock(4712)").fetchone() == (True,)
        assert conn.execute("SELECT pg_advisory_unlock(4711), pg_advisory_unlock(4712)").fetchone() == (True, True)
        assert fetch_all(direct, held, [4711]) == [(0,)]
        with conn.transaction():
            conn.execute("SELECT (4713::bigint).pg_advisory_xact_lock")  # attribute notation, as a function call
            assert fetch_all(direct, held, [4713]) == [(1,)]
        assert fetch_all(direct, held, [4713]) == [(0,)]


@pytest.mark.parametrize(("identity", "sql"), [
    ("analyst", "SELECT pg_advisory_lock(4711)"),           # the analysts' role lists none
    ("analyst", "SELECT (4711::bigint).pg_advisory_lock"),
    ("engineer", "SELECT pg_advisory_lock_shared(4711)"),   # not listed
    ("engineer", "SELECT pg_try_advisory_xact_lock(4711)"),
    ("engineer", "SELECT pg_read_file('PG_VERSION')"),       # the rest of the deny list stays denied
    ("engineer", "SELECT pg_terminate_backend(1)"),
])
def test_functions_a_role_does_not_list_stay_denied(advisory_gateway: RunningGateway, identity: str, sql: str) -> None:
    error = refusal(advisory_gateway.dsn(identity), sql)
    assert "is denied" in error.diag.message_primary


@pytest.mark.parametrize("pattern", ["*", "*.*", "pg_*.pg_advisory_lock", "*.pg_advisory_*"])
def test_a_pattern_for_user_defined_functions_lifts_no_denial(gateway_factory: Callable[..., Any],
                                                              pattern: str) -> None:
    """Only a pattern that names pg_catalog allows an advisory lock: `*` let a role that allows every
    user-defined function take them."""
    anchor = 'statements = ["read", "write", "ddl", "session", "transaction"]\n'
    wildcard = gateway_factory(lambda text: text.replace(anchor, anchor + f'allow_functions = ["{pattern}"]\n'))
    assert "is denied" in refusal(wildcard.dsn("engineer"), "SELECT pg_advisory_lock(4711)").diag.message_primary


def test_denied_functions_other_than_advisory_locks_cannot_be_allowed(gateway_factory: Callable[..., Any]) -> None:
    """A config that lists another denied built-in is an error, not a silently ignored line."""
    with pytest.raises(RuntimeError, match=r"allow_functions: pg_catalog.pg_read_file names no advisory lock"):
        gateway_factory(lambda text: with_engineering_advisory_locks(text).replace(
            '"pg_catalog.pg_try_advisory_lock"]', '"pg_catalog.pg_try_advisory_lock", "pg_catalog.pg_read_file"]'))


# --- errors whose quoted parts pgguard hides ------------------------------------------------------------


def test_a_misspelt_relation_says_why_its_name_is_hidden(gateway: RunningGateway) -> None:
    """Alembic's `SELECT version_num FROM alembic_version` on a database without it, or a typo."""
    error = error_of(gateway.dsn("engineer"), "SELECT version_num FROM alembic_version")
    assert isinstance(error, psycopg.errors.UndefinedTable)
    assert error.diag.message_primary == 'relation "[redacted]" does not exist'
    assert error.diag.message_hint is not None and "does not know (a misspelt name is one)" in error.diag.message_hint


def test_a_hidden_value_in_an_error_stays_hidden_under_the_hint(gateway: RunningGateway,
                                                                 postgres: PostgresServer) -> None:
    ssn = fetch_all(postgres.dsn(sslmode="verify-full"), "SELECT ssn FROM customers WHERE id = 7")[0][0]
    # support, not the analyst: a strict role is refused the cast before it runs (docs/masking.md)
    error = error_of(gateway.dsn("support"), "SELECT ssn::int FROM customers WHERE id = 7")
    assert isinstance(error, psycopg.errors.InvalidTextRepresentation)
    assert error.diag.message_primary == 'invalid input syntax for type integer: "[redacted]"'
    assert error.diag.message_hint is not None and "reads columns masked for you" in error.diag.message_hint
    assert ssn not in str(error) and ssn[-4:] not in (error.diag.message_hint or "")


@pytest.mark.parametrize(("identity", "sql"), [
    ("analyst", "SELECT 1/0"),                                    # reads nothing hidden
    ("support", "SELECT email::int FROM customers WHERE id = 7"),  # support sees emails
])
def test_an_error_pgguard_leaves_alone_gets_no_hint(gateway: RunningGateway, identity: str, sql: str) -> None:
    error = error_of(gateway.dsn(identity), sql)
    assert "[redacted]" not in str(error)
    assert error.diag.message_hint is None


# --- transactions --------------------------------------------------------------------------------------


def test_a_read_write_transaction_refusal_says_what_to_leave_out(gateway: RunningGateway) -> None:
    """psycopg's `read_only = False` sends BEGIN READ WRITE, which a role that may write nothing is refused."""
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        conn.read_only = False
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute("SELECT 1")
        assert caught.value.diag.message_primary == (
            "pgguard: BEGIN refused: role analysts may not write anything (rule roles.analysts.write)")
        assert "(READ WRITE, or a read_only setting off); leave that out" in (caught.value.diag.message_hint or "")
        conn.rollback()
        conn.read_only = None
        assert conn.execute("SELECT current_setting('transaction_read_only')").fetchone() == ("on",)


# --- pg_dump ---------------------------------------------------------------------------------------------


def test_an_access_share_lock_is_a_read(gateway: RunningGateway) -> None:
    """pg_dump locks every table it dumps IN ACCESS SHARE MODE: the lock any SELECT takes and holds to the end of
    its transaction. A role that may read the table may take it; a stronger one is still a write."""
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        conn.execute("LOCK TABLE public.customers, orders IN ACCESS SHARE MODE NOWAIT")
        assert conn.execute("SELECT mode FROM pg_locks WHERE relation = 'orders'::regclass"
                            " AND pid = pg_backend_pid()").fetchall() == [("AccessShareLock",)]
        conn.rollback()
        for mode in ("ROW SHARE", "SHARE", "ACCESS EXCLUSIVE"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not write \\(lock\\) public.orders"):
                conn.execute(f"LOCK TABLE orders IN {mode} MODE")
            conn.rollback()
    # A role that may not read the table may not lock it either.
    error = refusal(gateway.dsn("support"), "LOCK TABLE pg_catalog.pg_authid IN ACCESS SHARE MODE")
    assert "may not read pg_catalog.pg_authid" in error.diag.message_primary


def pg_dump(gateway: RunningGateway, identity: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(["pg_dump", gateway.dsn(identity), *args], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_pg_dump_of_the_engineers_tables_is_masked(gateway: RunningGateway, postgres: PostgresServer) -> None:
    """pg_dump sets restrict_nonsystem_relation_kind with set_config(name, …) FROM pg_settings WHERE name = '…',
    and locks what it dumps IN ACCESS SHARE MODE."""
    result = pg_dump(gateway, "engineer", "-t", "customers", "-t", "orders")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE public.customers (" in result.stdout
    email = fetch_all(postgres.dsn(sslmode="verify-full"), "SELECT email FROM customers WHERE id = 1")[0][0]
    rows = result.stdout.split("COPY public.customers ", 1)[1].split("\n\\.\n", 1)[0].splitlines()[1:]
    assert len(rows) == 1200
    assert rows[0].split("\t")[2] == "***@" + email.split("@")[1]
    assert email not in result.stdout


def test_pg_dump_schema_as_analyst(gateway: RunningGateway) -> None:
    """The analysts' login may not read the sequences' values, so their dump is of the schema only."""
    result = pg_dump(gateway, "analyst", "-s", "-t", "customers", "-t", "orders")
    assert result.returncode == 0, result.stderr
    assert "ALTER TABLE ONLY public.orders" in result.stdout and "FOREIGN KEY (customer_id)" in result.stdout


@pytest.mark.parametrize(("sql", "refused"), [
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'", "setting role is reserved"),
    ("SELECT set_config(name, 'off', false) FROM pg_catalog.pg_settings WHERE name = 'default_transaction_read_only'",
     "may not write anything"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings", "not a constant"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name <> 'application_name'", "not a constant"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings, (VALUES ('role')) v(r) WHERE name = 'application_name'",
     "not a constant"),
    ("SELECT (SELECT set_config(name, 'x', false) FROM (VALUES ('role')) v(name)) FROM pg_settings"
     " WHERE name = 'application_name'", "not a constant"),
    ("SELECT set_config(name, 'x', false) FROM public.pg_settings WHERE name = 'application_name'", "not a constant"),
    # char(n)'s = ignores trailing blanks and its cast to text drops them: this set search_path, unseen.
    ("WITH pg_settings(name) AS (VALUES ('search_path'::char(11))) SELECT set_config(name, 'pg_catalog', false)"
     " FROM pg_settings WHERE name = 'search_path  '", "not a constant"),
    ("WITH pg_settings(name) AS (VALUES ('search_path')) SELECT * FROM (SELECT set_config(name, 'pg_catalog', false)"
     " FROM pg_settings WHERE name = 'search_path') s", "not a constant"),
])
def test_set_config_from_pg_settings_is_judged_as_the_set_it_makes(gateway: RunningGateway, sql: str,
                                                                     refused: str) -> None:
    assert refused in refusal(gateway.dsn("analyst"), sql).diag.message_primary


def test_set_config_from_pg_settings_when_pg_settings_may_be_another_relation(gateway: RunningGateway) -> None:
    """With pg_catalog searched after public, `pg_settings` may be a table whose `name` is anything."""
    dump_sql = "SELECT set_config(name, 'view', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'"
    with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
        assert conn.execute(dump_sql).fetchall() == [("view",)]
        conn.execute("SET search_path = public, pg_catalog")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_settings may not be pg_catalog's here"):
            conn.execute(dump_sql)
        assert conn.execute(dump_sql.replace("FROM pg_settings", "FROM pg_catalog.pg_settings")).fetchall() == [
            ("view",)]


# --- sequences ---------------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    __tablename__ = "tickets"
    id: Mapped[int] = mapped_column(sa.Sequence("tickets_id_seq"), primary_key=True)
    customer_id: Mapped[int]
    subject: Mapped[str]
    body: Mapped[str]
    status: Mapped[str]


def test_an_orm_that_fetches_ids_first_inserts_through_the_tables_own_sequence(gateway: RunningGateway,
                                                                                postgres: PostgresServer) -> None:
    """SQLAlchemy with a Sequence (like Hibernate's sequence generators) runs nextval('tickets_id_seq') before the
    INSERT: support may write tickets, so it may draw the ids of tickets' serial column."""
    engine = sa.create_engine(gateway.dsn("support").replace("postgresql://", "postgresql+psycopg://", 1),
                              poolclass=sa.NullPool)
    direct = postgres.dsn(sslmode="verify-full")
    try:
        with Session(engine) as session:
            ticket = Ticket(customer_id=1, subject="compat sequence", body="ids first", status="open")
            session.add(ticket)
            session.commit()
            made = ticket.id
        assert fetch_all(direct, "SELECT subject FROM tickets WHERE id = %s", [made]) == [("compat sequence",)]
    finally:
        engine.dispose()
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("DELETE FROM tickets WHERE subject = 'compat sequence'")


@pytest.mark.parametrize(("identity", "sql", "refused"), [
    ("support", "SELECT nextval('orders_id_seq')", "may not write (nextval) public.orders_id_seq"),
    ("support", "SELECT setval('tickets_id_seq', 1)", "may not write (setval) public.tickets_id_seq"),
    ("support", "SELECT nextval('tickets_id_seq'), setval('tickets_id_seq', 1)", "(nextval/setval) public.tickets"),
    ("support", "SELECT nextval('public.tickets_id_seq'), nextval('orders_id_seq')", "public.orders_id_seq"),
    ("analyst", "SELECT nextval('tickets_id_seq')", "may not write (nextval) public.tickets_id_seq"),
    ("support", "SELECT * FROM tickets_id_seq", "may not read public.tickets_id_seq"),  # a write is not a read
])
def test_other_sequence_writes_stay_refused(gateway: RunningGateway, identity: str, sql: str,
                                                               refused: str) -> None:
    assert refused in refusal(gateway.dsn(identity), sql).diag.message_primary


@pytest.mark.parametrize("call", ["nextval({oid})", "nextval('{oid}')", "setval({oid}, 7)"])
def test_a_sequence_given_by_its_oid_is_refused(gateway: RunningGateway, postgres: PostgresServer,
                                                call: str) -> None:
    """regclass reads digits as an OID: they were judged as public."16440", which the engineers may write, and
    wrote a sequence of another schema (here one their login is granted)."""
    direct = postgres.dsn(sslmode="verify-full")
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS compat_private")
        conn.execute("CREATE SEQUENCE IF NOT EXISTS compat_private.s")
        conn.execute(f"GRANT USAGE ON SCHEMA compat_private TO {ENGINEER}")
        conn.execute(f"GRANT ALL ON SEQUENCE compat_private.s TO {ENGINEER}")
        oid = conn.execute("SELECT 'compat_private.s'::regclass::oid").fetchone()[0]  # type: ignore[index]
    try:
        error = refusal(gateway.dsn("engineer"), "SELECT " + call.format(oid=oid))
        assert f"of a sequence given by its OID ({oid})" in error.diag.message_primary
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("DROP SCHEMA compat_private CASCADE")
