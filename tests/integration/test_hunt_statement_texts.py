"""An attacker's routes to another identity's statement text, and to raw values through the search path.

The demo's `analyst` (Alice) and `agent` (Bob) are two identities on one upstream login. Bob runs a statement
with a literal no detector knows and stays connected; Alice tries to read it by every route, through psql,
psycopg and asyncpg. Routes that got through are here as the tests that showed them, fixed:

- a view or a materialized view over pg_stat_activity that the gateway's catalog snapshot does not know yet
  (made outside the gateway, or by the engineer a moment ago) was read as an unknown relation, with the
  detectors only: the text came back raw. A role that may not run DDL is now refused such a relation;
- a view redefined over pg_stat_activity.query (`CREATE OR REPLACE VIEW`) was masked as its old definition
  until the catalog was read again, and a statement prepared before (asyncpg prepares every one) kept the
  old plan for good. The engineer's DDL now puts the snapshot behind: until it is read again, analysts'
  reads are refused and their prepared statements' rows NULL; then those are planned again, masking what
  either definition masks;
- a temporary view of the engineer's, named like a table, is what PostgreSQL reads first, and no snapshot
  knows it: `customers.city` came back as the SSNs. A temporary view (or ON SELECT rule) that reads
  columns the session may not see is now refused, as a new table of them is;
- the path read at login in the client's encoding: in LATIN1, schema "Ã©" read as `é`, and a look-alike
  `customers` there came out unmasked. It is now read in UTF-8;
- a default search path with an empty quoted name (`ALTER ROLE … SET search_path = '', x`), which
  PostgreSQL takes, was read as no path at all: names resolved nowhere, and the role's read patterns
  were not checked. It is now read as the server reads it.

The routes that held are here too, so that they stay held.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import pytest
from helpers import known_to, psql, without_ddl_approval
from test_masking_catalog_texts import bobs_session
from test_policy_session_path import LOGIN, REPORT, analysts_on, shadow  # noqa: F401  (a fixture)

from pgguard.demo import data

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

SECRET = "Hesper Vantongeren-Oakes"  # a name Bob filtered on: no detector knows it
BOBS_QUERY = f"SELECT count(*) FROM customers WHERE full_name = '{SECRET}'"
NEW_RELATION_TRIES = 200  # a catalog re-read is asked for at once; the gateway reads it within a second or two


def superuser(postgres: PostgresServer, sql: str) -> None:
    with psycopg.connect(postgres.dsn(sslmode="verify-full"), autocommit=True) as conn:
        conn.execute(sql)


def without_approvals(text: str) -> str:
    """The demo's config with no approval rule: an engineer's CREATE OR REPLACE VIEW is held by the rule on
    orders too (a view's writes may reach it)."""
    return without_ddl_approval(text).replace('    { tables = ["public.orders"], kinds = ["update", "delete"] },\n', "")


@pytest.fixture
def bob(gateway: RunningGateway) -> Iterator[int]:
    with bobs_session(gateway, BOBS_QUERY) as pid:
        yield pid


class Alice:
    """Alice's asyncpg session (every statement through Parse and Bind), kept open across statements."""

    def __init__(self, dsn: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self.loop.run_until_complete(self.conn.fetch(sql, *args))

    def refused(self, sql: str, *args: Any) -> asyncpg.PostgresError:
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
            self.fetch(sql, *args)
        assert caught.value.message.startswith("pgguard: ")
        assert SECRET not in str(caught.value)
        return caught.value

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()


@pytest.fixture
def alice(gateway: RunningGateway) -> Iterator[Alice]:
    session = Alice(gateway.dsn("analyst"))
    yield session
    session.close()


# --- relations the catalog snapshot does not know yet ------------------------------------------------------


@pytest.fixture
def new_relation(postgres: PostgresServer) -> Iterator[list[str]]:
    """Views ("VIEW name", "MATERIALIZED VIEW name") to drop after the test, whatever made them."""
    made: list[str] = []
    yield made
    for view in made:
        superuser(postgres, f"DROP {view}")


@pytest.mark.parametrize("kind", ["VIEW", "MATERIALIZED VIEW"])
def test_a_view_over_pg_stat_activity_made_outside_the_gateway_shows_no_text(
        postgres: PostgresServer, bob: int, alice: Alice, new_relation: list[str], kind: str) -> None:
    """Made (a monitoring view, say) while Alice's session is open: until the gateway has read the catalog
    again, the relation is refused to her, not read with the detectors only; then its query column is NULL."""
    name = f"hunt_{kind.split()[0].lower()}_activity"
    new_relation.append(f"{kind} public.{name}")
    assert alice.fetch("SELECT 1") == [(1,)]
    superuser(postgres, f"CREATE {kind} public.{name} AS SELECT pid, query FROM pg_catalog.pg_stat_activity;"
                        f" GRANT SELECT ON public.{name} TO {data.READER}")
    sql = f"SELECT pid, query FROM {name} WHERE pid = $1"
    error = alice.refused(sql, bob)
    assert f"relation {name} is unknown to pgguard" in error.message
    assert "retry" in (error.hint or "")
    for _ in range(NEW_RELATION_TRIES):
        try:
            rows = alice.fetch(sql, bob)
            break
        except asyncpg.InsufficientPrivilegeError as exc:
            assert "unknown to pgguard" in exc.message
            alice.loop.run_until_complete(asyncio.sleep(0.05))
    else:
        pytest.fail("the catalog was not read again")
    assert rows == [(bob, None)]


def test_a_view_the_engineer_just_made_shows_no_text(
        gateway_factory: Callable[..., RunningGateway], new_relation: list[str]) -> None:
    """The engineer's DDL (here with no approval needed) has the catalog read again, but Alice's open session
    may ask before that read is done: never the text, whichever comes first."""
    served = gateway_factory(without_approvals)
    new_relation.append("VIEW public.hunt_engineers_view")
    with psycopg.connect(served.dsn("agent"), autocommit=True) as bobs:
        pid = bobs.execute("SELECT pg_backend_pid()").fetchone()[0]
        bobs.execute(BOBS_QUERY)
        alice = Alice(served.dsn("analyst"))
        try:
            assert alice.fetch("SELECT 1") == [(1,)]
            with psycopg.connect(served.dsn("engineer"), autocommit=True) as engineer:
                engineer.execute("CREATE VIEW public.hunt_engineers_view AS"
                                 " SELECT pid, query AS q FROM pg_catalog.pg_stat_activity")
            for _ in range(3):
                try:
                    rows = alice.fetch("SELECT pid, q FROM hunt_engineers_view WHERE pid = $1", pid)
                except asyncpg.InsufficientPrivilegeError as exc:
                    assert "pgguard is reading the catalog again" in (exc.hint or "") and SECRET not in str(exc)
                else:
                    assert rows == [(pid, None)]
        finally:
            alice.close()


def read_once_known(alice: Alice, sql: str, *args: Any) -> list[asyncpg.Record]:
    """`sql`'s rows once the gateway has read the catalog again (a name it did not know asks for that)."""
    for _ in range(NEW_RELATION_TRIES):
        try:
            return alice.fetch(sql, *args)
        except asyncpg.InsufficientPrivilegeError as exc:
            assert "pgguard is reading the catalog again" in (exc.hint or "") and SECRET not in str(exc)
            alice.loop.run_until_complete(asyncio.sleep(0.05))
    pytest.fail("the catalog was not read again")


SWAP = "CREATE OR REPLACE VIEW public.hunt_swap AS SELECT pid, {} AS q FROM pg_catalog.pg_stat_activity"
READ_SWAP = "SELECT pid, q FROM hunt_swap WHERE pid = $1"


def test_a_statement_prepared_before_a_view_was_redefined_shows_no_text(
        postgres: PostgresServer, bob: int, alice: Alice, new_relation: list[str]) -> None:
    """asyncpg prepares every statement and keeps it. The server plans it again on the new definition at its
    next run; pgguard used to keep masking it as the old one (application_name: nothing to hide), even after
    reading the catalog again. Redefined outside the gateway here; read again when a name is unknown."""
    new_relation.extend(["VIEW public.hunt_swap", "VIEW public.hunt_marker"])
    superuser(postgres, SWAP.format("application_name") + f"; GRANT SELECT ON public.hunt_swap TO {data.READER}")
    assert read_once_known(alice, READ_SWAP, bob) == [(bob, "")]
    # With a view the gateway does not know yet, whose first read has it read the catalog again.
    superuser(postgres, SWAP.format("query") + "; CREATE VIEW public.hunt_marker AS SELECT 1 AS one;"
                        f" GRANT SELECT ON public.hunt_marker TO {data.READER}")
    assert read_once_known(alice, "SELECT one FROM hunt_marker") == [(1,)]
    assert alice.fetch(READ_SWAP, bob) == [(bob, None)]


def test_a_view_the_engineer_redefines_shows_no_text_before_or_after_the_catalog_is_read(
        gateway_factory: Callable[..., RunningGateway], new_relation: list[str]) -> None:
    """Until the gateway has read the catalog again after the engineer's DDL, Alice's statements that read a
    relation are refused (new texts) or NULL (prepared ones): never the text."""
    served = gateway_factory(without_approvals)
    new_relation.append("VIEW public.hunt_swap")
    with psycopg.connect(served.dsn("agent"), autocommit=True) as bobs, \
            psycopg.connect(served.dsn("engineer"), autocommit=True) as engineer:
        pid = bobs.execute("SELECT pg_backend_pid()").fetchone()[0]
        bobs.execute(BOBS_QUERY)
        engineer.execute(SWAP.format("application_name"))
        alice = Alice(served.dsn("analyst"))
        try:
            assert read_once_known(alice, READ_SWAP, pid) == [(pid, "")]  # prepared, and kept by asyncpg
            engineer.execute(SWAP.format("query"))
            for sql in (READ_SWAP, READ_SWAP + " AND true"):
                try:
                    rows = alice.fetch(sql, pid)
                except asyncpg.InsufficientPrivilegeError as exc:
                    assert "DDL ran since pgguard read the catalog" in exc.message and SECRET not in str(exc)
                else:
                    assert SECRET not in repr(rows) and rows[0]["q"] is None
            assert read_once_known(alice, READ_SWAP + " AND 1 = 1", pid) == [(pid, None)]
            assert alice.fetch(READ_SWAP, pid) == [(pid, None)]
        finally:
            alice.close()


def test_a_misspelt_relation_is_refused_to_analysts_and_names_the_relation(alice: Alice) -> None:
    error = alice.refused("SELECT * FROM custmers")
    assert error.message.startswith("pgguard: statement refused: relation custmers is unknown to pgguard")


def test_sequences_are_known_relations(gateway: RunningGateway) -> None:
    """Not refused as unknown: PostgreSQL answers (the analysts' login may not read it)."""
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for sequence"):
            conn.execute("SELECT last_value FROM customers_id_seq")


# --- temporary views, which PostgreSQL finds first ---------------------------------------------------------


@pytest.fixture
def engineer(gateway_factory: Callable[..., RunningGateway]) -> Iterator[psycopg.Connection[Any]]:
    served = gateway_factory(without_approvals)
    with psycopg.connect(served.dsn("engineer"), autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize("sql", [
    "CREATE TEMP VIEW customers AS SELECT id, ssn AS city FROM public.customers",
    "CREATE VIEW pg_temp.customers AS SELECT id, ssn AS city FROM public.customers",
    "CREATE OR REPLACE TEMPORARY VIEW customers (id, city) AS SELECT id, ssn FROM public.customers",
    "CREATE TEMP RECURSIVE VIEW customers (city) AS SELECT ssn FROM public.customers",
    "CREATE TEMP VIEW orders AS SELECT id, pg_catalog.concat(ssn) AS status FROM public.customers",
    "CREATE TEMP VIEW hunt_texts AS SELECT pid, query FROM pg_catalog.pg_stat_activity",
    'CREATE TEMP TABLE customers (id int, city text);'
    ' CREATE RULE "_RETURN" AS ON SELECT TO customers DO INSTEAD SELECT id, ssn AS city FROM public.customers',
])
def test_a_temporary_view_cannot_shadow_a_table_to_unmask_it(engineer: psycopg.Connection[Any], sql: str) -> None:
    """`SELECT city FROM customers` reads pg_temp.customers first: had the view been made, pgguard would have
    masked public.customers.city (nothing) and sent the SSNs."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="new table"):
        engineer.execute(sql)
    cities = [city for city, in engineer.execute("SELECT city FROM customers ORDER BY id LIMIT 3")]
    assert len(cities) == 3 and not any(city[:3].isdigit() for city in cities)


def test_a_temporary_view_of_visible_columns_works(engineer: psycopg.Connection[Any]) -> None:
    engineer.execute("CREATE TEMP VIEW hunt_names AS SELECT id, full_name FROM public.customers")
    assert engineer.execute("SELECT count(*) FROM hunt_names").fetchone()[0] >= 1000


def test_an_engineers_temporary_tables_do_not_hold_up_the_analysts(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    """DDL through the gateway puts the catalog snapshot behind, and analysts' reads are refused until it is
    read again; a temporary table is its session's own, so an ORM making them must not cost analysts that."""
    served = gateway_factory(without_approvals)
    with psycopg.connect(served.dsn("engineer"), autocommit=True) as engineer, \
            psycopg.connect(served.dsn("analyst"), autocommit=True) as analyst:
        known_to(served.dsn("analyst"), "public.orders")  # no earlier DDL's snapshot left behind
        count = analyst.execute("SELECT count(*) FROM orders").fetchone()
        for made in ("CREATE TEMP TABLE hunt_scratch (a int)", "SELECT 1 AS a INTO TEMP hunt_into",
                     "CREATE TEMP TABLE hunt_as AS SELECT 1 AS a", "CREATE TEMP SEQUENCE hunt_seq"):
            engineer.execute(made)
            assert analyst.execute("SELECT count(*) FROM orders").fetchone() == count, made


# --- the search path read at login --------------------------------------------------------------------------


def test_a_default_path_with_an_empty_name_is_read_as_the_server_reads_it(
        shadow: list[str], gateway_factory: Callable[..., RunningGateway],  # noqa: F811
        postgres: PostgresServer) -> None:
    """`SET search_path = '', x` is PostgreSQL's `"", x`. Read as no path at all, `cat_report` resolved
    nowhere: the role's read patterns, which do not name cat_shadow, were never checked against it."""
    superuser(postgres, f"ALTER ROLE {LOGIN} SET search_path = '', cat_shadow, public")
    try:
        served = gateway_factory(analysts_on('["public.*"]'))
        with psycopg.connect(served.dsn("analyst")) as conn:
            assert conn.execute("SHOW search_path").fetchone() == ('"", cat_shadow, public',)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not read cat_shadow.cat_report"):
                conn.execute(REPORT)
    finally:
        superuser(postgres, f"ALTER ROLE {LOGIN} SET search_path = cat_shadow, public")


@pytest.fixture
def accented(postgres: PostgresServer) -> Iterator[list[str]]:
    """Schema "Ã©" (whose name's LATIN1 bytes are `é` in UTF-8) with a `customers` whose full_name is the SSN;
    the raw SSNs, by id."""
    superuser(postgres, f"""
        CREATE SCHEMA "Ã©"; CREATE VIEW "Ã©".customers AS SELECT id, ssn AS full_name FROM public.customers;
        GRANT USAGE ON SCHEMA "Ã©" TO {data.READER}; GRANT SELECT ON "Ã©".customers TO {data.READER};
    """)
    try:
        with psycopg.connect(postgres.dsn(sslmode="verify-full")) as conn:
            yield [ssn for ssn, in conn.execute("SELECT ssn FROM customers WHERE id <= 3 ORDER BY id")]
    finally:
        superuser(postgres, 'DROP VIEW "Ã©".customers; DROP SCHEMA "Ã©"')


def test_the_path_is_read_whatever_the_client_encoding(
        accented: list[str], gateway_factory: Callable[..., RunningGateway]) -> None:
    """In LATIN1, `SHOW search_path` answers `"Ã©", public` in bytes that read as `"é", public` in UTF-8:
    pgguard resolved `customers` to public.customers (é has none) and masked its full_name (nothing),
    while PostgreSQL read "Ã©".customers: the SSNs came back raw. Read right, the name is in two schemas of
    the path, one with masked columns: refused, as on any client encoding."""
    served = gateway_factory(lambda text: text.replace('read = ["public.*"]', 'read = ["public.*", "*.customers"]', 1))
    for encoding in ("LATIN1", "UTF8"):
        dsn = served.dsn("analyst", options='-c search_path="Ã©",public', client_encoding=encoding)
        with psycopg.connect(dsn) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot tell which") as caught:
                conn.execute("SELECT full_name FROM customers WHERE id <= 3 ORDER BY id")
            assert not any(ssn in str(caught.value) for ssn in accented)


def test_an_empty_name_in_a_set_search_path_is_taken(alice: Alice) -> None:
    """As PostgreSQL takes it (pg_dump's `set_config('search_path', '', false)` is the empty path itself)."""
    alice.fetch("SET search_path = '', public")
    assert alice.fetch("SHOW search_path") == [('"", public',)]
    assert alice.fetch("SELECT ssn FROM customers WHERE id = 1") == [("[redacted]",)]


# --- routes that held --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "TABLE pg_stat_activity",
    "SELECT (a).* FROM pg_stat_activity a",
    "SELECT (a).query FROM pg_stat_activity a",
    "SELECT pid, query FROM U&\"pg_stat_activit\\0079\"",
    "WITH RECURSIVE r AS (SELECT pid, query FROM pg_stat_activity) SELECT * FROM r",
    "SELECT l.pid, x.query FROM pg_locks l, LATERAL (SELECT query FROM pg_stat_activity s WHERE s.pid = l.pid) x",
    "SELECT pid, md5(query), lower(query), concat('>', query), concat_ws(',', 'a', query) FROM pg_stat_activity",
    "SELECT string_agg(query, ',') FROM pg_stat_activity",
    "SELECT pid, query_id FROM pg_stat_activity",
    "SELECT pid, query FROM pg_stat_activity WHERE state = 'idle'",
    "SELECT pg_stat_activity FROM pg_stat_activity",
    "SELECT (pg_stat_activity).query FROM pg_stat_activity",
    "SELECT * FROM (SELECT * FROM pg_stat_activity) s (a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, t, query)",
    "SELECT query FROM pg_stat_activity LIMIT 1 OFFSET 2",
])
def test_reads_of_the_text_come_back_null(bob: int, alice: Alice, sql: str) -> None:
    rows = alice.fetch(sql)
    assert rows and SECRET not in repr(rows)
    assert all(value is None for row in rows for name, value in row.items()
               if name in ("query", "md5", "lower", "concat", "concat_ws", "string_agg"))


@pytest.mark.parametrize("sql", [
    "SELECT jsonb_populate_record(NULL::pg_stat_activity, to_jsonb(a)) FROM pg_stat_activity a",
    "SELECT query::int FROM pg_stat_activity",
    "SELECT format('%s', a) FROM pg_stat_activity a",
    "SELECT array_agg(query) FROM pg_stat_activity",
    "SELECT xmlagg(xmlelement(name x, query)) FROM pg_stat_activity",
    "SELECT query_to_xml('SELECT query FROM pg_stat_activity', true, true, '')",
    "SELECT query FROM pg_stat_activity UNION SELECT 'x'",
    "SELECT count(DISTINCT query) FROM pg_stat_activity",
    "SELECT pid, query IS NULL FROM pg_stat_activity",
    "SELECT pid, coalesce(query, '') FROM pg_stat_activity",
    "SELECT md5(a::text) FROM pg_stat_activity a",
    "SELECT * FROM ROWS FROM (pg_stat_get_activity(NULL)) x",
    "SELECT * FROM PG_CATALOG.\"pg_stat_get_activity\"(NULL)",
    "SELECT * FROM U&\"pg_stat_get_activit\\0079\"(NULL)",
    "SELECT pg_stat_get_backend_activity(b) FROM unnest(ARRAY[1, 2, 3]) b",
    "SELECT (1).pg_stat_get_backend_activity",
    "SELECT pid FROM pg_stat_activity WHERE query LIKE '%Hesper%'",
    "SELECT pid FROM pg_stat_activity NATURAL JOIN (SELECT 'x'::text AS query) s",
    "SELECT pid FROM pg_stat_activity a ORDER BY a",
    "SELECT DISTINCT ON (query) pid FROM pg_stat_activity",
    "SELECT pid, rank() OVER (ORDER BY query) FROM pg_stat_activity",
    "SELECT max(query) FROM pg_stat_activity",
    "SELECT pid FROM pg_stat_activity WHERE (pg_stat_activity.*) IS NOT NULL",
    "SELECT set_config('application_name', query, false) FROM pg_stat_activity",
    "SET ROLE pgguard_reader",
])
def test_other_uses_of_the_text_are_refused(bob: int, alice: Alice, sql: str) -> None:
    alice.refused(sql)


def test_copy_explain_and_a_server_side_cursor_show_no_text(gateway: RunningGateway, bob: int) -> None:
    out = psql(gateway.dsn("analyst"), "COPY (SELECT * FROM pg_stat_activity) TO STDOUT",
               "EXPLAIN (VERBOSE) SELECT query FROM pg_stat_activity")
    assert "pg_stat_get_activity" in out and SECRET not in out
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with conn.cursor(name="hunt") as cursor:
            cursor.execute("SELECT pid, query FROM pg_stat_activity WHERE pid = %s", (bob,))
            assert cursor.fetchall() == [(bob, None)]


@pytest.mark.parametrize("sql", [
    "INSERT INTO tickets (customer_id, subject, body, status) SELECT 1, query, 'x', 'open' FROM pg_stat_activity",
    "UPDATE tickets SET subject = (SELECT query FROM pg_stat_activity LIMIT 1) WHERE id = 1",
    "CREATE TEMP TABLE hunt_copied AS SELECT query FROM pg_stat_activity",
])
def test_the_text_is_not_written_where_it_could_be_read_back(engineer: psycopg.Connection[Any], sql: str) -> None:
    """The engineers, who may write, share a login too."""
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_stat_activity.query"):
        engineer.execute(sql)
