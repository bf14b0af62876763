"""A write that reaches tables it does not name, through the real gateway and a real PostgreSQL.

Support may write `reach_ok.*` and nothing of `reach_hr`. Each way the database carries a write
of `reach_ok` into `reach_hr` is set up directly as superuser before the module's gateway starts,
so its catalog snapshot knows it: an updatable view, a rule, each foreign-key action, TRUNCATE …
CASCADE, triggers (whose WHEN condition or functions write, call a function that writes, run dynamic SQL, are in C,
or are SECURITY DEFINER without a search_path of their own). The upstream logins are granted everything in both schemas, so it is
pgguard, not PostgreSQL, that stands in the way. Every refusal is checked against the server:
no table of either schema changed. Engineering here may write every table (`write = ["*"]`),
and its writes through the same objects run.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import psycopg
import pytest
from psycopg.pq import TransactionStatus

from conftest import start_gateway, stop_gateway
from helpers import fetch_all, fetch_value, known_to
from rawclient import config_edit, login_as
from pgguard.wire import backend
from pgguard.demo import data

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

SCHEMAS = ("reach_ok", "reach_hr")

OBJECTS = """
CREATE SCHEMA reach_ok;
CREATE SCHEMA reach_hr;
CREATE TABLE reach_hr.log (source text, id int);
CREATE TABLE reach_ok.local_log (source text, id int);

-- A foreign key of each action from reach_hr to a table of reach_ok of its own.
CREATE TABLE reach_ok.p_delete_cascade (id int PRIMARY KEY);
CREATE TABLE reach_hr.c_delete_cascade (id int PRIMARY KEY,
  p int CONSTRAINT c_delete_cascade_fk REFERENCES reach_ok.p_delete_cascade ON DELETE CASCADE);
CREATE TABLE reach_ok.p_set_null (id int PRIMARY KEY);
CREATE TABLE reach_hr.c_set_null (id int PRIMARY KEY,
  p int CONSTRAINT c_set_null_fk REFERENCES reach_ok.p_set_null ON DELETE SET NULL);
CREATE TABLE reach_ok.p_set_default (id int PRIMARY KEY);
CREATE TABLE reach_hr.c_set_default (id int PRIMARY KEY,
  p int DEFAULT NULL CONSTRAINT c_set_default_fk REFERENCES reach_ok.p_set_default ON DELETE SET DEFAULT);
CREATE TABLE reach_ok.p_update_cascade (id int PRIMARY KEY);
CREATE TABLE reach_hr.c_update_cascade (id int PRIMARY KEY,
  p int CONSTRAINT c_update_cascade_fk REFERENCES reach_ok.p_update_cascade ON UPDATE CASCADE);
CREATE TABLE reach_ok.p_plain (id int PRIMARY KEY);
CREATE TABLE reach_hr.c_plain (id int PRIMARY KEY, p int CONSTRAINT c_plain_fk REFERENCES reach_ok.p_plain);
INSERT INTO reach_ok.p_delete_cascade VALUES (1), (2), (3);
INSERT INTO reach_ok.p_set_null VALUES (1), (2), (3);
INSERT INTO reach_ok.p_set_default VALUES (1), (2), (3);
INSERT INTO reach_ok.p_update_cascade VALUES (1), (2), (3);
INSERT INTO reach_ok.p_plain VALUES (1), (2), (3);
INSERT INTO reach_hr.c_delete_cascade VALUES (1, 1), (2, 2);
INSERT INTO reach_hr.c_set_null VALUES (1, 1);
INSERT INTO reach_hr.c_set_default VALUES (1, 1);
INSERT INTO reach_hr.c_update_cascade VALUES (1, 1);
INSERT INTO reach_hr.c_plain VALUES (1, 1);

-- A rule, and an updatable view whose base table is in reach_hr.
CREATE TABLE reach_ok.ruled (id int);
CREATE RULE to_hr AS ON INSERT TO reach_ok.ruled DO ALSO INSERT INTO reach_hr.log VALUES ('rule', NEW.id);
CREATE RULE instead AS ON DELETE TO reach_ok.ruled DO INSTEAD DELETE FROM reach_hr.log WHERE id = OLD.id;
CREATE TABLE reach_hr.salaries (id int PRIMARY KEY, amount int);
INSERT INTO reach_hr.salaries VALUES (1, 100), (2, 200);
CREATE VIEW reach_ok.salaries AS SELECT id, amount FROM reach_hr.salaries;
CREATE VIEW reach_ok.salaries_again AS SELECT * FROM reach_ok.salaries WHERE amount > 0;

-- Triggers.
CREATE FUNCTION reach_ok.to_hr() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN INSERT INTO reach_hr.log VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$;
CREATE TABLE reach_ok.audited (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.audited FOR EACH ROW EXECUTE FUNCTION reach_ok.to_hr();
CREATE FUNCTION reach_ok.to_local() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
     INSERT INTO reach_ok.local_log VALUES (TG_TABLE_NAME, NEW.id); RETURN NEW; END $$;
CREATE TABLE reach_ok.local (id int);
CREATE TRIGGER t AFTER INSERT OR UPDATE OR DELETE ON reach_ok.local FOR EACH ROW EXECUTE FUNCTION reach_ok.to_local();
CREATE FUNCTION reach_ok.note(int) RETURNS void LANGUAGE sql AS $$ INSERT INTO reach_hr.log VALUES ('nested', $1) $$;
CREATE TABLE reach_ok.conditional (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.conditional FOR EACH ROW WHEN (reach_ok.note(NEW.id) IS NULL)
  EXECUTE FUNCTION reach_ok.to_local();
CREATE FUNCTION reach_ok.via_note() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN PERFORM reach_ok.note(NEW.id); RETURN NEW; END $$;
CREATE TABLE reach_ok.nested (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.nested FOR EACH ROW EXECUTE FUNCTION reach_ok.via_note();
CREATE FUNCTION reach_ok.dynamic() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN EXECUTE 'INSERT INTO reach_hr.log VALUES ($1, $2)' USING 'dynamic', NEW.id; RETURN NEW; END $$;
CREATE TABLE reach_ok.dynamic (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.dynamic FOR EACH ROW EXECUTE FUNCTION reach_ok.dynamic();
CREATE FUNCTION reach_ok.skip_same() RETURNS trigger LANGUAGE internal AS 'suppress_redundant_updates_trigger';
CREATE TABLE reach_ok.c_language (id int);
INSERT INTO reach_ok.c_language VALUES (1);
CREATE TRIGGER t BEFORE UPDATE ON reach_ok.c_language FOR EACH ROW EXECUTE FUNCTION reach_ok.skip_same();
CREATE TABLE reach_ok.builtin (id int);
INSERT INTO reach_ok.builtin VALUES (1);
CREATE TRIGGER t BEFORE UPDATE ON reach_ok.builtin FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();
CREATE FUNCTION reach_ok.definer() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  AS $$ BEGIN INSERT INTO reach_ok.local_log VALUES ('definer', NEW.id); RETURN NEW; END $$;
CREATE TABLE reach_ok.definer (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.definer FOR EACH ROW EXECUTE FUNCTION reach_ok.definer();
CREATE FUNCTION reach_ok.pinned() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = reach_ok
  AS $$ BEGIN INSERT INTO local_log VALUES ('pinned', NEW.id); RETURN NEW; END $$;
CREATE TABLE reach_ok.pinned (id int);
CREATE TRIGGER t AFTER INSERT ON reach_ok.pinned FOR EACH ROW EXECUTE FUNCTION reach_ok.pinned();

-- What a write evaluates besides triggers: a column default, a CHECK, a domain's CHECK (of an array's elements).
CREATE FUNCTION reach_ok.noted() RETURNS int LANGUAGE sql
  AS $$ INSERT INTO reach_hr.log VALUES ('default', 0) RETURNING id $$;
CREATE FUNCTION reach_ok.passes(int) RETURNS boolean LANGUAGE sql
  AS $$ INSERT INTO reach_hr.log VALUES ('check', $1) RETURNING true $$;
CREATE TABLE reach_ok.defaulted (id int DEFAULT reach_ok.noted(), x int);
CREATE TABLE reach_ok.checked (id int CONSTRAINT passes CHECK (reach_ok.passes(id)));
CREATE DOMAIN reach_ok.checked_int AS int CONSTRAINT passes CHECK (reach_ok.passes(VALUE));
CREATE TABLE reach_ok.domained (ids reach_ok.checked_int[]);
CREATE SEQUENCE reach_hr.ids;
CREATE TABLE reach_ok.numbered (id bigint DEFAULT nextval('reach_hr.ids'), x int);
CREATE TABLE reach_ok.serial (id serial, x int);

-- Two steps: a rule into a table of reach_ok whose trigger writes reach_hr.
CREATE TABLE reach_ok.chained (id int);
CREATE RULE to_audited AS ON INSERT TO reach_ok.chained DO ALSO INSERT INTO reach_ok.audited VALUES (NEW.id);
""" + "".join(f"""
GRANT USAGE ON SCHEMA {schema} TO {login};
GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {login};
GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {login};
""" for schema in SCHEMAS for login in (data.SUPPORT, data.ENGINEER))

DELETE_CASCADE = "(delete) reach_hr.c_delete_cascade (reach_ok.p_delete_cascade reaches it through the foreign key " \
    "c_delete_cascade_fk of reach_hr.c_delete_cascade (ON DELETE CASCADE))"
UPDATE_CASCADE = "(update) reach_hr.c_update_cascade (reach_ok.p_update_cascade reaches it through the foreign key " \
    "c_update_cascade_fk of reach_hr.c_update_cascade (ON UPDATE CASCADE))"
TRIGGER_TO_HR = "(insert) reach_hr.log (reach_ok.audited reaches it through the trigger t on reach_ok.audited " \
    "(function reach_ok.to_hr()))"
CANNOT_FOLLOW = "pgguard cannot follow that, so only a role that may write every table may set it off"

REFUSED = [
    ("INSERT INTO reach_ok.defaulted (x) VALUES (1)",
     "(insert) reach_hr.log (reach_ok.defaulted reaches it through the default of column id of reach_ok.defaulted)"),
    ("INSERT INTO reach_ok.checked VALUES (1)",
     "(insert) reach_hr.log (reach_ok.checked reaches it through the check constraint passes of reach_ok.checked)"),
    ("COPY reach_ok.checked FROM STDIN", "(insert) reach_hr.log (reach_ok.checked reaches it through the check"),
    ("INSERT INTO reach_ok.domained VALUES (ARRAY[1])",
     "(insert) reach_hr.log (reach_ok.domained reaches it through the domain check of column ids (passes)"),
    ("INSERT INTO reach_ok.numbered (x) VALUES (1)",
     "(nextval) reach_hr.ids (reach_ok.numbered reaches it through the default of column id of reach_ok.numbered)"),
    ("DELETE FROM reach_ok.p_delete_cascade WHERE id = 1", DELETE_CASCADE),
    ("DELETE FROM reach_ok.p_set_null WHERE id = 1",
     "(update) reach_hr.c_set_null (reach_ok.p_set_null reaches it through the foreign key c_set_null_fk of "
     "reach_hr.c_set_null (ON DELETE SET NULL))"),
    ("DELETE FROM reach_ok.p_set_default WHERE id = 1",
     "(update) reach_hr.c_set_default (reach_ok.p_set_default reaches it through the foreign key c_set_default_fk "
     "of reach_hr.c_set_default (ON DELETE SET DEFAULT))"),
    ("UPDATE reach_ok.p_update_cascade SET id = 10 WHERE id = 1", UPDATE_CASCADE),
    ("TRUNCATE reach_ok.p_plain CASCADE",
     "(truncate) reach_hr.c_plain (reach_ok.p_plain reaches it through the foreign key c_plain_fk of "
     "reach_hr.c_plain (TRUNCATE … CASCADE))"),
    ("INSERT INTO reach_ok.ruled VALUES (1)",
     "(insert) reach_hr.log (reach_ok.ruled reaches it through the rule to_hr on reach_ok.ruled)"),
    ("UPDATE reach_ok.salaries SET amount = 0 WHERE id = 1",
     "(update) reach_hr.salaries (reach_ok.salaries reaches it through the view's base relation reach_hr.salaries)"),
    ("DELETE FROM reach_ok.salaries", "(delete) reach_hr.salaries (reach_ok.salaries reaches it"),
    ("INSERT INTO reach_ok.salaries_again VALUES (3, 300)",
     "(insert) reach_hr.salaries (reach_ok.salaries reaches it through the view's base relation reach_hr.salaries)"),
    ("DELETE FROM reach_ok.ruled WHERE id = 1",
     "(delete) reach_hr.log (reach_ok.ruled reaches it through the rule instead on reach_ok.ruled)"),
    ("INSERT INTO reach_ok.audited VALUES (1)", TRIGGER_TO_HR),
    ("INSERT INTO reach_ok.nested VALUES (1)",
     "(insert) reach_hr.log (reach_ok.nested reaches it through the trigger t on reach_ok.nested "
     "(function reach_ok.via_note()))"),
    ("INSERT INTO reach_ok.chained VALUES (1)", TRIGGER_TO_HR),
    ("INSERT INTO reach_ok.conditional VALUES (1)",
     "(insert) reach_hr.log (reach_ok.conditional reaches it through the trigger t on reach_ok.conditional "
     "(function reach_ok.to_local()))"),
    ("INSERT INTO reach_ok.dynamic VALUES (1)",
     "(insert) reach_ok.dynamic: it reaches further through the trigger t on reach_ok.dynamic (function "
     "reach_ok.dynamic()), where pgguard cannot follow the body of reach_ok.dynamic() (dynamic SQL, or a "
     f"search_path pgguard cannot tell); {CANNOT_FOLLOW}"),
    ("UPDATE reach_ok.c_language SET id = 2",
     "(update) reach_ok.c_language: it reaches further through the trigger t on reach_ok.c_language (function "
     "reach_ok.skip_same()), where pgguard cannot follow the body of reach_ok.skip_same() (language internal); "
     f"{CANNOT_FOLLOW}"),
    ("INSERT INTO reach_ok.definer VALUES (1)",
     "(insert) reach_ok.definer: it reaches further through the trigger t on reach_ok.definer (function "
     f"reach_ok.definer()), where reach_ok.definer() is SECURITY DEFINER without a search_path of its own; {CANNOT_FOLLOW}"),
    # The same, inside a CTE, as an upsert's update, and as MERGE's actions.
    ("WITH x AS (DELETE FROM reach_ok.p_delete_cascade WHERE id = 1) SELECT 1", DELETE_CASCADE),
    ("INSERT INTO reach_ok.p_update_cascade VALUES (1) ON CONFLICT (id) DO UPDATE SET id = 11", UPDATE_CASCADE),
    ("MERGE INTO reach_ok.p_delete_cascade p USING (SELECT 1 AS id) s ON p.id = s.id WHEN MATCHED THEN DELETE",
     DELETE_CASCADE),
    ("MERGE INTO reach_ok.audited a USING (SELECT 5 AS id) s ON a.id = s.id WHEN NOT MATCHED THEN INSERT VALUES (5)",
     TRIGGER_TO_HR),
]


def _edit(text: str) -> str:
    """Support writes reach_ok only; engineering writes every table, and needs no approval here."""
    text, removed = re.subn(r"approval = \[\n(?:    .*\n)*\]\n", "", text)
    assert removed == 1, "the demo config's approval rules were not found"
    return config_edit({
        "roles.support": {"read": ["public.*", "reach_ok.*", "reach_hr.*"], "write": ["reach_ok.*"]},
        "roles.engineering": {"read": ["*"], "write": ["*"]},
    })(text)


@pytest.fixture(scope="module")
def direct(postgres: PostgresServer) -> str:
    return postgres.dsn(sslmode="verify-full")


@contextmanager
def serving(directory: Path, postgres: PostgresServer, test_ca: TLSFiles, objects: str,
            edit: Callable[[str], str], cleanup: str) -> Iterator[RunningGateway]:
    """A gateway started after `objects` were made as superuser (so its first snapshot knows them); `cleanup` after."""
    direct = postgres.dsn(sslmode="verify-full")
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute(objects)
    running = start_gateway(directory, postgres, test_ca, edit)
    try:
        yield running
    finally:
        stop_gateway(running)
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute(cleanup)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> Iterator[RunningGateway]:
    with serving(tmp_path_factory.mktemp("reach"), postgres, test_ca, OBJECTS, _edit,
                 "DROP SCHEMA reach_ok, reach_hr CASCADE") as running:
        yield running


def contents(direct: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of both schemas, read as superuser."""
    with psycopg.connect(direct) as conn:
        tables = conn.execute("SELECT schemaname || '.' || tablename FROM pg_tables WHERE schemaname = ANY(%s)",
                              (list(SCHEMAS),)).fetchall()
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)  # noqa: S608
                for (table,) in tables}


def refusal(conn: psycopg.Connection[Any], sql: str) -> str:
    """The gateway's refusal of `sql`; the connection stays usable."""
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(sql)
    error = caught.value
    assert error.sqlstate == "42501", f"{type(error).__name__} {error.sqlstate}: {error}"
    text = error.diag.message_primary or ""
    assert text.startswith("pgguard:"), f"not refused by the gateway: {text}"
    assert conn.info.transaction_status == TransactionStatus.IDLE
    return text


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[sql[:60] for sql, _ in REFUSED])
def test_a_write_that_reaches_a_table_the_role_may_not_write_is_refused(
        gw: RunningGateway, direct: str, sql: str, reason: str) -> None:
    before = contents(direct)
    with psycopg.connect(gw.dsn("support"), autocommit=True) as conn:
        text = refusal(conn, sql)
        assert f"role support may not write {reason}" in text
        assert text.endswith("(rule roles.support.write)")
    assert contents(direct) == before


def test_a_prepared_statement_that_reaches_further_is_refused_at_parse(gw: RunningGateway, direct: str) -> None:
    before = contents(direct)

    async def work() -> list[str]:
        conn = await asyncpg.connect(gw.dsn("support"), timeout=10)
        refusals = []
        try:
            for attempt in (lambda: conn.prepare("DELETE FROM reach_ok.p_delete_cascade WHERE id = $1"),
                            lambda: conn.execute("DELETE FROM reach_ok.p_delete_cascade WHERE id = $1", 1),
                            lambda: conn.fetch("INSERT INTO reach_ok.audited VALUES ($1) RETURNING id", 2)):
                with pytest.raises(asyncpg.PostgresError) as caught:
                    await attempt()
                assert caught.value.sqlstate == "42501"
                refusals.append(str(caught.value))
            assert await conn.fetchval("SELECT count(*) FROM reach_ok.p_delete_cascade") == 3
        finally:
            await conn.close()
        return refusals

    refusals = asyncio.run(work())
    assert all(text.startswith("pgguard: ") for text in refusals), refusals
    assert DELETE_CASCADE in refusals[0] and DELETE_CASCADE in refusals[1] and TRIGGER_TO_HR in refusals[2]
    assert contents(direct) == before


def run_as(gw: RunningGateway, identity: str, *statements: str) -> None:
    with psycopg.connect(gw.dsn(identity), autocommit=True) as conn:
        for sql in statements:
            conn.execute(sql)


def test_writes_that_reach_only_what_the_role_may_write_run(gw: RunningGateway, direct: str) -> None:
    run_as(gw, "support",
           # A trigger that writes the same schema, and a SECURITY DEFINER one with a search_path of its own.
           "INSERT INTO reach_ok.local VALUES (101)", "UPDATE reach_ok.local SET id = 102 WHERE id = 101",
           "INSERT INTO reach_ok.pinned VALUES (103)",
           # PostgreSQL's own trigger function, which changes only the row.
           "UPDATE reach_ok.builtin SET id = 2",
           # An INSERT sets off no foreign-key action; nor does a DELETE under NO ACTION.
           "INSERT INTO reach_ok.p_update_cascade VALUES (104)", "DELETE FROM reach_ok.p_plain WHERE id = 3",
           # A TRUNCATE without CASCADE reaches nothing (the trigger of `local` is for rows).
           "TRUNCATE reach_ok.local",
           # A serial column's default draws from the table's own sequence.
           "INSERT INTO reach_ok.serial (x) VALUES (105)")
    rows = contents(direct)
    assert ("local", 101) in rows["reach_ok.local_log"] and ("local", 102) in rows["reach_ok.local_log"]
    assert ("pinned", 103) in rows["reach_ok.local_log"]
    assert (104,) in rows["reach_ok.p_update_cascade"] and (3,) not in rows["reach_ok.p_plain"]
    assert rows["reach_ok.local"] == [] and rows["reach_ok.builtin"] == [(2,)]
    assert rows["reach_ok.serial"] == [(1, 105)]


def test_a_role_that_may_write_every_table_writes_through_all_of_them(gw: RunningGateway, direct: str) -> None:
    run_as(gw, "engineer", "DELETE FROM reach_ok.p_delete_cascade WHERE id = 2",
           "UPDATE reach_ok.salaries SET amount = 201 WHERE id = 2", "INSERT INTO reach_ok.dynamic VALUES (201)",
           "INSERT INTO reach_ok.nested VALUES (202)", "UPDATE reach_ok.c_language SET id = 1")
    rows = contents(direct)
    assert rows["reach_hr.c_delete_cascade"] == [(1, 1)]
    assert (2, 201) in rows["reach_hr.salaries"]
    assert ("dynamic", 201) in rows["reach_hr.log"] and ("nested", 202) in rows["reach_hr.log"]


@pytest.mark.parametrize("sql", [
    "SELECT 1; DELETE FROM reach_ok.p_delete_cascade WHERE id = 1",
    "PREPARE reach_p AS DELETE FROM reach_ok.p_delete_cascade WHERE id = $1",
    "EXPLAIN ANALYZE DELETE FROM reach_ok.p_delete_cascade WHERE id = 1",
])
def test_the_simple_protocol_is_refused_the_same(gw: RunningGateway, direct: str, sql: str) -> None:
    before = contents(direct)
    with login_as(gw, "support") as conn:
        messages, ready = conn.query(sql)
        errors = [m for m in messages if isinstance(m, backend.ErrorResponse)]
        assert [e.code for e in errors] == ["42501"] and DELETE_CASCADE in errors[0].message
        assert ready.status == "I"
        # Nothing was prepared under the name: an EXECUTE of it is refused too.
        messages, _ = conn.query("EXECUTE reach_p(1)")
        assert [m.code for m in messages if isinstance(m, backend.ErrorResponse)] == ["42501"]
    assert contents(direct) == before


def _engineering_writes_reach_ok(text: str) -> str:
    return config_edit({"roles.engineering": {"read": ["*"], "write": ["reach_ok.*"]}})(_edit(text))


def test_a_write_after_the_sessions_own_ddl_is_refused_until_the_catalog_shows_it(
        gw: RunningGateway, direct: str, gateway_factory: Callable[..., RunningGateway]) -> None:
    """A trigger made in the write's own transaction is in no snapshot (the catalog is read by another
    connection), nor one made just before while the catalog is read again: the INSERT ran the trigger, which
    wrote reach_hr.log. A table the DDL did not touch stays writable (Alembic creates its table and writes it)."""
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("CREATE TABLE reach_ok.later (id int)")
        conn.execute(f"GRANT CREATE ON SCHEMA reach_ok TO {data.ENGINEER}")
        conn.execute(f"GRANT ALL ON reach_ok.later TO {data.ENGINEER}")
    engineering = gateway_factory(_engineering_writes_reach_ok)
    trigger = "CREATE TRIGGER t{} AFTER INSERT ON reach_ok.later FOR EACH ROW EXECUTE FUNCTION reach_ok.to_hr()"
    before = contents(direct)["reach_hr.log"]
    try:
        with psycopg.connect(engineering.dsn("engineer")) as conn:
            conn.execute(trigger.format(1))
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("INSERT INTO reach_ok.later VALUES (1)")
            assert caught.value.sqlstate == "42501"
            assert "reach_ok.later may reach further through this session's DDL" in str(caught.value)
        with psycopg.connect(engineering.dsn("engineer")) as conn:  # prepared before the trigger, bound after
            conn.execute("INSERT INTO reach_ok.later VALUES (%s)", [0], prepare=True)
            conn.commit()
            conn.execute(trigger.format(3))
            with pytest.raises(psycopg.Error) as caught:
                conn.execute("INSERT INTO reach_ok.later VALUES (%s)", [1], prepare=True)
            assert caught.value.sqlstate == "42501"
            assert "reach_ok.later may reach further through this session's DDL" in str(caught.value)
        with psycopg.connect(engineering.dsn("engineer"), autocommit=True) as conn:
            conn.execute(trigger.format(2))
            with pytest.raises(psycopg.Error) as caught:  # by either reason: the snapshot may show it already
                conn.execute("INSERT INTO reach_ok.later VALUES (2)")
            assert caught.value.sqlstate == "42501" and "reach_ok.later" in str(caught.value)
            conn.execute("CREATE TABLE reach_ok.fresh (id int)")
            conn.execute("INSERT INTO reach_ok.fresh VALUES (3)")
            with conn.transaction():  # a migration adds a column and fills it
                conn.execute("ALTER TABLE reach_ok.fresh ADD COLUMN note text")
                conn.execute("UPDATE reach_ok.fresh SET note = 'filled'")
        assert contents(direct)["reach_hr.log"] == before
        assert fetch_value(direct, "SELECT note FROM reach_ok.fresh") == "filled"
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS reach_ok.later, reach_ok.fresh")


def until_refused(conn: psycopg.Connection[Any], sql: str) -> str:
    """The refusal of `sql` once the gateway's catalog snapshot shows what makes it one; until then each try
    runs in a transaction that is rolled back, so it changes nothing."""
    for _ in range(100):
        try:
            with conn.transaction():
                conn.execute(sql)
                raise psycopg.Rollback()
        except psycopg.Error as error:
            assert error.sqlstate == "42501", f"{error.sqlstate}: {error}"
            return str(error)
        time.sleep(0.1)
    raise AssertionError(f"still allowed after 100 tries: {sql}")


def test_a_statement_prepared_before_another_sessions_ddl_is_decided_again(gw: RunningGateway, direct: str) -> None:
    """The server plans a prepared statement again after DDL on its table, and so runs a trigger made since:
    support's INSERT, prepared before an engineer made a trigger that writes reach_hr.log, wrote the log."""
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("CREATE TABLE reach_ok.shared (id int)")
        conn.execute(f"GRANT ALL ON reach_ok.shared TO {data.SUPPORT}, {data.ENGINEER}")
    known_to(gw.dsn("support"), "reach_ok.shared")
    before = contents(direct)["reach_hr.log"]
    insert = "INSERT INTO reach_ok.shared VALUES ($1)"

    async def work() -> asyncpg.PostgresError:
        support = await asyncpg.connect(gw.dsn("support"), timeout=10)
        try:
            prepared = await support.prepare(insert)  # asyncpg binds it from now on, never parses it again
            await prepared.fetch(1)
            with psycopg.connect(gw.dsn("engineer"), autocommit=True) as engineer:
                engineer.execute("CREATE TRIGGER to_hr AFTER INSERT ON reach_ok.shared FOR EACH ROW"
                                 " EXECUTE FUNCTION reach_ok.to_hr()")
            with psycopg.connect(gw.dsn("support"), autocommit=True) as other:
                assert "role support may not write (insert) reach_hr.log" in \
                    until_refused(other, "INSERT INTO reach_ok.shared VALUES (2)")
            with pytest.raises(asyncpg.PostgresError) as caught:
                await prepared.fetch(3)
            return caught.value
        finally:
            await support.close()

    try:
        error = asyncio.run(work())
        assert error.sqlstate == "42501"
        assert "role support may not write (insert) reach_hr.log" in str(error)
        assert "the database's objects changed, and is decided again" in (error.hint or "")
        assert contents(direct)["reach_hr.log"] == before
        assert fetch_all(direct, "SELECT id FROM reach_ok.shared") == [(1,)]
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS reach_ok.shared")


@pytest.mark.parametrize("sql", ["UPDATE pg_settings SET setting = 'reach_hr' WHERE name = 'search_path'",
                                 "UPDATE pg_catalog.pg_settings SET setting = 'off'"
                                 " WHERE name = 'standard_conforming_strings'"])
def test_a_write_to_pg_settings_is_refused_to_a_role_that_may_write_every_table(gw: RunningGateway, sql: str) -> None:
    """pg_settings' rule calls set_config() with the row's values: the engineers (write = ["*"]) moved the
    search path, or turned standard_conforming_strings off, without pgguard seeing a SET."""
    with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_catalog.pg_settings sets what it names"):
            conn.execute(sql)
        assert conn.execute("SHOW search_path").fetchone() == ('"$user", public',)
        assert conn.execute("SHOW standard_conforming_strings").fetchone() == ("on",)
