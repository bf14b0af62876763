"""What a write reaches beyond the relations it names (pgguard/policy/reach.py), and how the guard
checks it, without a database: hand-written catalog rows as catalog.py's queries return them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.policy.catalog import EMPTY, Catalog
from pgguard.policy.classify import Name, parse
from pgguard.policy.guard import Decision, Policy, SessionGuard
from pgguard.policy.reach import CASCADE, events, reaches_changed

NAMES = Catalog.from_rows(
    [("s", schema, "") for schema in ("pg_catalog", "public", "hr", "tools")]
    + [("f", "pg_catalog", name) for name in ("upper", "now", "query_to_xml", "nextval", "set_config")]
    + [("f", "tools", "note"), ("f", "hr", "note"), ("f", "tools", "loop_a"), ("f", "tools", "loop_b")]
    + [("o", "pg_catalog", op) for op in ("=", "+")] + [("r", "pg_catalog", "pg_class")]
    + [("c", "tools.note", "boom")]  # a cast to type boom runs tools.note()
)


def function(schema: str, name: str, body: str, language: str = "plpgsql", extra: str = "") -> str:
    return (f"CREATE OR REPLACE FUNCTION {schema}.{name}()\n RETURNS trigger\n LANGUAGE {language}{extra}\n"
            f"AS $function$ {body} $function$\n")


ROUTINES = [
    ["f", "tools", "note", "tools", "note", "sql", "f",
     "CREATE OR REPLACE FUNCTION tools.note(integer)\n RETURNS void\n LANGUAGE sql\n"
     "AS $function$ INSERT INTO hr.log VALUES ($1) $function$\n"],
    ["f", "hr", "note", "hr", "note", "c", "f", None],
    ["f", "tools", "loop_a", "tools", "loop_a", "sql", "f",
     "CREATE FUNCTION tools.loop_a() RETURNS int LANGUAGE sql AS $f$ SELECT tools.loop_b() $f$"],
    ["f", "tools", "loop_b", "tools", "loop_b", "sql", "f",
     "CREATE FUNCTION tools.loop_b() RETURNS int LANGUAGE sql AS $f$ SELECT tools.loop_a(); "
     "DELETE FROM public.looped $f$"],
]


def trigger(table: str, body: str, *, tgtype: int = 4 | 8 | 16, definer: bool = False, extra: str = "",
            language: str = "plpgsql", schema: str = "public", when: str = "") -> list[str | None]:
    definition = function(schema, f"{table}_f", body, language, extra) if language in ("sql", "plpgsql") else None
    created = (f"CREATE TRIGGER t AFTER INSERT ON public.{table} FOR EACH ROW {when} "
               f"EXECUTE FUNCTION {schema}.{table}_f()")
    return ["public", table, "t", str(tgtype), schema, f"{table}_f", language, "t" if definer else "f", definition,
            created]


Rows = Sequence[list[str | None]]


def follow(triggers: Rows = (), rules: Rows = (), keys: Rows = (), views: Rows = ()) -> Catalog:
    return NAMES.with_routines(ROUTINES).with_reaches(list(triggers), list(rules), list(keys), list(views))


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    policy = Policy(load(offline_demo_config(tmp_path_factory.mktemp("reach"))))
    # engineering writes public.* in the demo; "everywhere" is a copy that may write every table.
    policy.scopes["everywhere"] = replace(policy.scopes["engineering"], role="everywhere", write=("*",), approval=())
    policy.scopes["engineering"] = replace(policy.scopes["engineering"], approval=())
    return policy


def decide(policy: Policy, catalog: Catalog, sql: str, role: str = "engineering") -> Decision:
    return SessionGuard(policy, [role], "pgguard_engineer", lambda: catalog).check_query(sql)[-1]


def test_the_kinds_of_write_set_off_only_what_they_fire() -> None:
    assert events({"copy", "lock", "sequence"}) == {"insert"}
    assert events({"merge"}) == {"insert", "update", "delete"}
    assert events({"truncate", CASCADE}) == {"truncate", CASCADE}


def test_a_foreign_key_reaches_by_its_actions(policy: Policy) -> None:
    catalog = follow(keys=[["public", "emp", "hr", "sal", "sal_fk", "c", "a"],
                           ["public", "dept", "hr", "desk", "desk_fk", "a", "a"]])
    assert decide(policy, catalog, "DELETE FROM emp WHERE id = 1").reason == (
        "role engineering may not write (delete) hr.sal (public.emp reaches it through the foreign key sal_fk of hr.sal"
        " (ON DELETE CASCADE))")
    # An INSERT sets off no action, an UPDATE not ON DELETE's, and NO ACTION writes nothing but for TRUNCATE … CASCADE.
    for sql in ("INSERT INTO emp VALUES (1)", "UPDATE emp SET id = 2", "DELETE FROM dept", "TRUNCATE dept"):
        assert decide(policy, catalog, sql).allowed, sql
    assert "(truncate) hr.desk (public.dept reaches it through the foreign key desk_fk of hr.desk (TRUNCATE … CASCADE))" \
        in decide(policy, catalog, "TRUNCATE dept CASCADE").reason
    # For approval rules, only what an INSERT, UPDATE or DELETE sets off counts as writing further.
    assert catalog.writes_further == {"public.emp"}


def test_reaches_are_followed_transitively_and_a_cycle_ends(policy: Policy) -> None:
    catalog = follow(
        rules=[["public", "a", "r", "3", "CREATE RULE r AS ON INSERT TO public.a DO ALSO INSERT INTO public.b VALUES (1);"],
               ["public", "b", "r", "3", "CREATE RULE r AS ON INSERT TO public.b DO ALSO INSERT INTO public.a VALUES (1);"]],
        triggers=[trigger("b", "BEGIN INSERT INTO hr.log VALUES (NEW.id); RETURN NEW; END")])
    assert decide(policy, catalog, "INSERT INTO a VALUES (1)").reason == (
        "role engineering may not write (insert) hr.log (public.b reaches it through the trigger t on public.b"
        " (function public.b_f()))")
    assert decide(policy, catalog, "INSERT INTO a VALUES (1)", "everywhere").allowed


def test_a_rule_condition_is_followed(policy: Policy) -> None:
    catalog = follow(rules=[["public", "a", "r", "4", "CREATE RULE r AS ON DELETE TO public.a "
                             "WHERE (tools.note(old.id) IS NULL) DO ALSO NOTIFY a;"]])
    assert "(insert) hr.log (public.a reaches it through the rule r on public.a)" in \
        decide(policy, catalog, "DELETE FROM a").reason


def test_a_rule_that_does_nothing_and_a_view_that_is_not_updatable_reach_nothing(policy: Policy) -> None:
    catalog = follow(rules=[["public", "a", "n", "4", "CREATE RULE n AS ON DELETE TO public.a DO INSTEAD NOTHING;"]],
                     views=[["public", "joined", "SELECT a.id FROM hr.a a, hr.b b"],
                            ["public", "unioned", "SELECT 1 AS id UNION SELECT id FROM hr.a"]])
    for sql in ("DELETE FROM a", "DELETE FROM joined", "DELETE FROM unioned"):
        assert decide(policy, catalog, sql).allowed, sql


@pytest.mark.parametrize(("row", "why"), [
    (trigger("t", "BEGIN EXECUTE 'DELETE FROM hr.x'; RETURN NEW; END"),
     "pgguard cannot follow the body of public.t_f() (dynamic SQL, or a search_path pgguard cannot tell)"),
    (trigger("t", "", language="c"), "pgguard cannot follow the body of public.t_f() (language c)"),
    (trigger("t", "BEGIN INSERT INTO public.log VALUES (1); RETURN NEW; END", definer=True),
     "public.t_f() is SECURITY DEFINER without a search_path of its own"),
    (trigger("t", "BEGIN PERFORM query_to_xml('DELETE FROM hr.x', true, true, ''); RETURN NEW; END"),
     "public.t_f() calls query_to_xml(), which runs SQL handed to it as text"),
    (trigger("t", "BEGIN PERFORM note(NEW.id); RETURN NEW; END"),
     "pgguard cannot follow the body of hr.note() (language c)"),
    (trigger("t", "BEGIN PERFORM mystery(1); RETURN NEW; END"), "public.t_f() calls mystery(), which pgguard does not know"),
    (trigger("t", "BEGIN " + "PERFORM tools.loop_a(); " * 40 + "RETURN NEW; END"),
     "functions call functions deeper or more often than pgguard follows, at tools.loop_b()"),
    (trigger("t", "BEGIN CREATE TABLE public.x (a int); RETURN NEW; END"), "public.t_f() runs ddl statements"),
    (trigger("t", "BEGIN PERFORM set_config('search_path', 'hr', true); INSERT INTO log VALUES (1); RETURN NEW; END"),
     "public.t_f() changes settings (search_path)"),
])
def test_a_trigger_pgguard_cannot_follow_is_refused_unless_the_role_writes_everywhere(
        policy: Policy, row: list[str | None], why: str) -> None:
    catalog = follow(triggers=[row])
    reason = decide(policy, catalog, "INSERT INTO t VALUES (1)").reason
    assert reason.startswith("role engineering may not write (insert) t: it reaches further through the trigger t on"
                             f" public.t (function public.t_f()), where {why};")
    assert decide(policy, catalog, "INSERT INTO t VALUES (1)", "everywhere").allowed


def test_a_trigger_body_is_followed_into_the_functions_it_calls(policy: Policy) -> None:
    pinned = trigger("t", "BEGIN PERFORM note(NEW.id); PERFORM tools.loop_a(); RETURN NEW; END", definer=True,
                     extra="\n SECURITY DEFINER\n SET search_path TO 'tools'")
    catalog = follow(triggers=[pinned])
    # Its own search_path places note() in tools (not hr's, in C); tools.note writes hr.log.
    assert decide(policy, catalog, "UPDATE t SET id = 1").reason == (
        "role engineering may not write (insert) hr.log (public.t reaches it through the trigger t on public.t"
        " (function public.t_f()))")
    reached = catalog.reaches["public.t"][0].writes
    assert reached is not None and (Name("public", "looped"), frozenset({"delete"})) in reached
    # PostgreSQL's own trigger functions change the row only; a trigger for TRUNCATE is not set off by an INSERT.
    builtin = trigger("u", "", tgtype=16, schema="pg_catalog", language="internal")
    truncating = trigger("v", "BEGIN DELETE FROM hr.x; RETURN NULL; END", tgtype=32)
    catalog = follow(triggers=[builtin, truncating])
    assert decide(policy, catalog, "UPDATE u SET id = 1").allowed
    assert decide(policy, catalog, "INSERT INTO v VALUES (1)").allowed
    assert "(delete) hr.x (public.v reaches it" in decide(policy, catalog, "TRUNCATE v").reason
    # Its WHEN condition runs, whichever function the trigger calls.
    catalog = follow(triggers=[trigger("u", "", tgtype=16, schema="pg_catalog", language="internal",
                                       when="WHEN (tools.note(new.id) IS NULL)")])
    assert "(insert) hr.log (public.u reaches it" in decide(policy, catalog, "UPDATE u SET id = 1").reason


def test_unqualified_writes_of_a_body_resolve_on_the_session_search_path(policy: Policy) -> None:
    catalog = follow(triggers=[trigger("t", "BEGIN INSERT INTO log VALUES (1); RETURN NEW; END")])
    guard = SessionGuard(policy, ["engineering"], "pgguard_engineer", lambda: catalog)
    assert guard.check_query("INSERT INTO t VALUES (1)")[-1].allowed  # public.log
    guard.check_query("SET search_path = hr, public")
    assert "(insert) hr.log (public.t reaches it" in guard.check_query("INSERT INTO public.t VALUES (1)")[-1].reason


def test_attribute_notation_and_casts_in_a_body_are_calls_too(policy: Policy) -> None:
    # NEW.note may be note(NEW): of every schema, hr's (in C) among them.
    catalog = follow(triggers=[trigger("t", "BEGIN PERFORM NEW.note; RETURN NEW; END")])
    assert "where pgguard cannot follow the body of hr.note() (language c)" in \
        decide(policy, catalog, "INSERT INTO t VALUES (1)").reason
    catalog = follow(triggers=[trigger("t", "BEGIN PERFORM NEW.id::boom; RETURN NEW; END")])
    assert "may not write (insert) hr.log (public.t reaches it" in decide(policy, catalog, "INSERT INTO t VALUES (1)").reason


def test_without_a_catalog_snapshot_a_write_that_may_set_something_off_is_refused(policy: Policy) -> None:
    # The target's catalog could not be read: what a write reaches cannot be told.
    assert decide(policy, EMPTY, "DELETE FROM public.t").reason == (
        "role engineering may not write (delete) public.t: pgguard has not read the database's catalog, so it cannot"
        " tell what else the write reaches; pgguard cannot follow that, so only a role that may write every table may"
        " set it off")
    assert decide(policy, EMPTY, "DELETE FROM public.t", "everywhere").allowed
    assert decide(policy, EMPTY, "SELECT * FROM public.t FOR UPDATE").allowed  # a lock sets nothing off
    # pgguard explain --offline reads no catalog on purpose, and takes the names as they are.
    guard = SessionGuard(policy, ["engineering"], "pgguard_engineer", lambda: EMPTY, assume_builtin=True)
    assert guard.check_query("DELETE FROM public.t")[-1].allowed


@pytest.mark.parametrize(("ddl", "changed"), [
    ("CREATE TABLE a (id int)", set()),
    ("CREATE TABLE a (id int REFERENCES s.b ON DELETE CASCADE)", {Name("s", "b")}),
    ("CREATE TABLE a PARTITION OF p FOR VALUES IN (1)", {Name(None, "p"), Name(None, "a")}),
    ("CREATE TABLE a () INHERITS (p)", {Name(None, "p"), Name(None, "a")}),
    ("ALTER TABLE t ADD COLUMN x int", set()),
    ("ALTER TABLE t ADD CONSTRAINT k FOREIGN KEY (x) REFERENCES b ON DELETE CASCADE", {Name(None, "b")}),
    ("ALTER TABLE t ENABLE TRIGGER a", {Name(None, "t")}),
    ("ALTER TABLE t ADD COLUMN x int, ALTER COLUMN y TYPE text", {Name(None, "t")}),
    ("ALTER TABLE p ATTACH PARTITION c FOR VALUES IN (1)", {Name(None, "p"), Name(None, "c")}),
    ("CREATE TRIGGER g AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", {Name(None, "t")}),
    ("CREATE RULE r AS ON INSERT TO t DO ALSO NOTIFY t", {Name(None, "t")}),
    ("CREATE VIEW v AS SELECT * FROM t", {Name(None, "v")}),
    ("CREATE INDEX ON t (x)", set()),
    ("CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", None),
    ("ALTER FUNCTION f() SET search_path = s", None),
])
def test_what_ddl_may_make_a_write_reach(ddl: str, changed: set[Name] | None) -> None:
    """A session's own DDL is in no snapshot yet: writes to these tables are refused until it is."""
    (statement,) = parse(ddl)
    assert reaches_changed(statement) == changed


def test_a_default_that_calls_a_denied_builtin_is_refused_and_one_of_allowed_builtins_writes_no_further(
        policy: Policy) -> None:
    names = Catalog.from_rows([("s", "pg_catalog", ""), ("s", "public", "")]
                              + [("f", "pg_catalog", name) for name in ("now", "upper", "lo_create")]
                              + [("o", "pg_catalog", "="), ("r", "pg_catalog", "pg_class")])
    catalog = names.with_reaches([], [], [], [], [["public", "emp", "default", "at", "now()"],
                                                  ["public", "emp", "check", "ok", "upper('x') = 'X'"],
                                                  ["public", "blob", "default", "oid", "lo_create(0)"]])
    assert {reach.calls for reach in catalog.reaches["public.emp"]} == {frozenset({"now"}), frozenset({"upper"})}
    assert decide(policy, catalog, "INSERT INTO emp VALUES (1)").allowed
    assert decide(policy, catalog, "DELETE FROM blob").allowed  # a DELETE evaluates no default
    assert decide(policy, catalog, "INSERT INTO blob VALUES (1)").reason == (
        "function lo_create() is denied, and a write (insert) to blob calls it through the default of column oid"
        " of public.blob")
    # Approval rules hold writes to these tables by name: what they set off writes no other table.
    assert catalog.writes_further == frozenset()
