"""What one identity can see of another through PostgreSQL's own catalog views.

The demo's `analyst` and `agent` are two identities on one upstream login, and PostgreSQL shows every
backend of a login the statement texts of the others. Bob (`agent`, psycopg) runs a statement with a
literal no detector recognises and stays connected, so pg_stat_activity keeps his text; Alice
(`analyst`, asyncpg, so every statement goes through Parse and Bind) tries every route to it.

pg_subscription's connection strings are hidden by column: \\dRs and pg_dump work, subconninfo does not
come out, and no filter or computation on it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import asyncpg
import psycopg
import pytest
from helpers import psql, run_psql
from test_clients_compat import pg_dump

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

SECRET = "Zebulon Quillfeather-Oyelaran"  # a customer's name Bob typed: no detector knows it
BOBS_QUERY = f"SELECT count(*) FROM customers WHERE full_name = '{SECRET}'"
PASSWORD = "cat-subscription-secret"


def superuser(postgres: PostgresServer, sql: str) -> None:
    with psycopg.connect(postgres.dsn(sslmode="verify-full"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def catalog_objects(postgres: PostgresServer) -> Iterator[None]:
    """A subscription (never connected), a view over pg_stat_activity and one over pg_subscription, and a SQL
    function returning a connection string: made before each test's gateway reads the catalog."""
    superuser(postgres, f"""
        CREATE SUBSCRIPTION cat_sub CONNECTION 'host=127.0.0.1 port=1 dbname=x user=u password={PASSWORD}'
            PUBLICATION cat_pub WITH (connect = false);
        CREATE VIEW public.cat_activity AS SELECT pid, query AS text FROM pg_catalog.pg_stat_activity;
        CREATE VIEW public.cat_raw_activity AS SELECT pid, query FROM pg_catalog.pg_stat_get_activity(NULL);
        CREATE VIEW public.cat_texts AS
            SELECT pg_catalog.pg_stat_get_backend_activity(b) AS text FROM pg_catalog.pg_stat_get_backend_idset() b;
        CREATE VIEW public.cat_subs AS SELECT subname, subconninfo AS how FROM pg_catalog.pg_subscription;
        CREATE FUNCTION public.cat_conninfo() RETURNS text LANGUAGE sql
            AS 'SELECT subconninfo FROM pg_catalog.pg_subscription LIMIT 1';
        GRANT SELECT ON public.cat_activity, public.cat_raw_activity, public.cat_texts, public.cat_subs
            TO pgguard_reader;
    """)
    try:
        yield
    finally:
        superuser(postgres, """
            DROP FUNCTION public.cat_conninfo();
            DROP VIEW public.cat_subs, public.cat_activity, public.cat_raw_activity, public.cat_texts;
            ALTER SUBSCRIPTION cat_sub SET (slot_name = NONE); DROP SUBSCRIPTION cat_sub;
        """)


@pytest.fixture
def demo(catalog_objects: None, gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return gateway_factory(lambda text: text.replace(
        'strict_inference = true', 'strict_inference = true\nallow_functions = ["public.cat_conninfo"]', 1))


@contextmanager
def bobs_session(gateway: RunningGateway, query: str = BOBS_QUERY) -> Iterator[int]:
    """Bob's session, idle after `query` (pg_stat_activity keeps its text); his upstream backend's pid."""
    with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        assert conn.execute(query).fetchone() == (0,)
        yield pid


@pytest.fixture
def bob(demo: RunningGateway) -> Iterator[int]:
    with bobs_session(demo) as pid:
        yield pid


def as_alice(gateway: RunningGateway, sql: str) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(gateway.dsn("analyst"))
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()
    return asyncio.run(run())


def refused_to_alice(gateway: RunningGateway, sql: str) -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
        as_alice(gateway, sql)
    assert caught.value.message.startswith("pgguard: ")
    return caught.value


def test_bobs_text_is_there_to_be_read(postgres: PostgresServer, demo: RunningGateway, bob: int) -> None:
    """The premise: PostgreSQL shows Bob's text to every backend of his login, and his login's to the dba."""
    direct = postgres.dsn(sslmode="verify-full")
    with psycopg.connect(direct) as conn:
        assert conn.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (bob,)).fetchone() == (BOBS_QUERY,)
    with psycopg.connect(demo.dsn("dba")) as conn:  # may run anything: untouched
        found = conn.execute("SELECT query FROM pg_stat_activity WHERE query LIKE %s", (f"%{SECRET}%",)).fetchall()
        assert (BOBS_QUERY,) in found
        assert conn.execute("SELECT subconninfo FROM pg_subscription").fetchone()[0].endswith(PASSWORD)


def test_monitoring_queries_work_and_show_no_text(demo: RunningGateway, bob: int) -> None:
    rows = as_alice(demo, "SELECT pid, state, wait_event, usename, backend_type FROM pg_stat_activity")
    assert any(row["pid"] == bob and row["state"] == "idle" for row in rows)
    for sql in ("SELECT pid, query FROM pg_stat_activity",
                "SELECT * FROM pg_stat_activity",
                "SELECT pid, query AS q FROM pg_catalog.pg_stat_activity a",
                "SELECT pid, text FROM cat_activity",                      # a view defined over it
                "SELECT x.t FROM (SELECT query AS t FROM pg_stat_activity) x",
                "SELECT length(query) AS n FROM pg_stat_activity",
                "SELECT text FROM cat_texts",
                # pgAdmin's dashboard
                "SELECT pid, datname, usename, application_name, client_addr, pg_catalog.to_char(backend_start,"
                " 'YYYY-MM-DD HH24:MI:SS TZ') AS backend_start, state, wait_event_type || ': ' || wait_event AS"
                " wait_event, array_to_string(pg_catalog.pg_blocking_pids(pid), ', ') AS blocking_pids, query,"
                " pg_catalog.to_char(state_change, 'YYYY-MM-DD HH24:MI:SS TZ') AS state_change FROM"
                " pg_catalog.pg_stat_activity WHERE datname = (SELECT datname FROM pg_catalog.pg_database"
                " WHERE datname = current_database()) ORDER BY pid",
                "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"):
        rows = as_alice(demo, sql)
        assert rows and SECRET not in repr(rows), sql
        assert all(value is None for row in rows for name, value in row.items() if name in ("query", "q", "text", "t", "n"))


def test_cursors_and_prepared_statements_show_no_text_either(demo: RunningGateway, bob: int) -> None:
    with psycopg.connect(demo.dsn("analyst")) as conn:
        with conn.cursor(name="texts") as cursor:  # DECLARE … CURSOR, FETCH
            cursor.execute("SELECT pid, query FROM pg_stat_activity")
            rows = cursor.fetchall()
        assert any(pid == bob for pid, _ in rows) and all(query is None for _, query in rows)
        for _ in range(3):  # prepared after a few runs, then Bind and Execute only
            rows = conn.execute("SELECT pid, query FROM pg_stat_activity WHERE pid = %s", (bob,), prepare=True)
            assert rows.fetchall() == [(bob, None)]


@pytest.mark.parametrize("sql", [
    "SELECT pid FROM pg_stat_activity WHERE query LIKE '%Zebulon%'",
    "SELECT count(*) FROM pg_stat_activity WHERE query ~ 'full_name = ''Z'",
    "SELECT pid FROM cat_activity WHERE position('Zeb' IN text) > 0",
    "SELECT pid FROM pg_stat_activity ORDER BY query",
    "SELECT substr(query, 40) FROM pg_stat_activity",
    "SELECT row_to_json(a) FROM pg_stat_activity a",
    "SELECT a::text FROM pg_stat_activity a",
    "SELECT query FROM pg_stat_get_activity(NULL)",
    "SELECT pg_stat_get_activity(NULL)",
    "SELECT pg_stat_get_backend_activity(b) FROM pg_stat_get_backend_idset() b",
    "SELECT pg_catalog.pg_stat_get_backend_activity(1)",
    "SELECT (NULL::int).pg_stat_get_activity",
    "SELECT query FROM cat_raw_activity",        # views over the functions: the policy does not look into views
    "SELECT pid FROM cat_raw_activity",
    "SELECT 1 FROM cat_texts WHERE text LIKE '%Zebulon%'",
])
def test_every_other_route_to_the_text_is_refused(demo: RunningGateway, bob: int, sql: str) -> None:
    error = refused_to_alice(demo, sql)
    assert SECRET not in str(error)


def test_a_refused_function_says_what_to_read_instead(demo: RunningGateway, bob: int) -> None:
    error = refused_to_alice(demo, "SELECT * FROM pg_stat_get_activity(NULL)")
    assert error.message == "pgguard: SELECT refused: function pg_stat_get_activity() is denied" \
                            " (rule roles.analysts.functions)"
    assert "read pg_stat_activity instead" in (error.hint or "")


def test_psql_sees_no_text_either(demo: RunningGateway, bob: int) -> None:
    out = psql(demo.dsn("analyst"), r"\x", "SELECT * FROM pg_stat_activity",
               r"COPY (SELECT pid, query FROM pg_stat_activity) TO STDOUT")
    assert "backend_type" in out and SECRET not in out


@pytest.fixture
def pg_stat_statements(postgres: PostgresServer, gateway_factory: Callable[..., RunningGateway]
                       ) -> Iterator[RunningGateway]:
    """The extension, installed in a schema of its own that analysts may read (not loaded: pgguard answers first)."""
    superuser(postgres, "CREATE SCHEMA cat_pgss; CREATE EXTENSION pg_stat_statements SCHEMA cat_pgss;"
                        " GRANT USAGE ON SCHEMA cat_pgss TO pgguard_reader")
    try:
        yield gateway_factory(lambda text: text.replace('read = ["public.*"]', 'read = ["public.*", "cat_pgss.*"]', 1))
    finally:
        superuser(postgres, "DROP EXTENSION pg_stat_statements; DROP SCHEMA cat_pgss")


@pytest.mark.parametrize("sql", [
    "SELECT query FROM cat_pgss.pg_stat_statements",
    "SELECT * FROM cat_pgss.pg_stat_statements",
    "SELECT queryid FROM cat_pgss.pg_stat_statements WHERE query LIKE '%Zebulon%'",
    "SELECT query FROM cat_pgss.pg_stat_statements(true)",
])
def test_pg_stat_statements_texts_are_refused(pg_stat_statements: RunningGateway, sql: str) -> None:
    """Its view reads the extension's function in C, which lineage cannot follow: the texts are refused, not
    forwarded (the server would answer that the module is not loaded)."""
    refused_to_alice(pg_stat_statements, sql)


# --- pg_subscription ------------------------------------------------------------------------------------


def test_psql_lists_subscriptions(demo: RunningGateway) -> None:
    """`\\dRs` reads pg_subscription's other columns, which PostgreSQL shows every login."""
    for identity in ("analyst", "engineer", "support"):
        out = psql(demo.dsn(identity), r"\dRs")
        assert "cat_sub" in out and "cat_pub" in out


def test_psql_verbose_listing_is_postgresqls_own_answer_on_a_login_that_is_no_superuser(
        demo: RunningGateway) -> None:
    """`\\dRs+` selects subconninfo too, which pgguard hides (NULL); PostgreSQL itself then refuses the column to
    a login that is no superuser, as it would on a direct connection."""
    result = run_psql(demo.dsn("analyst"), r"\dRs+")
    assert result.returncode == 1
    assert "permission denied for table pg_subscription" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout


@pytest.fixture
def superuser_analysts(catalog_objects: None, gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    """Analysts on the superuser login: PostgreSQL would show subconninfo, so only pgguard stands between."""
    return gateway_factory(lambda text: text.replace(
        'login = "reader"', 'login = "admin"', 1).replace(
        'strict_inference = true', 'strict_inference = true\nallow_functions = ["public.cat_conninfo"]', 1))


def test_psql_verbose_listing_hides_the_connection_string(superuser_analysts: RunningGateway) -> None:
    out = psql(superuser_analysts.dsn("analyst"), r"\x", r"\dRs+")
    assert "cat_sub" in out and "Conninfo" in out
    assert PASSWORD not in out and "host=" not in out


@pytest.mark.parametrize("sql", [
    "SELECT * FROM pg_subscription",
    "SELECT subname, subconninfo FROM pg_catalog.pg_subscription",
    "SELECT how FROM cat_subs",                  # a view
    "SELECT length(subconninfo) FROM pg_subscription",
])
def test_a_read_of_the_connection_string_comes_back_null(superuser_analysts: RunningGateway, sql: str) -> None:
    rows = as_alice(superuser_analysts, sql)
    assert rows and PASSWORD not in repr(rows)
    assert all(value is None for row in rows for name, value in row.items()
               if name in ("subconninfo", "how", "cat_conninfo", "length"))


@pytest.mark.parametrize("sql", [
    "SELECT row_to_json(s) FROM pg_subscription s",
    "SELECT s::text FROM pg_subscription s",
    "SELECT to_jsonb(s) FROM cat_subs s",
    "SELECT subname FROM pg_subscription WHERE subconninfo LIKE '%password=cat%'",
    "SELECT subname FROM cat_subs WHERE how ~ 'secret'",
    "SELECT cat_conninfo()",  # a function: computes with it, which analysts (strict) may not
    "SELECT cat_conninfo() LIKE '%cat%'",
    "SELECT subname FROM pg_subscription ORDER BY subconninfo",
    "SELECT split_part(subconninfo, 'password=', 2) FROM pg_subscription",
])
def test_any_other_use_of_the_connection_string_is_refused(superuser_analysts: RunningGateway, sql: str) -> None:
    error = refused_to_alice(superuser_analysts, sql)
    assert PASSWORD not in str(error)


@pytest.mark.parametrize("identity", ["analyst", "engineer"])
def test_pg_dump_needs_no_no_subscriptions(demo: RunningGateway, identity: str) -> None:
    """As no superuser, pg_dump counts the subscriptions and says it leaves them out."""
    result = pg_dump(demo, identity, "-s", "-t", "orders")
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE public.orders" in result.stdout
    assert "subscriptions not dumped because current user is not a superuser" in result.stderr

