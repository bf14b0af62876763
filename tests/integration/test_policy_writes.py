"""The demo's analyst tries to change the database every way we know, through the real gateway.

Every attempt must be refused by the gateway itself: SQLSTATE 42501 with a
message starting `pgguard:` (PostgreSQL's own permission errors share the
SQLSTATE, not the prefix), the connection stays usable, and at the end the
database, read directly as superuser, is exactly as it was.

The objects an owner might have created (functions, a procedure, an
operator, a cast and a domain that write, a materialized view, schemas the
analyst may not read) are created directly as superuser before this
module's own gateway starts, so the gateway's catalog snapshot knows them.
The analyst's upstream login is granted SELECT on them, so it is pgguard,
not PostgreSQL, that stands in the way.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import psycopg.errors
import pytest
from psycopg.pq import TransactionStatus

from conftest import start_gateway, stop_gateway
from helpers import fetch_all, fetch_value, pipeline_transcript, scratch_table
from rawclient import Refused, login_as
from pgguard.wire import backend, frontend
from pgguard.wire.codec import message

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

VICTIM = "policy_victim"

OWNER_OBJECTS = f"""
CREATE TABLE public.{VICTIM} AS SELECT * FROM public.orders WHERE id <= 50;
ALTER TABLE public.{VICTIM} ADD PRIMARY KEY (id);
CREATE FUNCTION public.policy_wipe_sql() RETURNS int LANGUAGE sql
  AS $$ DELETE FROM public.{VICTIM} WHERE id = 1 RETURNING 1 $$;
CREATE FUNCTION public.policy_wipe_definer() RETURNS SETOF int LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN DELETE FROM public.{VICTIM} WHERE id = 2; RETURN NEXT 1; END $$;
CREATE PROCEDURE public.policy_wipe_proc() LANGUAGE sql AS $$ DELETE FROM public.{VICTIM} WHERE id = 3 $$;
CREATE FUNCTION public.policy_wipe_op(int, int) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN DELETE FROM public.{VICTIM} WHERE id = $1; RETURN true; END $$;
CREATE OPERATOR public.<<<>>> (LEFTARG = int, RIGHTARG = int, FUNCTION = public.policy_wipe_op);
CREATE FUNCTION public.policy_wipe_row(public.orders) RETURNS int LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN DELETE FROM public.{VICTIM} WHERE id = $1.id; RETURN 1; END $$;
CREATE TYPE public.policy_boom AS (x int);
CREATE FUNCTION public.policy_to_boom(int) RETURNS public.policy_boom LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN DELETE FROM public.{VICTIM} WHERE id = $1; RETURN ROW($1); END $$;
CREATE CAST (int AS public.policy_boom) WITH FUNCTION public.policy_to_boom(int);
CREATE FUNCTION public.policy_chk(int) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN DELETE FROM public.{VICTIM} WHERE id = $1; RETURN true; END $$;
CREATE DOMAIN public.policy_dom AS int CHECK (public.policy_chk(VALUE));
CREATE MATERIALIZED VIEW public.policy_mv AS SELECT status, count(*) AS n FROM public.orders GROUP BY status;
CREATE SCHEMA policy_hidden;
CREATE TABLE policy_hidden.orders (id int PRIMARY KEY);
CREATE SEQUENCE policy_hidden.policy_secret_seq START 4242;
SELECT nextval('policy_hidden.policy_secret_seq');
CREATE SCHEMA "PolicyHidden";
CREATE TABLE "PolicyHidden".orders (id int PRIMARY KEY);
GRANT SELECT ON public.{VICTIM}, public.policy_mv TO pgguard_reader;
GRANT USAGE ON SCHEMA policy_hidden, "PolicyHidden" TO pgguard_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA policy_hidden, "PolicyHidden" TO pgguard_reader;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA policy_hidden TO pgguard_reader;
GRANT SELECT ON pg_catalog.pg_largeobject TO pgguard_reader;
CREATE TABLE public.policy_parent (id int, note text);
CREATE TABLE policy_hidden.policy_child () INHERITS (public.policy_parent);
INSERT INTO policy_hidden.policy_child VALUES (1, 'out of scope');
GRANT SELECT ON public.policy_parent, policy_hidden.policy_child TO pgguard_reader;
"""

DROP_OWNER_OBJECTS = f"""
REVOKE SELECT ON pg_catalog.pg_largeobject FROM pgguard_reader;
DROP SCHEMA IF EXISTS policy_hidden CASCADE;
DROP TABLE IF EXISTS public.policy_parent;
DROP SCHEMA IF EXISTS "PolicyHidden" CASCADE;
DROP MATERIALIZED VIEW IF EXISTS public.policy_mv;
DROP DOMAIN IF EXISTS public.policy_dom;
DROP FUNCTION IF EXISTS public.policy_chk(int);
DROP CAST IF EXISTS (int AS public.policy_boom);
DROP FUNCTION IF EXISTS public.policy_to_boom(int);
DROP TYPE IF EXISTS public.policy_boom;
DROP FUNCTION IF EXISTS public.policy_wipe_row(public.orders);
DROP OPERATOR IF EXISTS public.<<<>>> (int, int);
DROP FUNCTION IF EXISTS public.policy_wipe_op(int, int);
DROP PROCEDURE IF EXISTS public.policy_wipe_proc();
DROP FUNCTION IF EXISTS public.policy_wipe_definer();
DROP FUNCTION IF EXISTS public.policy_wipe_sql();
DROP TABLE IF EXISTS public.{VICTIM};
"""

# --- the routes ------------------------------------------------------------------------------------------
# Each is one statement, valid in the simple and in the extended protocol.

DML = [
    "DELETE FROM orders WHERE id = 1",
    "INSERT INTO tickets (customer_id, subject, body, status) VALUES (1, 's', 'b', 'open')",
    "INSERT INTO tickets DEFAULT VALUES",
    "UPDATE customers SET city = 'Nowhere' WHERE id = 1",
    "UPDATE orders SET total = 0 FROM customers WHERE customers.id = orders.customer_id RETURNING orders.id",
    "DELETE FROM orders USING customers WHERE customers.id = orders.customer_id AND customers.id = 1",
    "INSERT INTO tickets SELECT * FROM tickets WHERE id = 1 ON CONFLICT DO NOTHING",
    "INSERT INTO tickets SELECT * FROM tickets WHERE id = 1 ON CONFLICT (id) DO UPDATE SET status = 'x'",
    "MERGE INTO orders o USING (SELECT 1 AS id) s ON o.id = s.id WHEN MATCHED THEN DELETE",
    f"MERGE INTO {VICTIM} v USING orders o ON v.id = o.id WHEN MATCHED THEN UPDATE SET total = 0",
]
HIDDEN_IN_QUERIES = [
    "WITH x AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM x",
    "WITH a AS (SELECT 1), b AS (WITH c AS (UPDATE orders SET total = 0 WHERE id = 1 RETURNING 1) "
    "SELECT * FROM c) SELECT * FROM b",
    "WITH x AS MATERIALIZED (INSERT INTO tickets DEFAULT VALUES RETURNING id) SELECT count(*) FROM x",
    "SELECT * FROM (WITH x AS (DELETE FROM tickets WHERE id = 1 RETURNING id) SELECT * FROM x) s",
    "WITH ids AS (SELECT 1 AS id) DELETE FROM orders WHERE id IN (SELECT id FROM ids)",
    "SELECT * INTO policy_new FROM orders",
    "SELECT * INTO TEMP policy_new FROM orders",
    "CREATE TABLE policy_new AS SELECT * FROM orders",
    "CREATE TEMP TABLE policy_new (a int)",
    "CREATE MATERIALIZED VIEW policy_new AS SELECT 1",
    "EXPLAIN ANALYZE DELETE FROM orders WHERE id = 1",
    "EXPLAIN (ANALYZE, FORMAT JSON) UPDATE orders SET total = 0",
    "EXPLAIN (ANALYZE TRUE, VERBOSE) INSERT INTO tickets DEFAULT VALUES",
    "EXPLAIN ANALYZE CREATE TABLE policy_new AS SELECT 1",
    "EXPLAIN ANALYZE EXECUTE policy_never_prepared",
    "DO $$ BEGIN DELETE FROM orders WHERE id = 1; END $$",
    "DO LANGUAGE plpgsql $body$ BEGIN PERFORM 1; END $body$",
    "CALL policy_wipe_proc()",
    "PREPARE policy_p AS DELETE FROM orders WHERE id = $1",
    "EXECUTE policy_p(1)",
]
LOCKS = [
    "SELECT * FROM orders WHERE id = 1 FOR UPDATE",
    "SELECT * FROM orders WHERE id = 1 FOR SHARE",
    "SELECT * FROM orders WHERE id = 1 FOR NO KEY UPDATE",
    "SELECT * FROM orders WHERE id = 1 FOR KEY SHARE",
    "SELECT * FROM orders o WHERE id = 1 FOR UPDATE OF o SKIP LOCKED",
    "SELECT count(*) FROM orders o WHERE EXISTS (SELECT 1 FROM orders WHERE id = 1 FOR UPDATE)",
    "WITH l AS (SELECT id FROM tickets WHERE id = 1 FOR SHARE) SELECT * FROM l",
    "LOCK TABLE orders",
    "LOCK orders IN ROW SHARE MODE",  # IN ACCESS SHARE MODE is a read: what a SELECT takes
]
SEQUENCES = [
    "SELECT nextval('orders_id_seq')",
    "SELECT setval('orders_id_seq', 1)",
    "SELECT pg_catalog.setval('public.orders_id_seq', 1, false)",
    "SELECT nextval('public.orders_id_seq'::regclass)",
    "SELECT nextval('\"orders_id_seq\"')",
]
MAINTENANCE_AND_DDL = [
    "TRUNCATE orders",
    "TRUNCATE TABLE tickets, orders CASCADE",
    "VACUUM orders",
    "VACUUM FULL orders",
    "ANALYZE orders",
    "CLUSTER orders USING orders_pkey",
    "REINDEX TABLE orders",
    "REFRESH MATERIALIZED VIEW policy_mv",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY policy_mv",
    "COMMENT ON TABLE orders IS 'owned'",
    "ALTER TABLE orders ADD COLUMN policy_x int",
    "DROP TABLE tickets",
    "CREATE INDEX ON orders (total)",
    "CREATE EXTENSION IF NOT EXISTS dblink",
]
ROLES_AND_SYSTEM = [
    "GRANT SELECT ON orders TO PUBLIC",
    "REVOKE SELECT ON orders FROM pgguard_support",
    "GRANT pg_write_all_data TO pgguard_reader",
    "CREATE ROLE policy_evil LOGIN SUPERUSER",
    "ALTER ROLE pgguard_reader SET default_transaction_read_only = off",
    "ALTER SYSTEM SET work_mem = '1GB'",
    "CHECKPOINT",
    "PREPARE TRANSACTION 'policy'",
    "LOAD 'auto_explain'",
]
SESSION_SETTINGS = [
    "SET ROLE postgres",
    "SET ROLE pgguard_admin",
    "SET SESSION AUTHORIZATION postgres",
    "SET session_replication_role = replica",
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO false",
    "SET default_transaction_read_only = 'f'",
    "SET default_transaction_read_only = 0",
    "SET transaction_read_only = 'n'",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "START TRANSACTION READ WRITE",
    "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'fal', true)",
    "SET transaction_read_only = DEFAULT",
    "SET LOCAL transaction_read_only TO DEFAULT",
    "RESET transaction_read_only",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT set_config(E'rol\\x65', 'postgres', false)",
    "SELECT set_config('session_authorization', 'postgres', false)",
    "SET standard_conforming_strings = off",
    "SELECT set_config('standard_conforming_strings', 'off', false)",
]
OWNER_CODE = [
    "SELECT policy_wipe_sql()",
    "SELECT public.policy_wipe_sql()",
    "SELECT * FROM policy_wipe_definer()",
    "SELECT * FROM orders WHERE id = 1 AND policy_wipe_sql() = 1",
    "WITH x AS (SELECT policy_wipe_sql()) SELECT * FROM x",
    "SELECT * FROM orders o, LATERAL policy_wipe_definer() w WHERE o.id = 1",
    "SELECT 1 <<<>>> 2",
    "SELECT 1 OPERATOR(public.<<<>>>) 2",
    "SELECT 4 <<<>>> ANY (SELECT 5)",
    "SELECT id FROM orders WHERE id < 3 ORDER BY id USING <<<>>>",
    "SELECT o.policy_wipe_row FROM orders o WHERE o.id = 4",
    "SELECT (o).policy_wipe_row FROM orders o WHERE o.id = 5",
    "SELECT 6::policy_boom",
    "SELECT CAST(7 AS public.policy_boom)",
    "SELECT 8::policy_dom",
    "SELECT policy_boom(9)",
    "COPY (SELECT policy_wipe_sql()) TO STDOUT",
]
# Attribute notation calls PostgreSQL's own functions too: `(x).f` is f(x).
ATTRIBUTE_NOTATION = [
    "SELECT (1::bigint).pg_advisory_lock",
    "SELECT (o.id::bigint).pg_advisory_xact_lock FROM orders o WHERE o.id = 1",
    "SELECT ('orders_id_seq'::regclass).nextval",
    "SELECT (12345::oid).lo_unlink",
    "SELECT ('.'::text).pg_ls_dir",
]
SERVER_ACCESS = [
    "SELECT pg_read_file('postgresql.conf')",
    "SELECT pg_catalog.pg_read_file('postgresql.conf')",
    'SELECT "pg_read_file"(\'postgresql.conf\')',
    "SELECT pg_read_binary_file('postgresql.conf')",
    "SELECT pg_read_file_old('postgresql.conf', 0, 100)",
    "SELECT pg_rotate_logfile_old()",
    "SELECT pg_stop_making_pinned_objects()",
    "SELECT pg_extension_config_dump('orders', '')",
    "SELECT pg_ls_dir('.')",
    "SELECT pg_stat_file('postgresql.conf')",
    "SELECT * FROM pg_show_all_file_settings()",
    "SELECT * FROM pg_catalog.pg_hba_file_rules()",
    "SELECT * FROM pg_file_settings",
    "SELECT * FROM pg_catalog.pg_hba_file_rules",
    "SELECT * FROM pg_ident_file_mappings",
    "SELECT rolpassword FROM pg_authid",
    "SELECT passwd FROM pg_catalog.pg_shadow",
    "SELECT umoptions FROM pg_user_mapping",
    "SELECT subname FROM pg_subscription WHERE subconninfo LIKE '%password=%'",
    "SELECT pg_stat_get_backend_activity(1)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT lo_from_bytea(0, 'x')",
    "SELECT lo_unlink(1)",
    "SELECT dblink('dbname=demo', 'DELETE FROM orders')",
    "SELECT dblink_exec('dbname=demo', 'DELETE FROM orders')",
    "SELECT * FROM dblink('dbname=demo', 'SELECT 1') AS t(a int)",
    "SELECT pg_terminate_backend(pg_backend_pid())",
    "SELECT pg_cancel_backend(1)",
    "SELECT pg_reload_conf()",
    "SELECT pg_advisory_lock(1)",
    "SELECT pg_try_advisory_xact_lock(1)",
    "SELECT query_to_xml('DELETE FROM orders RETURNING 1', true, true, '')",
    "SELECT query_to_xml($q$DELETE FROM orders RETURNING 1$q$, true, true, '')",
    "SELECT table_to_xml('orders', true, true, '')",
    "SELECT ts_stat('DELETE FROM orders RETURNING ''a''::tsvector')",
    "SELECT pg_notify('policy', 'x')",
    "NOTIFY policy",
    "COPY orders FROM STDIN",
    "COPY orders TO '/tmp/policy-orders'",
    "COPY orders FROM '/tmp/policy-orders'",
    "COPY orders FROM PROGRAM 'true'",
    "COPY (SELECT 1) TO PROGRAM 'cat > /tmp/policy-x'",
    "COPY (DELETE FROM orders WHERE id = 1 RETURNING *) TO STDOUT",
]
SPELLINGS = [
    "/* x */ DELETE FROM orders WHERE id = 1",
    "/* nested /* comment */ still */ DELETE FROM orders WHERE id = 1",
    "DELETE -- x\nFROM orders WHERE id = 1",
    "DELETE/**/FROM/**/orders/**/WHERE/**/id=1",
    'DELETE FROM "orders" WHERE id = 1',
    'DELETE FROM U&"\\0063ustomers" WHERE id = 1',
    "DELETE FROM U&\"!0063ustomers\" UESCAPE '!' WHERE id = 1",
    "DELETE FROM public.orders WHERE id = 1",
    'DELETE FROM "public"."orders" WHERE id = 1',
    "DELETE FROM PUBLIC.ORDERS WHERE id = 1",
    "DELETE FROM demo.public.orders WHERE id = 1",
    "dElEtE fRoM orders WHERE id = 1",
    "(SELECT 1 FROM orders FOR UPDATE)",
    # pg_temp is the session's own temporary schema: still a write, for a role that may write nothing.
    "DELETE FROM pg_temp.orders",
    "INSERT INTO pg_temp.tickets DEFAULT VALUES",
    "TRUNCATE pg_temp.orders",
    "LOCK TABLE pg_temp.orders",
    "SELECT * FROM pg_temp.orders FOR UPDATE",
    "SELECT nextval('pg_temp.orders_id_seq')",
]
WRITES = DML + HIDDEN_IN_QUERIES + LOCKS + SEQUENCES + MAINTENANCE_AND_DDL + ROLES_AND_SYSTEM + \
    SESSION_SETTINGS + OWNER_CODE + ATTRIBUTE_NOTATION + SERVER_ACCESS + SPELLINGS

# Only the simple protocol takes several statements in one string.
MULTI_STATEMENT = [
    "SELECT 1; DELETE FROM orders WHERE id = 1",
    "SELECT $x$ ; $x$; DELETE FROM orders WHERE id = 1",
    "SELECT ';'; /* ; */ UPDATE orders SET total = 0 WHERE id = 1 -- ;",
    "SHOW search_path; SET statement_timeout = '5s'; SELECT 1; TRUNCATE orders",
    "SELECT count(*) FROM orders; DELETE FROM orders; SELECT 1",
    "SELECT 1;;;INSERT INTO tickets DEFAULT VALUES",
]

# With parameters: extended protocol, values out of the SQL text.
PARAMETERIZED: list[tuple[str, tuple[Any, ...]]] = [
    ("DELETE FROM orders WHERE id = %s", (1,)),
    ("UPDATE customers SET city = %s WHERE id = %s", ("x", 1)),
    ("INSERT INTO tickets (customer_id, subject, body, status) VALUES (%s, %s, %s, %s)", (1, "s", "b", "open")),
    ("SELECT set_config(%s, %s, false)", ("default_transaction_read_only", "off")),
    ("SELECT set_config('role', %s, false)", ("postgres",)),
    ("SELECT nextval(%s)", ("orders_id_seq",)),
    ("SELECT pg_read_file(%s)", ("postgresql.conf",)),
    ("SELECT * FROM orders WHERE id = %s FOR UPDATE", (1,)),
    ("WITH x AS (DELETE FROM orders WHERE id = %s RETURNING *) SELECT * FROM x", (1,)),
    ("SELECT %s::int <<<>>> %s::int", (1, 2)),
]


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct(postgres: PostgresServer) -> str:
    return postgres.dsn(sslmode="verify-full")


@pytest.fixture(scope="module")
def owner_objects(direct: str) -> Iterator[None]:
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(DROP_OWNER_OBJECTS)
        conn.execute(OWNER_OBJECTS)
    yield
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(DROP_OWNER_OBJECTS)


@pytest.fixture(scope="module")
def gw(owner_objects: None, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
       test_ca: TLSFiles) -> Iterator[RunningGateway]:
    """A gateway of this module's own, started after the owner's objects exist (its catalog knows them)."""
    running = start_gateway(tmp_path_factory.mktemp("policy-writes"), postgres, test_ca)
    yield running
    stop_gateway(running)


def database_state(direct: str) -> dict[str, Any]:
    """Row counts and checksums of every table the analyst could reach, and everything else a write could move."""
    state: dict[str, Any] = {}
    with psycopg.connect(direct, autocommit=True) as conn:
        for table in ("customers", "orders", "tickets", VICTIM, "policy_mv", "policy_hidden.orders"):
            order = "id" if table != "policy_mv" else "status"
            state[table] = conn.execute(
                f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY {order})) FROM {table} t").fetchone()
        for sequence in ("customers_id_seq", "orders_id_seq", "tickets_id_seq"):
            state[sequence] = conn.execute(f"SELECT last_value, is_called FROM public.{sequence}").fetchone()
        # Relations in public with their files (VACUUM FULL, CLUSTER, REINDEX, REFRESH, TRUNCATE
        # give new ones), privileges and comments; temporary relations of any session.
        state["relations"] = conn.execute("""
            SELECT string_agg(format('%s:%s:%s:%s:%s', c.relname, c.relkind, pg_relation_filenode(c.oid),
                                     c.relacl, obj_description(c.oid, 'pg_class')), ',' ORDER BY c.relname)
            FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace OR c.relpersistence = 't'""").fetchone()
        state["roles"] = conn.execute(
            "SELECT string_agg(format('%s:%s:%s', rolname, rolsuper, rolconfig), ',' ORDER BY rolname)"
            " FROM pg_roles").fetchone()
        state["memberships"] = conn.execute("SELECT count(*) FROM pg_auth_members").fetchone()
        state["auto.conf"] = conn.execute(
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'").fetchone()
        state["large objects"] = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        state["prepared transactions"] = conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
        state["extensions"] = conn.execute("SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension"
                                           ).fetchone()
    return state


@pytest.fixture(scope="module")
def before(gw: RunningGateway, direct: str) -> dict[str, Any]:
    return database_state(direct)


@pytest.fixture(scope="module")
def simple(gw: RunningGateway, before: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    """The analyst over the simple query protocol (client-side binding)."""
    with psycopg.connect(gw.dsn("analyst"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        yield conn


@pytest.fixture(scope="module")
def extended(gw: RunningGateway, before: dict[str, Any]) -> Iterator[psycopg.Connection[Any]]:
    """The analyst over the extended protocol (Parse/Bind/Execute)."""
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def asyncpg_session(gw: RunningGateway, before: dict[str, Any]
                    ) -> Iterator[tuple[asyncio.AbstractEventLoop, asyncpg.Connection]]:
    """One asyncpg connection as the analyst, on an event loop of its own (tests here run in trio mode)."""
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(gw.dsn("analyst"), timeout=10))
    yield loop, conn
    loop.run_until_complete(conn.close())
    loop.close()


def assert_gateway_refusal(error: BaseException) -> str:
    """42501 and a message of pgguard's own; returns the message."""
    sqlstate = getattr(error, "sqlstate", None)
    text = error.diag.message_primary if isinstance(error, psycopg.Error) else str(error)
    assert sqlstate == "42501", f"{type(error).__name__} {sqlstate}: {error}"
    assert text is not None and text.startswith("pgguard:"), f"not refused by the gateway: {text}"
    return text


def assert_refused(conn: psycopg.Connection[Any], sql: str, params: Any = None, *,
                   prepare: bool | None = None) -> str:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql, params, prepare=prepare)
    text = assert_gateway_refusal(caught.value)
    # The connection goes on, outside any transaction.
    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert conn.execute("SELECT 1").fetchone() == (1,)
    return text


# --- every route, every protocol -------------------------------------------------------------------------


def test_there_are_enough_routes() -> None:
    assert len(WRITES) >= 80 and len(set(WRITES)) == len(WRITES)


@pytest.mark.parametrize("sql", WRITES)
def test_refused_simple_protocol(simple: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(simple, sql)


@pytest.mark.parametrize("sql", WRITES)
def test_refused_extended_protocol(extended: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(extended, sql)


@pytest.mark.parametrize("sql", WRITES)
def test_refused_named_prepared_statement(extended: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(extended, sql, prepare=True)


@pytest.mark.parametrize("sql", MULTI_STATEMENT)
def test_refused_hidden_in_a_multi_statement_string(simple: psycopg.Connection[Any], sql: str) -> None:
    assert_refused(simple, sql)


@pytest.mark.parametrize(("sql", "params"), PARAMETERIZED)
def test_refused_with_parameters(extended: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> None:
    assert_refused(extended, sql, params)


@pytest.mark.parametrize("sql", WRITES[::3])
@pytest.mark.parametrize("method", ["fetch", "execute"], ids=["asyncpg-extended", "asyncpg-simple"])
def test_refused_asyncpg(asyncpg_session: tuple[asyncio.AbstractEventLoop, asyncpg.Connection], method: str,
                         sql: str) -> None:
    loop, conn = asyncpg_session
    with pytest.raises(asyncpg.PostgresError) as caught:
        loop.run_until_complete(getattr(conn, method)(sql))
    assert_gateway_refusal(caught.value)
    assert loop.run_until_complete(conn.fetchval("SELECT 1")) == 1
    assert not conn.is_in_transaction()


def test_refused_asyncpg_with_arguments_and_copy(
        asyncpg_session: tuple[asyncio.AbstractEventLoop, asyncpg.Connection]) -> None:
    loop, conn = asyncpg_session
    attempts = [
        conn.execute("DELETE FROM orders WHERE id = $1", 1),
        conn.fetch("SELECT set_config($1, 'off', false)", "default_transaction_read_only"),
        conn.copy_records_to_table("tickets", records=[(99999, 1, "s", "b", "open")]),
        conn.executemany("UPDATE orders SET total = $1 WHERE id = $2", [(0, 1), (0, 2)]),
    ]
    for attempt in attempts:
        with pytest.raises(asyncpg.PostgresError) as caught:
            loop.run_until_complete(attempt)
        assert_gateway_refusal(caught.value)
    assert loop.run_until_complete(conn.fetchval("SELECT count(*) FROM orders")) == 6000


def test_copy_from_stdin_is_refused_before_any_row(extended: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.Error) as caught:
        with extended.cursor().copy("COPY tickets (customer_id, subject, body, status) FROM STDIN") as copy:
            copy.write_row((1, "s", "b", "open"))
    assert_gateway_refusal(caught.value)
    assert extended.execute("SELECT 1").fetchone() == (1,)


def test_pipeline_of_refused_statements(extended: psycopg.Connection[Any]) -> None:
    """In a pipeline the refused statement fails and what follows it up to Sync is skipped."""
    with pytest.raises(psycopg.Error) as caught:
        with extended.pipeline() as pipeline:
            first = extended.execute("SELECT 1")
            extended.execute("DELETE FROM orders WHERE id = 1")
            extended.execute("SELECT pg_read_file('postgresql.conf')")
            pipeline.sync()
    assert_gateway_refusal(caught.value)
    assert first.fetchone() == (1,)
    with extended.pipeline():
        after = extended.execute("SELECT count(*) FROM orders")
    assert after.fetchone() == (6000,)


def test_sql_prepare_of_a_write_leaves_nothing_to_execute(simple: psycopg.Connection[Any],
                                                         extended: psycopg.Connection[Any]) -> None:
    for conn in (simple, extended):
        name = f"policy_{uuid.uuid4().hex[:8]}"
        assert_refused(conn, f"PREPARE {name} (int) AS DELETE FROM orders WHERE id = $1")
        assert "did not see prepared" in assert_refused(conn, f"EXECUTE {name}(1)")
        # A read may be prepared and executed.
        conn.execute(f"PREPARE {name}_read (int) AS SELECT status FROM orders WHERE id = $1")
        assert conn.execute(f"EXECUTE {name}_read(1)").fetchone() == \
            conn.execute("SELECT status FROM orders WHERE id = 1").fetchone()
        conn.execute(f"DEALLOCATE {name}_read")


def test_refusal_messages_name_the_statement_the_relation_and_the_rule(simple: psycopg.Connection[Any]) -> None:
    assert assert_refused(simple, "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x") == \
        "pgguard: WITH refused: role analysts may not write (delete) public.orders (rule roles.analysts.write)"
    assert assert_refused(simple, "SELECT 1; TRUNCATE tickets") == \
        "pgguard: TRUNCATE refused: role analysts may not write (truncate) public.tickets" \
        " (rule roles.analysts.write)"
    assert assert_refused(simple, "SELECT policy_wipe_sql()") == \
        "pgguard: SELECT refused: user-defined function public.policy_wipe_sql() is not listed as safe" \
        " (rule roles.analysts.functions)"


# --- search_path ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("setup", "schema"), [
    ("SET search_path = policy_hidden", "policy_hidden"),
    ("SET search_path = policy_hidden, public", "policy_hidden"),
    ("SET search_path TO \"PolicyHidden\"", "PolicyHidden"),
    ("SET search_path = 'PolicyHidden'", "PolicyHidden"),
    ("SELECT set_config('search_path', 'public, \"PolicyHidden\"', false)", "PolicyHidden"),
    ("BEGIN; SET LOCAL search_path = policy_hidden; COMMIT", "policy_hidden"),
    ("BEGIN; SET search_path = policy_hidden; ROLLBACK; SET search_path = policy_hidden", "policy_hidden"),
])
def test_search_path_to_a_schema_the_analyst_may_not_read(gw: RunningGateway, setup: str, schema: str) -> None:
    """The gateway follows the path: unqualified names are checked in every schema it may lead to."""
    with psycopg.connect(gw.dsn("analyst"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (6000,)
        conn.execute(setup)
        for sql in ("SELECT count(*) FROM orders", "DELETE FROM orders", "SELECT * FROM orders FOR UPDATE"):
            message = assert_refused(conn, sql)
            assert f"{schema}.orders" in message
        # Qualified names still work.
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (6000,)


@pytest.mark.parametrize("sql", [
    "SELECT pg_sequence_last_value('policy_hidden.policy_secret_seq')",
    "SELECT pg_catalog.pg_sequence_last_value('\"policy_hidden\".policy_secret_seq'::regclass)",
    "SELECT last_value FROM pg_sequences WHERE schemaname = 'policy_hidden'",
    "SELECT * FROM pg_catalog.pg_sequences",
])
def test_a_sequence_out_of_scope_is_not_read_through_a_function_or_a_view(simple: psycopg.Connection[Any],
                                                                           extended: psycopg.Connection[Any],
                                                                           sql: str) -> None:
    """`SELECT * FROM policy_hidden.policy_secret_seq` is refused; its last value by other ways too."""
    assert_refused(simple, "SELECT last_value FROM policy_hidden.policy_secret_seq")
    for conn in (simple, extended):
        assert_refused(conn, sql)


@pytest.mark.parametrize("sql", ["SELECT data FROM pg_largeobject", "SELECT * FROM pg_catalog.pg_largeobject"])
def test_large_object_contents_are_not_read_through_the_catalog(simple: psycopg.Connection[Any], sql: str) -> None:
    """lo_get() and its kin are denied; the catalog that holds what they read is refused too."""
    assert "may not read pg_catalog.pg_largeobject" in assert_refused(simple, sql)
    assert simple.execute("SELECT count(*) >= 0 FROM pg_largeobject_metadata").fetchone() == (True,)


@pytest.mark.parametrize("sql", ["SELECT * FROM policy_parent", "SELECT note FROM public.policy_parent WHERE id = 1",
                                 "SELECT * FROM ONLY policy_parent"])
def test_a_table_out_of_scope_is_not_read_through_its_parent(simple: psycopg.Connection[Any],
                                                             extended: psycopg.Connection[Any], sql: str) -> None:
    """Rows of policy_hidden.policy_child come back from a read of public.policy_parent; ONLY would not
    return them, but pgguard does not tell (fail closed)."""
    for conn in (simple, extended):
        assert "may not read policy_hidden.policy_child (reached through public.policy_parent)" in \
            assert_refused(conn, sql)


def test_search_path_set_by_an_executed_prepared_statement(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        conn.execute("PREPARE policy_sp AS SELECT set_config('search_path', 'policy_hidden', false)")
        conn.execute("EXECUTE policy_sp")
        assert "policy_hidden.orders" in assert_refused(conn, "SELECT count(*) FROM orders")


@pytest.mark.parametrize("setup", ["SET search_path = policy_hidden",
                                   "SELECT set_config('search_path', 'policy_hidden', false)"])
def test_a_statement_prepared_before_the_search_path_changed_is_decided_again(gw: RunningGateway,
                                                                              setup: str) -> None:
    """The server plans a prepared statement again at a Bind under a changed search_path: the same
    unqualified name may now be a table the analyst may not read, so the Bind is decided again."""
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        sql = "SELECT count(*) FROM orders"
        for _ in range(2):  # prepared at the first, bound again at the second
            assert conn.execute(sql, prepare=True).fetchone() == (6000,)
        conn.execute(setup)
        message = assert_refused(conn, sql, prepare=True)
        assert "policy_hidden.orders" in message
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(sql, prepare=True)
        assert caught.value.diag.message_hint is not None
        assert "search_path or the database's objects changed" in caught.value.diag.message_hint
        assert conn.execute("SELECT count(*) FROM public.orders", prepare=True).fetchone() == (6000,)


def test_a_statement_prepared_before_the_search_path_changed_via_asyncpg(gw: RunningGateway) -> None:
    """asyncpg keeps every statement prepared: its cached one is bound again after the SET."""
    async def run() -> tuple[int, BaseException]:
        conn = await asyncpg.connect(gw.dsn("analyst"))
        try:
            before = await conn.fetchval("SELECT count(*) FROM orders")
            await conn.execute("SET search_path = policy_hidden")
            try:
                await conn.fetchval("SELECT count(*) FROM orders")
            except asyncpg.PostgresError as exc:
                assert await conn.fetchval("SELECT count(*) FROM public.orders") == 6000
                return before, exc
            raise AssertionError("the prepared statement ran under the new search_path")
        finally:
            await conn.close()

    before, refused = asyncio.run(run())
    assert before == 6000
    assert getattr(refused, "sqlstate", None) == "42501"
    assert "policy_hidden.orders" in str(refused) and str(refused).startswith("pgguard:")


def test_a_describe_of_a_statement_prepared_before_the_search_path_changed(gw: RunningGateway) -> None:
    """A Describe makes the server plan the statement again too; it is refused rather than answered."""
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        assert conn.pgconn.prepare(b"policy_described", b"SELECT count(*) FROM orders").status == \
            psycopg.pq.ExecStatus.COMMAND_OK
        conn.execute("SET search_path = policy_hidden")
        result = conn.pgconn.describe_prepared(b"policy_described")
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"42501"
        assert b"policy_hidden.orders" in (result.error_field(psycopg.pq.DiagnosticField.MESSAGE_PRIMARY) or b"")


def test_a_sql_prepared_statement_executed_after_the_search_path_changed(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        conn.execute("PREPARE policy_before AS SELECT count(*) FROM orders")
        assert conn.execute("EXECUTE policy_before").fetchone() == (6000,)
        conn.execute("SET search_path = policy_hidden")
        assert "policy_hidden.orders" in assert_refused(conn, "EXECUTE policy_before")


def test_search_path_from_the_startup_packet(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn("analyst", options="-c search_path=policy_hidden"), autocommit=True) as conn:
        assert "policy_hidden.orders" in assert_refused(conn, "SELECT count(*) FROM orders")
        assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (6000,)


# --- what a refusal does to transactions, batches and the connection --------------------------------------


@pytest.mark.parametrize("client_side", [False, True], ids=["extended", "simple"])
def test_refusal_inside_a_transaction_block_fails_it(gw: RunningGateway, client_side: bool) -> None:
    factory = psycopg.ClientCursor if client_side else psycopg.Cursor
    with psycopg.connect(gw.dsn("analyst"), cursor_factory=factory) as conn:  # not autocommit: BEGIN first
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (6000,)
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("DELETE FROM orders WHERE id = 1")
        assert_gateway_refusal(caught.value)
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.rollback()


def test_refusal_inside_an_explicit_block_in_one_string(simple: psycopg.Connection[Any]) -> None:
    """BEGIN; …; refused: the block is open and failed, as after any error; ROLLBACK recovers it."""
    with pytest.raises(psycopg.Error) as caught:
        simple.execute("BEGIN; SELECT 1; SELECT pg_read_file('x')")
    assert_gateway_refusal(caught.value)
    assert simple.info.transaction_status == TransactionStatus.INERROR
    with pytest.raises(psycopg.errors.InFailedSqlTransaction):
        simple.execute("SELECT 1")
    simple.execute("ROLLBACK")
    assert simple.execute("SELECT 1").fetchone() == (1,)


def multi_statement_transcript(dsn: str, table: str, failing: str) -> list[str]:
    """INSERT then a failing statement in one simple query: what happened, seen from outside."""
    seen = []
    with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        try:
            conn.execute(f"INSERT INTO {table} (label) VALUES ('before'); {failing}; "
                         f"INSERT INTO {table} (label) VALUES ('after')")
            seen.append("no error")
        except psycopg.Error as exc:
            seen.append(exc.sqlstate or "?")
        seen.append(conn.info.transaction_status.name)
        seen.append(repr(conn.execute(f"SELECT count(*) FROM {table}").fetchone()))
        # The INSERT ran (its sequence moved on: sequences do not roll back) and was rolled back.
        seen.append(repr(conn.execute(f"SELECT last_value, is_called FROM {table}_id_seq").fetchone()))
    return seen


def test_refused_statement_in_a_multi_statement_query(gw: RunningGateway, direct: str) -> None:
    with scratch_table(direct, "id serial PRIMARY KEY, label text", "policy_multi") as table:
        through = multi_statement_transcript(gw.dsn("engineer"), table, "SET ROLE postgres")
        assert through == ["42501", "IDLE", "(0,)", "(1, True)"]
    with scratch_table(direct, "id serial PRIMARY KEY, label text", "policy_multi") as table:
        # PostgreSQL's own error in the same place does exactly the same.
        assert multi_statement_transcript(direct, table, "SELECT 1/0") == ["22012", "IDLE", "(0,)", "(1, True)"]


@pytest.mark.parametrize("failing", ["SET ROLE postgres", "SELECT pg_read_file('x')",
                                     "DO $$ BEGIN NULL; END $$"])
def test_refused_statement_in_a_pipeline_skips_the_batch(gw: RunningGateway, direct: str, failing: str) -> None:
    with scratch_table(direct, "id int PRIMARY KEY", "policy_pipe") as table:
        through = pipeline_transcript(gw.dsn("engineer"), table, failing)
        assert through == ["InsufficientPrivilege 42501", "IDLE", "(1,)", "(0,)"]
        assert fetch_value(direct, f"SELECT count(*) FROM {table}") == 0
    with scratch_table(direct, "id int PRIMARY KEY", "policy_pipe") as table:
        assert pipeline_transcript(direct, table, "SELECT 1/0") == ["DivisionByZero 22012", "IDLE", "(1,)", "(0,)"]


def test_refused_parse_in_a_hand_made_batch(gw: RunningGateway, direct: str) -> None:
    """Parse/Bind/Execute ×3 then one Sync, on the wire: everything after the refusal is skipped."""
    with scratch_table(direct, "id int PRIMARY KEY", "policy_batch") as table:
        with login_as(gw, "engineer") as conn:
            insert = f"INSERT INTO {table} (id) VALUES ($1)"
            conn.send(
                frontend.Parse("", insert, []), frontend.Bind("", "", [], [b"1"], []), frontend.Execute("", 0),
                frontend.Parse("", "SET ROLE postgres", []), frontend.Bind("", "", [], [], []),
                frontend.Execute("", 0),
                frontend.Parse("", insert, []), frontend.Bind("", "", [], [b"2"], []), frontend.Execute("", 0),
                frontend.Sync(),
            )
            seen = []
            while not isinstance(seen[-1:] and seen[-1], backend.ReadyForQuery):
                seen.append(conn.receive())
            kinds = [type(m).__name__ for m in seen]
            assert kinds == ["ParseComplete", "BindComplete", "CommandComplete", "ErrorResponse", "ReadyForQuery"]
            error = seen[3]
            assert isinstance(error, backend.ErrorResponse)
            assert error.code == "42501" and error.message.startswith("pgguard: SET refused: setting role")
            assert seen[-1] == backend.ReadyForQuery("I")
            # The connection goes on.
            assert conn.query("SELECT 1")[1] == backend.ReadyForQuery("I")
        assert fetch_value(direct, f"SELECT count(*) FROM {table}") == 0


def test_function_call_message_is_refused(gw: RunningGateway) -> None:
    """The FunctionCall message names a function by OID only: refused to every role that may not run anything."""
    with login_as(gw, "analyst") as conn:
        lo_unlink = 964  # pg_catalog.lo_unlink(oid)
        body = (lo_unlink.to_bytes(4, "big") + (0).to_bytes(2, "big") + (1).to_bytes(2, "big")
                + (4).to_bytes(4, "big") + (12345).to_bytes(4, "big") + (0).to_bytes(2, "big"))
        conn.send(message(b"F", body))
        seen, ready = _until_ready(conn)
        errors = [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert len(errors) == 1 and errors[0].code == "42501" and errors[0].message.startswith("pgguard:")
        assert ready == backend.ReadyForQuery("I")


def _until_ready(conn: Any) -> tuple[list[Any], backend.ReadyForQuery]:
    seen = []
    while True:
        received = conn.receive()
        if isinstance(received, backend.ReadyForQuery):
            return seen, received
        seen.append(received)


# --- what cannot be analysed ---------------------------------------------------------------------------------


def test_a_statement_that_does_not_parse_never_reaches_postgresql(gw: RunningGateway, direct: str,
                                                                  postgres: PostgresServer) -> None:
    marker = f"policy_marker_{uuid.uuid4().hex}"
    with psycopg.connect(gw.dsn("analyst"), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        message = assert_refused(conn, f"SELEC '{marker}' FROM orders")
        assert message.startswith("pgguard: statement refused: the statement does not parse")
        # The last statement the server saw on this connection is the stand-in for the refused one.
        with pytest.raises(psycopg.Error) as caught:
            conn.execute(f"DELETE FROM orders WHERE {marker} = 1 AND")
        assert "does not parse" in assert_gateway_refusal(caught.value)
        seen = fetch_value(direct, "SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
        assert re.fullmatch(r"SELECT 'pgguard-refusal:[0-9a-f]{16}'::pg_catalog\.int4", seen), seen
    assert marker not in postgres.cluster.log_tail(400)


def test_a_statement_in_an_encoding_the_session_does_not_use_is_refused(gw: RunningGateway) -> None:
    with login_as(gw, "analyst") as conn:
        query = b"SELECT '\xff\xfe' FROM orders"
        conn.send(b"P" + (len(query) + 8).to_bytes(4, "big") + b"\0" + query + b"\0\0\0",
                  frontend.Bind("", "", [], [], []), frontend.Execute("", 0), frontend.Sync())
        seen, ready = _until_ready(conn)
        (error,) = [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert error.code == "42501" and error.message == "pgguard: statement refused: the statement is not valid utf-8"
        assert conn.query("SELECT 1")[1] == backend.ReadyForQuery("I")


@pytest.mark.parametrize("sql", ["SELECT 1" + " + 1" * 3000,
                                 "SELECT * FROM " + "(SELECT * FROM " * 400 + "orders" + ") s" * 400])
def test_a_statement_nested_too_deeply_to_analyse_is_refused(simple: psycopg.Connection[Any],
                                                             extended: psycopg.Connection[Any], sql: str) -> None:
    """Refused with 42501 (fail closed), and the session goes on: no crash."""
    for conn in (simple, extended):
        assert "nests too deeply" in assert_refused(conn, sql)


# --- the text the server reads must be the text pgguard read --------------------------------------------------

_HIDE = "set_config($$default_transaction_read_only$$, $$off$$, false)"


def _read_only(conn: Any) -> bytes | None:
    seen, _ = conn.query("SHOW default_transaction_read_only")
    (row,) = [m for m in seen if isinstance(m, backend.DataRow)]
    return row.values[0]


def _parse(query: bytes, name: str = "") -> bytes:
    return message(b"P", name.encode() + b"\0" + query + b"\0" + b"\0\0")


def test_parse_is_read_in_the_sessions_client_encoding(gw: RunningGateway) -> None:
    """In SJIS, bytes C3 81 5C are two characters and no backslash: pgguard must read them so."""
    with login_as(gw, "analyst", client_encoding="SJIS") as conn:
        query = f"SELECT E'Á\\', {_HIDE} --'".encode()
        conn.send(_parse(query), frontend.Bind("", "", [], [], []), frontend.Execute("", 0), frontend.Sync())
        seen, _ = _until_ready(conn)
        assert [m.code for m in seen if isinstance(m, backend.ErrorResponse)] == ["42501"]
        assert _read_only(conn) == b"on"


def test_statements_kept_before_a_refusal_are_sent_as_the_client_wrote_them(gw: RunningGateway) -> None:
    with login_as(gw, "analyst", client_encoding="SJIS") as conn:
        query = "SELECT 'ぁ' AS kana; DELETE FROM orders".encode("shift_jis")
        conn.send(message(b"Q", query + b"\0"))
        seen, _ = _until_ready(conn)
        rows = [m.values for m in seen if isinstance(m, backend.DataRow)]
        assert rows == [["ぁ".encode("shift_jis")]]
        (error,) = [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert error.code == "42501" and error.message.startswith("pgguard: DELETE refused")
        # A kept statement that would read differently in another encoding does not get through either.
        query = f"SELECT E'ぁ\\', {_HIDE} --'; DELETE FROM orders".encode("shift_jis")
        conn.send(message(b"Q", query + b"\0"))
        seen, _ = _until_ready(conn)
        assert [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert _read_only(conn) == b"on"


def test_text_sent_while_client_encoding_changes_is_refused_unless_ascii(gateway_factory: Any) -> None:
    # The analysts without strict inference, which refuses them an encoding that cannot represent every
    # character (test_masking_encoding); their login is still read-only.
    gw = gateway_factory(lambda text: text.replace("strict_inference = true", "strict_inference = false"))
    with login_as(gw, "analyst") as conn:
        hidden = "SELECT E'Á\\'; SET default_transaction_read_only = off; --'".encode()
        conn.send(frontend.Query("SET client_encoding = 'SJIS'"), message(b"Q", hidden + b"\0"),
                  frontend.Query("SELECT 'still ascii'"))
        first, _ = _until_ready(conn)
        second, _ = _until_ready(conn)
        third, _ = _until_ready(conn)
        assert [type(m).__name__ for m in first][:1] == ["CommandComplete"]
        (error,) = [m for m in second if isinstance(m, backend.ErrorResponse)]
        assert error.code == "42501" and "client_encoding may be changing" in error.message
        assert [m.values for m in third if isinstance(m, backend.DataRow)] == [[b"still ascii"]]
        assert _read_only(conn) == b"on"
    with login_as(gw, "analyst") as conn:
        # The same through a statement prepared earlier and bound later.
        conn.send(frontend.Parse("enc", "SET client_encoding = 'SJIS'", []), frontend.Sync())
        _until_ready(conn)
        conn.send(frontend.Bind("", "enc", [], [], []), frontend.Execute("", 0),
                  _parse(f"SELECT E'Á\\', {_HIDE} --'".encode()), frontend.Bind("", "", [], [], []),
                  frontend.Execute("", 0), frontend.Sync())
        seen, _ = _until_ready(conn)
        (error,) = [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert error.code == "42501" and "client_encoding may be changing" in error.message
        assert _read_only(conn) == b"on"


def test_standard_conforming_strings_stays_on(simple: psycopg.Connection[Any]) -> None:
    """With it off, '\\' would open a string pgguard reads as closed; so it may not be turned off."""
    assert_refused(simple, "SET standard_conforming_strings = off")
    row = simple.execute("SELECT '\\', 'x; SET default_transaction_read_only = off; --'").fetchone()
    assert row == ("\\", "x; SET default_transaction_read_only = off; --")
    assert simple.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


# --- logging in ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    "-c default_transaction_read_only=off",
    "-c default_transaction_read_only=f",
    "--default-transaction-read-only=off",
    "-c role=postgres",
    "-c session_authorization=postgres",
    "-c standard_conforming_strings=off",
    "-c statement_timeout=0 -c role=pgguard_admin",
    "-d 5",
    "-c application_name=x\\",  # would swallow the gateway's own -c default_transaction_read_only=on
])
def test_startup_options_that_would_lift_the_restrictions_refuse_the_login(gw: RunningGateway,
                                                                          options: str) -> None:
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gw.dsn("analyst", options=options)).close()
    assert "pgguard:" in str(caught.value)


@pytest.mark.parametrize("params", [{"default_transaction_read_only": "off"}, {"role": "postgres"},
                                    {"options": "-c role=postgres"}])
def test_startup_parameters_on_the_wire_refuse_the_login(gw: RunningGateway, params: dict[str, str]) -> None:
    with pytest.raises(Refused) as caught:
        login_as(gw, "analyst", **params).close()
    assert caught.value.error.code == "42501" and caught.value.error.message.startswith("pgguard:")


def test_the_analysts_session_is_read_only_upstream(gw: RunningGateway) -> None:
    with psycopg.connect(gw.dsn("analyst", options="-c statement_timeout=5000"), autocommit=True) as conn:
        assert conn.execute("SELECT current_user, current_setting('default_transaction_read_only'),"
                            " current_setting('statement_timeout')").fetchone() == ("pgguard_reader", "on", "5s")
        # RESET goes back to the login's value, not to off.
        conn.execute("RESET ALL")
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)


# --- and after all that ------------------------------------------------------------------------------------------


def test_zz_the_database_is_unchanged(gw: RunningGateway, direct: str, before: dict[str, Any],
                                      simple: psycopg.Connection[Any], extended: psycopg.Connection[Any]) -> None:
    """Runs last in this module: every table, sequence, file, grant, role and setting as it was."""
    after = database_state(direct)
    assert after == before
    assert before["orders"][0] == 6000 and before[VICTIM][0] == 50
    assert fetch_all(direct, f"SELECT min(id), max(id) FROM {VICTIM}") == [(1, 50)]
