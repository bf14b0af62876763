"""A write whose triggers, rules, defaults or CHECKs call a built-in function the role denies, through the gateway.

Support and engineering may write `calls_ok.*` but may not call pg_terminate_backend, lo_create or
advisory locks themselves (engineering lifts the denial of pg_try_advisory_lock). The objects are made
as superuser before the module's gateway starts, so its catalog snapshot knows them. Each refusal is
checked against the server: the victim backend still runs, no large object or lock was made, and
no table changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from rawclient import config_edit
from test_policy_reach import direct, refusal, serving  # noqa: F401 (direct: a fixture)
from pgguard.demo import data

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles

LOCK_KEY = 7771

OBJECTS = f"""
CREATE SCHEMA calls_ok;
CREATE FUNCTION calls_ok.kill() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN PERFORM pg_terminate_backend(NEW.pid); RETURN NEW; END $$;
CREATE TABLE calls_ok.kills (pid int);
CREATE TRIGGER t AFTER INSERT ON calls_ok.kills FOR EACH ROW EXECUTE FUNCTION calls_ok.kill();
CREATE TABLE calls_ok.ruled (pid int);
CREATE RULE r AS ON INSERT TO calls_ok.ruled DO ALSO SELECT pg_catalog.pg_terminate_backend(NEW.pid);
CREATE TABLE calls_ok.objects (id int, blob oid DEFAULT lo_create(0));
CREATE FUNCTION calls_ok.make_blob() RETURNS oid LANGUAGE sql AS $$ SELECT lo_create(0) $$;
CREATE FUNCTION calls_ok.via_helper() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN NEW.blob := calls_ok.make_blob(); RETURN NEW; END $$;
CREATE TABLE calls_ok.nested (id int, blob oid);
CREATE TRIGGER t BEFORE INSERT ON calls_ok.nested FOR EACH ROW EXECUTE FUNCTION calls_ok.via_helper();
CREATE TABLE calls_ok.locked (id int CONSTRAINT locks CHECK (pg_try_advisory_lock({LOCK_KEY})));
CREATE FUNCTION calls_ok.shout() RETURNS trigger LANGUAGE plpgsql
  AS $$ BEGIN NEW.note := upper(NEW.note) || ' ' || length(NEW.note); RETURN NEW; END $$;
CREATE TABLE calls_ok.notes (note text, at timestamptz DEFAULT now());
CREATE TRIGGER t BEFORE INSERT ON calls_ok.notes FOR EACH ROW EXECUTE FUNCTION calls_ok.shout();
""" + "".join(f"""
GRANT USAGE ON SCHEMA calls_ok TO {login};
GRANT ALL ON ALL TABLES IN SCHEMA calls_ok TO {login};
""" for login in (data.SUPPORT, data.ENGINEER))

_EDIT = config_edit({
    "roles.support": {"read": ["calls_ok.*"], "write": ["calls_ok.*"]},
    "roles.engineering": {"read": ["calls_ok.*"], "write": ["calls_ok.*"],
                          "allow_functions": ["pg_catalog.pg_try_advisory_lock"]},
})


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles) -> Iterator[RunningGateway]:
    with serving(tmp_path_factory.mktemp("reach_calls"), postgres, test_ca, OBJECTS, _EDIT,
                 "SELECT lo_unlink(blob) FROM calls_ok.objects WHERE blob IS NOT NULL;"
                 " SELECT lo_unlink(blob) FROM calls_ok.nested WHERE blob IS NOT NULL;"
                 " DROP SCHEMA calls_ok CASCADE") as running:
        yield running


def state(direct: str) -> tuple[Any, ...]:
    """What the refused writes would change: the tables' rows, large objects, advisory locks held."""
    with psycopg.connect(direct) as conn:
        rows = tuple(conn.execute(f"SELECT count(*) FROM calls_ok.{table}").fetchone()  # noqa: S608
                     for table in ("kills", "ruled", "objects", "nested", "locked", "notes"))
        blobs = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                             (LOCK_KEY,)).fetchone()
        return rows, blobs, locks


@pytest.fixture
def victim(postgres: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    """A backend of support's own upstream login, which that login may terminate."""
    with psycopg.connect(postgres.dsn(user=data.SUPPORT, password=postgres.login_passwords[data.SUPPORT],
                                         sslmode="verify-full"),
                         autocommit=True) as conn:
        yield conn


@pytest.mark.parametrize("identity", ["support", "engineer"])
@pytest.mark.parametrize(("table", "how"), [
    ("kills", "the trigger t on calls_ok.kills (function calls_ok.kill())"),
    ("ruled", "the rule r on calls_ok.ruled"),
])
def test_a_write_whose_trigger_or_rule_terminates_a_backend_is_refused(
        gw: RunningGateway, direct: str, victim: psycopg.Connection[Any], identity: str, table: str,
        how: str) -> None:
    before = state(direct)
    with psycopg.connect(gw.dsn(identity), autocommit=True) as conn:
        text = refusal(conn, f"INSERT INTO calls_ok.{table} VALUES ({victim.info.backend_pid})")
    assert text.startswith("pgguard: INSERT refused: function pg_terminate_backend() is denied, and a write"
                           f" (insert) to calls_ok.{table} calls it through {how}"), text
    assert victim.execute("SELECT 1").fetchone() == (1,)  # still alive
    assert state(direct) == before


@pytest.mark.parametrize(("sql", "how"), [
    ("INSERT INTO calls_ok.objects (id) VALUES (1)", "the default of column blob of calls_ok.objects"),
    ("MERGE INTO calls_ok.objects o USING (SELECT 1 AS id) s ON o.id = s.id WHEN NOT MATCHED THEN INSERT (id)"
     " VALUES (s.id)", "the default of column blob of calls_ok.objects"),
    ("INSERT INTO calls_ok.nested (id) VALUES (1)", "the trigger t on calls_ok.nested (function calls_ok.via_helper())"),
])
def test_a_write_whose_default_or_nested_call_makes_a_large_object_is_refused(
        gw: RunningGateway, direct: str, sql: str, how: str) -> None:
    before = state(direct)
    with psycopg.connect(gw.dsn("support"), autocommit=True) as conn:
        text = refusal(conn, sql)
    table = sql.split(".")[1].split()[0]
    assert re.search(rf"function lo_create\(\) is denied, and a write \(insert(/update)?\) to calls_ok\.{table} calls it"
                     rf" through {re.escape(how)}", text), text
    assert text.endswith("(rule roles.support.functions)")
    assert state(direct) == before


def test_a_check_that_takes_an_advisory_lock_runs_only_for_a_role_that_lifts_the_denial(
        gw: RunningGateway, direct: str) -> None:
    before = state(direct)
    with psycopg.connect(gw.dsn("support"), autocommit=True) as conn:
        text = refusal(conn, "INSERT INTO calls_ok.locked VALUES (1)")
    assert "function pg_try_advisory_lock() is denied, and a write (insert) to calls_ok.locked calls it through the" \
        " check constraint locks of calls_ok.locked" in text, text
    assert text.endswith("(rule roles.support.functions)")
    assert state(direct) == before
    with psycopg.connect(gw.dsn("engineer"), autocommit=True) as conn:
        conn.execute("INSERT INTO calls_ok.locked VALUES (2)")
        with psycopg.connect(direct) as check:
            assert check.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s",
                                 (LOCK_KEY,)).fetchone() == (1,)
        conn.execute(f"SELECT pg_advisory_unlock({LOCK_KEY})")
        conn.execute("TRUNCATE calls_ok.locked")
    assert state(direct) == before


def test_a_trigger_and_default_that_call_allowed_builtins_run(gw: RunningGateway, direct: str) -> None:
    with psycopg.connect(gw.dsn("support"), autocommit=True) as conn:
        conn.execute("INSERT INTO calls_ok.notes (note) VALUES ('hello')")
        assert conn.execute("SELECT note, at IS NOT NULL FROM calls_ok.notes").fetchall() == [("HELLO 5", True)]
        conn.execute("DELETE FROM calls_ok.notes")
