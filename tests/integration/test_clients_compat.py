"""Client compatibility: what real clients and tools send that the gateway used to refuse or garble.

Each test goes through the real gateway with a real client (psycopg, psql), and where a
refusal was loosened, the dangerous neighbour is shown still refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from helpers import fetch_all, run_psql

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

ADVISORY = ('allow_functions = ["pg_catalog.pg_advisory_lock", "pg_catalog.pg_advisory_xact_lock",'
            ' "pg_catalog.pg_try_advisory_lock"]\n')


def refusal(dsn: str, sql: str) -> psycopg.errors.InsufficientPrivilege:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
        conn.execute(sql)
    return caught.value


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


def test_denied_functions_other_than_advisory_locks_cannot_be_allowed(gateway_factory: Callable[..., Any]) -> None:
    """A config that lists another denied built-in is an error, not a silently ignored line."""
    with pytest.raises(RuntimeError, match=r"allow_functions: pg_catalog.pg_read_file names no advisory lock"):
        gateway_factory(lambda text: with_engineering_advisory_locks(text).replace(
            '"pg_catalog.pg_try_advisory_lock"]', '"pg_catalog.pg_try_advisory_lock", "pg_catalog.pg_read_file"]'))


# --- errors whose quoted parts pgguard hides ------------------------------------------------------------


def error_of(dsn: str, sql: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(sql)
    return caught.value


def test_a_misspelt_relation_says_why_its_name_is_hidden(gateway: RunningGateway) -> None:
    """Alembic's `SELECT version_num FROM alembic_version` on a database without it, or a typo."""
    error = error_of(gateway.dsn("engineer"), "SELECT version_num FROM alembic_version")
    assert isinstance(error, psycopg.errors.UndefinedTable)
    assert error.diag.message_primary == 'relation "[redacted]" does not exist'
    assert error.diag.message_hint is not None and "does not know (a misspelt name is one)" in error.diag.message_hint


def test_a_hidden_value_in_an_error_stays_hidden_under_the_hint(gateway: RunningGateway,
                                                                 postgres: PostgresServer) -> None:
    ssn = fetch_all(postgres.dsn(sslmode="verify-full"), "SELECT ssn FROM customers WHERE id = 7")[0][0]
    error = error_of(gateway.dsn("analyst"), "SELECT ssn::int FROM customers WHERE id = 7")
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


# --- psql --------------------------------------------------------------------------------------------


def test_psql_list_subscriptions_refusal_says_why(gateway: RunningGateway) -> None:
    """`\\dRs` reads pg_subscription, which holds connection strings: refused, with the reason in a hint."""
    result = run_psql(gateway.dsn("engineer"), r"\dRs")
    assert result.returncode == 1
    assert "may not read pg_catalog.pg_subscription (rule roles.engineering.read)" in result.stderr
    assert "HINT:  pg_catalog.pg_subscription holds values or secrets" in result.stderr


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
