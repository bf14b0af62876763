"""No false positives: what analysts and their tools really send is allowed, and answers as directly.

Every read runs as the demo's analyst through the gateway and, for
comparison, straight to PostgreSQL as the analyst's own upstream login
(same privileges, same read-only default). Only columns no masking rule
covers are selected, so the comparison means the same once masking lands.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import pytest
import sqlalchemy
from helpers import known_to, psql
from psycopg.pq import TransactionStatus

from pgguard.demo import data

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

VIEW = "policy_reads_paid"

ANALYTICAL_READS = [
    "SELECT count(*) FROM orders",
    "SELECT * FROM orders WHERE id <= 20 ORDER BY id",
    "TABLE orders ORDER BY id LIMIT 5",
    "SELECT status, count(*), sum(total), min(created_at), max(created_at) FROM orders GROUP BY status ORDER BY status",
    "SELECT c.city, count(o.id), round(avg(o.total), 2) FROM customers c JOIN orders o ON o.customer_id = c.id"
    " GROUP BY c.city ORDER BY c.city",
    "SELECT c.id, count(t.id) AS tickets FROM customers c LEFT JOIN tickets t ON t.customer_id = c.id"
    " GROUP BY c.id ORDER BY tickets DESC, c.id LIMIT 10",
    "SELECT o.id, t.id FROM orders o FULL JOIN tickets t ON t.id = o.id WHERE o.id IS NULL OR t.id IS NULL"
    " ORDER BY 1, 2 LIMIT 10",
    "SELECT id, total, rank() OVER (PARTITION BY status ORDER BY total DESC, id) FROM orders ORDER BY id LIMIT 50",
    "SELECT id, sum(total) OVER (ORDER BY created_at, id ROWS UNBOUNDED PRECEDING) FROM orders ORDER BY id LIMIT 30",
    "SELECT id, lag(total) OVER w, lead(total) OVER w FROM orders WINDOW w AS (ORDER BY id) ORDER BY id LIMIT 30",
    "SELECT ntile(4) OVER (ORDER BY total, id), percent_rank() OVER (ORDER BY total, id) FROM orders"
    " ORDER BY 1, 2 LIMIT 30",
    "WITH big AS (SELECT * FROM orders WHERE total > 1000) SELECT status, count(*) FROM big GROUP BY status ORDER BY 1",
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10) SELECT sum(i) FROM n",
    "WITH RECURSIVE months(m) AS (SELECT date '2023-01-01' UNION ALL SELECT (m + interval '1 month')::date"
    " FROM months WHERE m < date '2023-12-01') SELECT m, (SELECT count(*) FROM orders"
    " WHERE date_trunc('month', created_at AT TIME ZONE 'UTC') = m) FROM months ORDER BY m",
    "SELECT c.id, l.total FROM customers c CROSS JOIN LATERAL (SELECT total FROM orders o"
    " WHERE o.customer_id = c.id ORDER BY total DESC LIMIT 1) l ORDER BY c.id LIMIT 20",
    "SELECT status, date_part('year', created_at AT TIME ZONE 'UTC') AS y, count(*) FROM orders"
    " GROUP BY GROUPING SETS ((status), (y), ()) ORDER BY 1 NULLS FIRST, 2 NULLS FIRST",
    "SELECT status, city, count(*) FROM orders JOIN customers ON customers.id = orders.customer_id"
    " GROUP BY ROLLUP (status, city) ORDER BY 1 NULLS LAST, 2 NULLS LAST",
    "SELECT status, count(*) FROM tickets GROUP BY CUBE (status) ORDER BY 1 NULLS LAST",
    "SELECT count(*) FILTER (WHERE status = 'paid'), count(*) FILTER (WHERE total > 500) FROM orders",
    "SELECT DISTINCT ON (customer_id) customer_id, id, total FROM orders ORDER BY customer_id, total DESC, id LIMIT 25",
    "SELECT d::date, count(o.id) FROM generate_series(timestamp '2024-05-01', '2024-05-31', '1 day') d"
    " LEFT JOIN orders o ON (o.created_at AT TIME ZONE 'UTC')::date = d::date GROUP BY d ORDER BY d",
    "SELECT date_trunc('month', created_at AT TIME ZONE 'UTC') AS month, sum(total) FROM orders"
    " GROUP BY 1 ORDER BY 1",
    "SELECT json_agg(json_build_object('id', id, 'total', total, 'status', status) ORDER BY id) FROM orders"
    " WHERE id <= 10",
    "SELECT jsonb_agg(to_jsonb(s) ORDER BY s.status) FROM (SELECT status, count(*) AS n FROM orders"
    " GROUP BY status) s",
    "SELECT id, (SELECT count(*) FROM tickets t WHERE t.customer_id = c.id) FROM customers c ORDER BY id LIMIT 20",
    "SELECT count(*) FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id"
    " AND o.status = 'refunded') AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.customer_id = c.id)",
    "SELECT count(*) FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE city = 'Oslo')",
    "SELECT city FROM customers WHERE id < 100 UNION SELECT status FROM orders ORDER BY 1",
    "SELECT customer_id FROM orders INTERSECT SELECT customer_id FROM tickets ORDER BY 1 LIMIT 20",
    "SELECT id FROM customers EXCEPT SELECT customer_id FROM orders ORDER BY 1",
    "SELECT id, CASE WHEN total > 1000 THEN 'big' WHEN total > 100 THEN 'medium' ELSE 'small' END,"
    " CASE status WHEN 'paid' THEN 1 ELSE 0 END FROM orders ORDER BY id LIMIT 30",
    "SELECT coalesce(nullif(status, 'paid'), 'was paid'), count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT upper(city), lower(city), length(city), substr(city, 1, 3), initcap(lower(city)),"
    " concat_ws('/', city, 'x'), replace(city, 'o', '0'), left(city, 2), reverse(city)"
    " FROM customers ORDER BY id LIMIT 20",
    "SELECT string_agg(DISTINCT city, ', ' ORDER BY city) FROM customers",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY total), mode() WITHIN GROUP (ORDER BY status)"
    " FROM orders",
    "SELECT customer_id, array_agg(id ORDER BY id) FROM orders WHERE customer_id < 10 GROUP BY 1 ORDER BY 1",
    "SELECT extract(dow FROM created_at AT TIME ZONE 'UTC') AS dow, count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM'), count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT status, count(*) FROM orders GROUP BY status HAVING count(*) > 100 ORDER BY 2 DESC",
    "SELECT id, total FROM orders ORDER BY total DESC NULLS LAST, id LIMIT 10 OFFSET 5",
    "SELECT id, total FROM orders ORDER BY total DESC FETCH FIRST 3 ROWS WITH TIES",
    "SELECT v.label, count(o.id) FROM (VALUES ('paid'), ('shipped')) AS v(label)"
    " LEFT JOIN orders o ON o.status = v.label GROUP BY v.label ORDER BY 1",
    "SELECT subject, count(*) FROM tickets WHERE subject ~ '^(Card|Cannot)' GROUP BY 1 ORDER BY 1",
    "SELECT width_bucket(total, 0, 5000, 10), count(*) FROM orders GROUP BY 1 ORDER BY 1",
    "SELECT count(*) FROM orders WHERE created_at BETWEEN '2023-01-01' AND '2023-06-30'",
    "SELECT count(*) FROM customers WHERE city LIKE 'M%' OR city ILIKE '%on%'",
    "SELECT count(*) FROM orders WHERE status IS DISTINCT FROM 'paid' AND (customer_id, id) > (100, 0)",
    "SELECT status, count(*) FILTER (WHERE total > 100) * 100.0 / count(*) FROM orders GROUP BY 1 ORDER BY 1",
    f"SELECT * FROM {VIEW} ORDER BY id LIMIT 10",
    "SELECT greatest(1, 2), least('a', 'b'), abs(-1), round(2.5), pi() > 3, md5('x'), 1 = ANY (ARRAY[1, 2])",
    "SELECT o.total, (o).status FROM orders o WHERE o.id = 1",
    "SELECT '2024-01-01'::date + 1, CAST('5' AS int) * 2, 'x'::text || 'y', '{1,2}'::int[]",
    "EXPLAIN SELECT status, count(*) FROM orders GROUP BY status",
    "EXPLAIN (FORMAT JSON, COSTS OFF) SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id",
    "EXPLAIN (ANALYZE false) SELECT 1",
    "SHOW search_path",
    "SELECT current_user, session_user, current_database(), current_schema(), version() IS NOT NULL",
]

CATALOG_READS = [
    "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns"
    " WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY ordinal_position",
    "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    "SELECT table_name, column_name, privilege_type FROM information_schema.column_privileges"
    " WHERE table_schema = 'public' AND table_name = 'orders' ORDER BY 2, 3",
    "SELECT routine_name, data_type FROM information_schema.routines WHERE routine_schema = 'pg_catalog'"
    " AND routine_name LIKE 'pg_get_%' ORDER BY 1, 2 LIMIT 20",
    "SELECT table_name, view_definition IS NOT NULL FROM information_schema.views WHERE table_schema = 'public'",
    "SELECT schema_name FROM information_schema.schemata ORDER BY 1",
    "SELECT grantee, privilege_type FROM information_schema.role_table_grants WHERE table_name = 'orders'"
    " ORDER BY 1, 2",
    "SELECT c.relname, a.attnum, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull"
    " FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid"
    " WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind = 'r' ORDER BY 1, 2",
    f"SELECT pg_get_viewdef('public.{VIEW}'::regclass, true)",
    "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1",
    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
    " WHERE connamespace = 'public'::regnamespace ORDER BY 1",
    "SELECT has_table_privilege('orders', 'SELECT'), has_table_privilege('orders', 'DELETE'),"
    " has_schema_privilege('public', 'USAGE'), has_database_privilege(current_database(), 'CONNECT')",
    "SELECT rolname, rolsuper, rolcanlogin FROM pg_roles WHERE rolname LIKE 'pgguard%' ORDER BY 1",
    "SELECT datname FROM pg_database WHERE datname = current_database()",
    "SELECT typname, typtype FROM pg_type WHERE typnamespace = 'public'::regnamespace ORDER BY 1",
    "SELECT to_regclass('public.orders') IS NOT NULL, 'orders'::regclass::text, pg_table_is_visible('orders'::regclass)",
    "SELECT obj_description('public.orders'::regclass, 'pg_class'), col_description('public.orders'::regclass, 1)",
    "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections', 'server_version_num',"
    " 'default_transaction_read_only', 'standard_conforming_strings') ORDER BY 1",
    "SELECT pg_catalog.pg_get_userbyid(c.relowner), c.relkind, c.reltuples >= 0 FROM pg_catalog.pg_class c"
    " WHERE c.oid = 'public.orders'::regclass",
    "SELECT p.proname FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'pg_catalog' AND p.proname LIKE 'pg_get_%' ORDER BY 1 LIMIT 10",
    "SELECT pg_size_pretty(pg_total_relation_size('orders')) IS NOT NULL, pg_relation_size('orders') > 0",
    "SELECT count(*) > 0 FROM pg_catalog.pg_stat_activity",
    "SELECT e.extname FROM pg_extension e ORDER BY 1",
]

HARMLESS_SETTINGS = [
    "SET statement_timeout = '5s'",
    "SET statement_timeout TO 0",
    "SET lock_timeout = 1000",
    "SET idle_in_transaction_session_timeout = '1min'",
    "SET application_name = 'policy-reads'",
    "SET application_name TO DEFAULT",
    "SET TIME ZONE 'UTC'",
    "SET timezone = 'Europe/Paris'",
    "SET search_path = public",
    "SET search_path TO DEFAULT",
    "SET search_path = \"$user\", public",
    "SET datestyle = 'ISO, DMY'",
    "SET intervalstyle = 'iso_8601'",
    "SET extra_float_digits = 3",
    "SET client_min_messages = warning",
    "SET work_mem = '8MB'",
    "SET jit = off",
    "SET default_transaction_read_only = on",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SET standard_conforming_strings = on",
    "SET client_encoding = 'UTF8'",
    "SELECT set_config('application_name', 'via set_config', false)",
    "SELECT set_config('statement_timeout', '10s', true)",
    "SELECT current_setting('search_path'), current_setting('statement_timeout')",
    "SHOW statement_timeout",
    "SHOW ALL",
    "RESET statement_timeout",
    "RESET ALL",
    "DISCARD ALL",
    "DISCARD PLANS",
    "LISTEN policy_reads",
    "UNLISTEN *",
    "DEALLOCATE ALL",
]


@pytest.fixture(scope="module")
def direct(postgres: PostgresServer) -> Iterator[str]:
    """Straight to PostgreSQL as the analyst's upstream login; the view the reads use exists while they run."""
    superuser = postgres.dsn(sslmode="verify-full")
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(f"CREATE VIEW public.{VIEW} AS SELECT id, total, created_at FROM public.orders"
                     " WHERE status = 'paid'")
        conn.execute(f"GRANT SELECT ON public.{VIEW} TO {data.READER}")
    yield postgres.dsn(user=data.READER, sslmode="verify-full")
    with psycopg.connect(superuser, autocommit=True) as conn:
        conn.execute(f"DROP VIEW public.{VIEW}")


@pytest.fixture(scope="module")
def through(gateway: RunningGateway, direct: str) -> Iterator[psycopg.Connection[Any]]:
    known_to(gateway.dsn("analyst"), VIEW)
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def straight(direct: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(direct, autocommit=True) as conn:
        yield conn


def rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql).fetchall()


def test_there_are_enough_reads() -> None:
    assert len(ANALYTICAL_READS) >= 40 and len(set(ANALYTICAL_READS)) == len(ANALYTICAL_READS)


@pytest.mark.parametrize("sql", ANALYTICAL_READS)
def test_analytical_read(through: psycopg.Connection[Any], straight: psycopg.Connection[Any], sql: str) -> None:
    result = rows(through, sql)
    assert result == rows(straight, sql)
    assert result, "the comparison means nothing without rows"


@pytest.mark.parametrize("sql", ANALYTICAL_READS[::4])
def test_analytical_read_simple_protocol(gateway: RunningGateway, straight: psycopg.Connection[Any],
                                         simple: psycopg.Connection[Any], sql: str) -> None:
    assert rows(simple, sql) == rows(straight, sql)


@pytest.fixture(scope="module")
def simple(gateway: RunningGateway, direct: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        yield conn


@pytest.mark.parametrize("sql", CATALOG_READS)
def test_catalog_read(through: psycopg.Connection[Any], straight: psycopg.Connection[Any], sql: str) -> None:
    result = rows(through, sql)
    assert result == rows(straight, sql)
    assert result


@pytest.mark.parametrize("sql", HARMLESS_SETTINGS)
def test_harmless_session_setting(gateway: RunningGateway, sql: str) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute(sql)
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (6000,)
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


def test_settings_take_effect(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute("SET statement_timeout = '7s'")
        conn.execute("SET application_name = 'policy-reads'")
        conn.execute("SET TIME ZONE 'Asia/Tokyo'")
        assert conn.execute("SELECT current_setting('statement_timeout'), current_setting('application_name'),"
                            " current_setting('TimeZone')").fetchone() == ("7s", "policy-reads", "Asia/Tokyo")
        conn.execute("RESET ALL")
        assert conn.execute("SHOW statement_timeout").fetchone() == ("0",)


def test_cursor_in_a_read_only_transaction(through: psycopg.Connection[Any],
                                           straight: psycopg.Connection[Any]) -> None:
    script = ["BEGIN READ ONLY", "DECLARE c SCROLL CURSOR FOR SELECT id, total FROM orders ORDER BY id",
              "FETCH 10 FROM c", "MOVE 5 IN c", "FETCH NEXT FROM c", "FETCH PRIOR FROM c", "CLOSE c", "COMMIT"]

    def run(conn: psycopg.Connection[Any]) -> list[Any]:
        out = []
        for sql in script:
            cur = conn.execute(sql)
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
        return out

    result = run(through)
    assert result == run(straight)
    assert len(result[2]) == 10 and result[4] == [(16, result[4][0][1])]
    assert through.info.transaction_status == TransactionStatus.IDLE


def test_savepoints_and_server_side_cursors(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst")) as conn:  # psycopg opens the transaction
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        conn.execute("SAVEPOINT a")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        conn.execute("ROLLBACK TO SAVEPOINT a")
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (6000,)
        conn.execute("RELEASE SAVEPOINT a")
        with conn.cursor(name="policy_reads_cursor") as cur:  # DECLARE … CURSOR, FETCH FORWARD n
            cur.itersize = 100
            cur.execute("SELECT id FROM orders ORDER BY id")
            assert sum(1 for _ in cur) == 6000
        conn.commit()
        with conn.transaction():
            assert conn.execute("SELECT count(*) FROM tickets").fetchone()[0] > 0


def test_prepared_reads(through: psycopg.Connection[Any]) -> None:
    for customer in (1, 2, 3, 4, 5, 6):  # psycopg prepares the statement after a few runs
        count = through.execute("SELECT count(*) FROM orders WHERE customer_id = %s", (customer,)).fetchone()
        assert count == through.execute(f"SELECT count(*) FROM orders WHERE customer_id = {customer}").fetchone()
    through.execute("PREPARE policy_reads_p (int) AS SELECT status FROM orders WHERE id = $1")
    assert through.execute("EXECUTE policy_reads_p(1)").fetchone() is not None
    through.execute("DEALLOCATE policy_reads_p")


def test_pipelined_reads(through: psycopg.Connection[Any], straight: psycopg.Connection[Any]) -> None:
    with through.pipeline():
        cursors = [through.execute(sql) for sql in ANALYTICAL_READS[:10]]
    assert [cur.fetchall() for cur in cursors] == [rows(straight, sql) for sql in ANALYTICAL_READS[:10]]


# --- tools -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [r"\d", r"\dt", r"\d+ customers", r"\d orders", r"\df", r"\l", r"\dn", r"\dv",
                                     r"\di", r"\ds", r"\dT", r"\du", r"\dp orders", r"\dx", r"\dconfig statement*"])
def test_psql_meta_command(gateway: RunningGateway, direct: str, command: str) -> None:
    out = psql(gateway.dsn("analyst"), command)
    assert out == psql(direct, command)
    assert out.strip()


def test_psql_shows_the_demo_tables(gateway: RunningGateway) -> None:
    out = psql(gateway.dsn("analyst"), r"\dt", r"\d+ customers")
    for expected in ("customers", "orders", "tickets", "card_number", "customers_pkey"):
        assert expected in out


def _sqlalchemy_url(dsn: str) -> str:
    return "postgresql+psycopg://" + dsn.split("://", 1)[1]


def reflect(dsn: str) -> dict[str, Any]:
    engine = sqlalchemy.create_engine(_sqlalchemy_url(dsn))
    try:
        inspector = sqlalchemy.inspect(engine)
        seen: dict[str, Any] = {
            "schemas": inspector.get_schema_names(),
            "tables": inspector.get_table_names(),
            "views": inspector.get_view_names(),
            "sequences": inspector.get_sequence_names(),
        }
        for table in ("customers", "orders", "tickets"):
            seen[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                            for c in inspector.get_columns(table)],
                "pk": inspector.get_pk_constraint(table),
                "fks": inspector.get_foreign_keys(table),
                "indexes": inspector.get_indexes(table),
                "unique": inspector.get_unique_constraints(table),
                "checks": inspector.get_check_constraints(table),
                "comment": inspector.get_table_comment(table),
            }
        metadata = sqlalchemy.MetaData()
        metadata.reflect(bind=engine, views=True)
        seen["metadata"] = {name: [(c.name, str(c.type), c.primary_key) for c in table.columns]
                            for name, table in sorted(metadata.tables.items())}
        with engine.connect() as conn:
            orders = sqlalchemy.Table("orders", sqlalchemy.MetaData(), autoload_with=conn)
            query = sqlalchemy.select(orders.c.status, sqlalchemy.func.count()).group_by(orders.c.status)
            seen["query"] = sorted(conn.execute(query).all())
        return seen
    finally:
        engine.dispose()


def test_sqlalchemy_reflection(gateway: RunningGateway, direct: str) -> None:
    through_gateway = reflect(gateway.dsn("analyst"))
    assert through_gateway == reflect(direct)
    assert {"customers", "orders", "tickets"} <= set(through_gateway["tables"])
    assert through_gateway["orders"]["fks"][0]["referred_table"] == "customers"


def test_langchain_sql_database(gateway: RunningGateway, direct: str) -> None:
    community = pytest.importorskip("langchain_community.utilities")
    through_db = community.SQLDatabase.from_uri(_sqlalchemy_url(gateway.dsn("analyst")))
    straight_db = community.SQLDatabase.from_uri(_sqlalchemy_url(direct))
    assert through_db.get_usable_table_names() == straight_db.get_usable_table_names()
    assert through_db.get_table_info(["orders"]) == straight_db.get_table_info(["orders"])


def asyncpg_session(dsn: str) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            seen: dict[str, Any] = {}
            # A composite type makes asyncpg introspect the catalog (and set_config('jit', …) around it).
            seen["rows"] = [tuple(r["o"].values()) for r in await conn.fetch("SELECT o FROM orders o ORDER BY id LIMIT 5")]
            seen["settings"] = conn.get_settings().server_version
            statement = await conn.prepare("SELECT status, count(*) FROM orders WHERE total > $1 GROUP BY 1 ORDER BY 1")
            seen["prepared"] = [tuple(r) for r in await statement.fetch(100)]
            async with conn.transaction(readonly=True):
                seen["cursor"] = [r["id"] async for r in conn.cursor("SELECT id FROM orders ORDER BY id", prefetch=50)][:120]
            seen["jit"] = await conn.fetchval("SELECT current_setting('jit')")
            sink = _Sink()
            status = await conn.copy_from_query("SELECT id, status FROM orders WHERE id <= 10 ORDER BY id",
                                                output=sink)
            seen["copy"] = (status, sink.data)
            return seen
        finally:
            await conn.close()

    return asyncio.run(main())


class _Sink:
    def __init__(self) -> None:
        self.data = b""

    async def __call__(self, chunk: bytes) -> None:
        self.data += chunk


def test_asyncpg_connect_introspection_and_cursors(gateway: RunningGateway, direct: str) -> None:
    through_gateway = asyncpg_session(gateway.dsn("analyst"))
    assert through_gateway == asyncpg_session(direct)
    assert len(through_gateway["rows"]) == 5 and len(through_gateway["cursor"]) == 120
