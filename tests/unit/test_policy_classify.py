"""pgguard.policy without a database: what classify reads off a statement, and what SessionGuard decides.

The policy is the demo's own (written by `write_config`, read back by
`pgguard.config.load`); the catalog is a hand-built snapshot with a few
built-in and user-defined names, so every resolution below is deliberate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.demo import data
from pgguard.policy.catalog import Catalog
from pgguard.policy.classify import (ADMIN, DCL, DDL, MAINTENANCE, OTHER, PROCEDURAL, READ, SESSION, TRANSACTION,
                                     WRITE, Name, Unsupported, parse, pg_true, split_identifiers)
from pgguard.policy.guard import Decision, Policy, SessionGuard, parse_search_path, startup_settings
from pgguard.policy.scope import qualify

READER = data.READER

_BUILTIN_FUNCTIONS = ("lower", "upper", "count", "sum", "avg", "now", "coalesce", "generate_series", "date_trunc",
                      "pg_read_file", "lo_import", "set_config", "current_setting", "nextval", "setval", "currval",
                      "pg_terminate_backend", "query_to_xml", "ts_stat", "pg_advisory_lock", "row_number",
                      "json_agg", "format_type", "has_table_privilege", "pg_notify")
_BUILTIN_OPERATORS = ("=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "||", "~~", "->>")

CATALOG = Catalog.from_rows(
    [("s", schema, "") for schema in ("pg_catalog", "information_schema", "public", "hidden", "Hidden",
                                      "analytics")]
    + [("r", "pg_catalog", rel) for rel in ("pg_class", "pg_attribute", "pg_namespace", "pg_proc",
                                              "pg_statistic", "pg_stats", "pg_settings")]
    + [("f", "pg_catalog", name) for name in _BUILTIN_FUNCTIONS]
    + [("f", "public", name) for name in ("wipe", "wipe_row", "to_boom", "chk")]
    + [("f", "analytics", "lower")]  # shadows a built-in, but only where analytics is on the path
    + [("o", "pg_catalog", op) for op in _BUILTIN_OPERATORS]
    + [("o", "public", "<<<>>>")]
    + [("c", "public.to_boom", "boom"), ("c", "public.chk", "dom")]
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return Policy(load(offline_demo_config(tmp_path_factory.mktemp("policy"))))


GuardFactory = Callable[..., SessionGuard]


@pytest.fixture
def make_guard(policy: Policy) -> GuardFactory:
    def make(role: str = "analysts", catalog: Catalog = CATALOG, login: str = READER, **kwargs: object) -> SessionGuard:
        return SessionGuard(policy, [role], login, lambda: catalog, **kwargs)  # type: ignore[arg-type]
    return make


def one(sql: str):
    (statement,) = parse(sql)
    return statement


def refusal(guard: SessionGuard, sql: str) -> Decision:
    decisions = guard.check_query(sql)
    assert decisions and not decisions[-1].allowed, f"{sql!r} was allowed"
    return decisions[-1]


def allowed(guard: SessionGuard, sql: str) -> bool:
    return all(decision.allowed for decision in guard.check_query(sql))


def n(text: str) -> Name:
    schema, _, name = text.rpartition(".")
    return Name(schema or None, name)


# --- classes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "classes"), [
    ("SELECT 1", {READ}),
    ("TABLE orders", {READ}),
    ("VALUES (1)", {READ}),
    ("SHOW search_path", {READ}),
    ("INSERT INTO t VALUES (1)", {READ, WRITE}),  # VALUES is a SELECT in the tree
    ("INSERT INTO t DEFAULT VALUES", {WRITE}),
    ("UPDATE t SET a = 1", {WRITE}),
    ("DELETE FROM t", {WRITE}),
    ("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", {WRITE}),
    ("TRUNCATE t", {WRITE}),
    ("LOCK TABLE t", {WRITE}),
    ("LOCK TABLE t IN ACCESS SHARE MODE", {READ}),
    ("NOTIFY chan", {WRITE}),
    ("SELECT * FROM t FOR UPDATE", {READ, WRITE}),
    ("SELECT nextval('s')", {READ, WRITE}),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", {READ, WRITE}),
    ("SELECT * INTO t2 FROM t", {READ, DDL}),
    ("CREATE TABLE t2 AS SELECT * FROM t", {DDL, READ}),
    ("CREATE TABLE t2 (a int)", {DDL}),
    ("ALTER TABLE t ADD COLUMN b int", {DDL}),
    ("DROP TABLE t", {DDL}),
    ("COMMENT ON TABLE t IS 'x'", {DDL}),
    ("CREATE EXTENSION dblink", {DDL}),
    ("GRANT SELECT ON t TO PUBLIC", {DCL}),
    ("REVOKE SELECT ON t FROM PUBLIC", {DCL}),
    ("CREATE ROLE r", {DCL}),
    ("ALTER ROLE r SET search_path = x", {DCL}),
    ("SET statement_timeout = 1000", {SESSION}),
    ("RESET ALL", {SESSION}),
    ("DISCARD ALL", {SESSION}),
    ("LISTEN chan", {SESSION}),
    ("BEGIN", {TRANSACTION}),
    ("COMMIT", {TRANSACTION}),
    ("SAVEPOINT a", {TRANSACTION}),
    ("VACUUM t", {MAINTENANCE}),
    ("ANALYZE t", {MAINTENANCE}),
    ("CLUSTER t USING t_pkey", {MAINTENANCE}),
    ("REINDEX TABLE t", {MAINTENANCE}),
    ("REFRESH MATERIALIZED VIEW mv", {MAINTENANCE}),
    ("DO $$ BEGIN NULL; END $$", {PROCEDURAL}),
    ("CALL p()", {PROCEDURAL}),
    ("ALTER SYSTEM SET work_mem = '1GB'", {ADMIN}),
    ("CHECKPOINT", {ADMIN}),
    ("LOAD 'plugin'", {ADMIN}),
    ("PREPARE TRANSACTION 'x'", {ADMIN}),
    ("COPY t TO '/tmp/f'", {ADMIN, READ}),
    ("COPY t FROM PROGRAM 'true'", {ADMIN, WRITE}),
    ("COPY t FROM STDIN", {WRITE}),
    ("COPY t TO STDOUT", {READ}),
    ("EXPLAIN DELETE FROM t", {READ}),
    ("EXPLAIN ANALYZE DELETE FROM t", {WRITE}),
    ("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1", {WRITE}),
    ("EXPLAIN (ANALYZE true) DELETE FROM t", {WRITE}),
    ("EXPLAIN (ANALYZE 1) DELETE FROM t", {WRITE}),
    ("EXPLAIN (ANALYZE on, ANALYZE off) DELETE FROM t", {WRITE}),  # PostgreSQL refuses it; pgguard errs on
    ("EXPLAIN (ANALYZE '0') DELETE FROM t", {WRITE}),  # not a boolean PostgreSQL reads
    ("EXPLAIN (ANALYZE false) DELETE FROM t", {READ}),
    ("EXPLAIN (ANALYZE OFF) DELETE FROM t", {READ}),
    ("EXPLAIN (ANALYZE 0, COSTS off) DELETE FROM t", {READ}),
    ("PREPARE p AS DELETE FROM t", {WRITE}),
    ("DECLARE c CURSOR FOR SELECT * FROM t", {READ}),
])
def test_statement_class(sql: str, classes: set[str]) -> None:
    assert one(sql).classes == classes


def test_a_statement_type_classify_does_not_know_is_other_and_refused(make_guard: GuardFactory) -> None:
    from pgguard.policy.classify import Statement, _Walker

    statement = Statement("FutureStmt", "FUTURE THING", 0)
    _Walker(statement).statement("FutureStmt", {"relation": {"RangeVar": {"relname": "orders"}}})
    assert statement.classes == {OTHER} and statement.reads == {n("orders")}
    decision = make_guard("engineering").decide(statement)
    assert not decision.allowed
    assert decision.reason == "role engineering may not run statements pgguard cannot classify"


# --- reads and writes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "reads", "writes"), [
    ("SELECT * FROM orders o JOIN public.customers c ON c.id = o.customer_id",
     {"orders", "public.customers"}, {}),
    ("SELECT (SELECT max(id) FROM tickets) FROM orders WHERE id IN (SELECT 1 FROM customers)",
     {"tickets", "orders", "customers"}, {}),
    ("DELETE FROM orders WHERE id = 1", {"orders"}, {"orders": {"delete"}}),
    ("INSERT INTO tickets SELECT * FROM orders", {"orders"}, {"tickets": {"insert"}}),
    ("INSERT INTO tickets VALUES (1) RETURNING id", {"tickets"}, {"tickets": {"insert"}}),
    ("INSERT INTO tickets VALUES (1) ON CONFLICT (id) DO UPDATE SET status = tickets.status",
     {"tickets"}, {"tickets": {"insert", "update"}}),
    ("UPDATE orders SET total = 0 FROM customers WHERE customers.id = orders.customer_id",
     {"orders", "customers"}, {"orders": {"update"}}),
    ("MERGE INTO orders o USING tickets t ON o.id = t.id WHEN MATCHED THEN DELETE",
     {"orders", "tickets"}, {"orders": {"merge", "delete"}}),
    ("WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", {"orders"}, {"orders": {"delete"}}),
    ("WITH a AS (SELECT 1), b AS (WITH c AS (UPDATE orders SET total = 0 RETURNING 1) SELECT * FROM c) "
     "SELECT * FROM b", {"orders"}, {"orders": {"update"}}),
    ("SELECT * FROM (WITH x AS (INSERT INTO tickets VALUES (1) RETURNING 1) SELECT * FROM x) s",
     {"tickets"}, {"tickets": {"insert"}}),
    ("TRUNCATE orders, tickets", set(), {"orders": {"truncate"}, "tickets": {"truncate"}}),
    ("LOCK orders IN ROW SHARE MODE", set(), {"orders": {"lock"}}),
    ("LOCK orders, public.tickets IN ACCESS SHARE MODE NOWAIT", {"orders", "public.tickets"}, {}),
    ("SELECT * FROM orders FOR KEY SHARE", {"orders"}, {"orders": {"lock"}}),
    ("COPY orders FROM STDIN", set(), {"orders": {"copy"}}),
    ("COPY (DELETE FROM orders RETURNING *) TO STDOUT", {"orders"}, {"orders": {"delete"}}),
    ("SELECT setval('orders_id_seq', 1)", set(), {"orders_id_seq": {"setval"}}),
    ("SELECT pg_catalog.nextval('public.orders_id_seq')", set(), {"public.orders_id_seq": {"nextval"}}),
    ("EXPLAIN DELETE FROM orders", {"orders"}, {}),
    ("EXPLAIN ANALYZE DELETE FROM orders", {"orders"}, {"orders": {"delete"}}),
    ("SELECT * INTO newtab FROM orders", {"orders"}, {"newtab": {"ddl"}}),
    ("DROP TABLE orders, public.tickets", set(), {"orders": {"ddl"}, "public.tickets": {"ddl"}}),
    ('DELETE FROM "orders"', {"orders"}, {"orders": {"delete"}}),
    ('DELETE FROM "public"."orders"', {"public.orders"}, {"public.orders": {"delete"}}),
    ('DELETE FROM U&"\\0063ustomers"', {"customers"}, {"customers": {"delete"}}),
    ('DELETE FROM "Orders"', {"Orders"}, {"Orders": {"delete"}}),
    ("/* x */ DELETE -- y\n FROM orders", {"orders"}, {"orders": {"delete"}}),
    ("DELETE FROM demo.public.orders", {"public.orders"}, {"public.orders": {"delete"}}),
])
def test_reads_and_writes(sql: str, reads: set[str], writes: dict[str, set[str]]) -> None:
    statement = one(sql)
    assert statement.reads == {n(r) for r in reads}
    assert statement.writes == {n(w): kinds for w, kinds in writes.items()}


def test_a_cte_name_is_a_table_inside_its_own_non_recursive_body() -> None:
    """WITH t AS (SELECT * FROM t) reads the table t: hiding a read behind a CTE of the same name fails."""
    assert one("WITH victim AS (SELECT * FROM victim) SELECT * FROM victim").reads == {n("victim")}
    # A later sibling's name is a table too; an earlier one's is the CTE.
    assert one("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a").reads == {n("b")}
    assert one("WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b").reads == set()
    # Recursive: the name is the CTE everywhere.
    assert one("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r").reads == set()
    # And in a DML statement's WITH.
    assert one("WITH t AS (SELECT * FROM t) DELETE FROM orders WHERE id IN (SELECT 1 FROM t)").reads == \
        {n("t"), n("orders")}


def test_a_lock_counts_on_a_relation_read_elsewhere_in_the_statement_too() -> None:
    statement = one("SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM orders FOR UPDATE)")
    assert statement.writes == {n("orders"): {"lock"}}
    statement = one("WITH l AS (SELECT * FROM tickets FOR SHARE) SELECT * FROM tickets, l")
    assert statement.writes == {n("tickets"): {"lock"}}
    # Without a locking clause nothing is written.
    assert one("SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM orders)").writes == {}


# --- functions, operators, casts --------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "functions", "operators"), [
    ("SELECT lower(full_name), count(*) FROM customers GROUP BY 1", {"lower", "count"}, set()),
    ("SELECT pg_catalog.pg_read_file('x')", {"pg_catalog.pg_read_file"}, set()),
    ('SELECT "pg_read_file"(\'x\'), PG_READ_FILE(\'y\')', {"pg_read_file"}, set()),
    ("SELECT * FROM wipe()", {"wipe"}, set()),
    ("SELECT * FROM orders WHERE wipe() = 1", {"wipe"}, {"="}),
    ("WITH x AS (SELECT public.wipe()) SELECT * FROM x", {"public.wipe"}, set()),
    ("SELECT 1 <<<>>> 2", set(), {"<<<>>>"}),
    ("SELECT 1 OPERATOR(public.<<<>>>) 2", set(), {"public.<<<>>>"}),
    ("SELECT 1 <<<>>> ANY (ARRAY[2])", set(), {"<<<>>>"}),
    ("SELECT 1 <<<>>> ANY (SELECT 2)", set(), {"<<<>>>"}),
    ("SELECT * FROM t ORDER BY a USING <<<>>>", set(), {"<<<>>>"}),
    ("SELECT CASE a WHEN 1 THEN 2 END FROM t", set(), {"="}),
    ("SELECT a BETWEEN 1 AND 2 FROM t", set(), {">=", "<="}),
    ("SELECT a FROM t WHERE a IS DISTINCT FROM 1 AND b LIKE 'x%'", set(), {"=", "~~"}),
    ("SELECT sum(total) FILTER (WHERE total > 0) OVER (PARTITION BY status) FROM orders", {"sum"}, {">"}),
])
def test_functions_and_operators(sql: str, functions: set[str], operators: set[str]) -> None:
    statement = one(sql)
    assert statement.functions == {n(f) for f in functions}
    assert {str(op) for op in statement.operators} == operators


def test_field_selection_may_be_a_function_call_and_is_recorded() -> None:
    """`o.f` and `(o).f` call f(o) when no column f exists: attribute notation."""
    assert one("SELECT o.wipe_row, (o).other, t.a.b FROM orders o").attributes == {"wipe_row", "other", "a", "b"}
    assert one("SELECT o.* FROM orders o").attributes == set()


@pytest.mark.parametrize("sql", ["SELECT ('orders_id_seq'::regclass).nextval", "SELECT (s).setval FROM t s",
                                 "SELECT ('hidden.s'::regclass).pg_sequence_last_value"])
def test_a_sequence_function_in_attribute_notation_is_unsupported(sql: str) -> None:
    """`(x).nextval` is nextval(x), of a sequence the text does not name."""
    with pytest.raises(Unsupported, match="attribute notation"):
        parse(sql)


def test_explicit_casts_are_recorded() -> None:
    assert one("SELECT 1::boom, CAST(2 AS public.dom), boom '3'").casts == {n("boom"), n("public.dom")}


def test_column_definition_lists_count_as_casts() -> None:
    """Each column of a definition list (XMLTABLE's COLUMNS too) is read from text by its type's input,
    which runs a domain's checks."""
    assert one("SELECT * FROM json_to_record('{}') AS t(a dom, b int)").casts == {n("dom"), n("pg_catalog.int4")}
    assert one("SELECT * FROM ROWS FROM (json_to_record('{}') AS (a dom), generate_series(1, 2))").casts == \
        {n("dom")}
    assert one("SELECT * FROM XMLTABLE('/r' PASSING ('<r/>'::xml) COLUMNS a public.dom PATH 'a')").casts == \
        {n("xml"), n("public.dom")}
    # A table's column definitions are no cast: nothing is read from text there.
    assert one("CREATE TABLE t (a dom)").casts == set()


# --- session settings --------------------------------------------------------------------------------


@pytest.mark.parametrize("sql", [
    "SET default_transaction_read_only = off",
    "SET default_transaction_read_only TO false",
    "SET default_transaction_read_only = 0",
    "SET default_transaction_read_only = 'f'",
    "SET default_transaction_read_only = 'fal'",
    "SET default_transaction_read_only = 'n'",
    "SET default_transaction_read_only = 'of'",
    "SET default_transaction_read_only = 'OFF'",
    'SET "DEFAULT_TRANSACTION_READ_ONLY" = off',
    "SET transaction_read_only = no",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "SET TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT set_config('transaction_read_only', 'f', true)",
    "SELECT set_config('default_transaction_read_only', NULL, false)",
    # transaction_read_only's default is off, whatever default_transaction_read_only says.
    "SET transaction_read_only = DEFAULT",
    "SET LOCAL transaction_read_only TO DEFAULT",
    "RESET transaction_read_only",
    'RESET "TRANSACTION_READ_ONLY"',
])
def test_asking_for_read_write(sql: str) -> None:
    assert one(sql).read_write


@pytest.mark.parametrize("sql", [
    "SET default_transaction_read_only = on",
    "SET default_transaction_read_only = 't'",
    "SET default_transaction_read_only = yes",
    "SET default_transaction_read_only TO DEFAULT",
    "RESET default_transaction_read_only",
    "BEGIN READ ONLY",
    "BEGIN",
    "SET statement_timeout = 0",
])
def test_not_asking_for_read_write(sql: str) -> None:
    assert not one(sql).read_write


@pytest.mark.parametrize(("value", "true"), [
    ("on", True), ("ON", True), ("1", True), ("t", True), ("tr", True), ("true", True), ("y", True), ("yes", True),
    ("off", False), ("of", False), ("o", False), ("0", False), ("f", False), ("false", False), ("n", False),
    ("no", False), ("", False), (" on", False), ("truex", False),
])
def test_pg_true_reads_booleans_as_postgresql_does(value: str, true: bool) -> None:
    assert pg_true(value) is true


def test_set_search_path_values_are_single_schema_names() -> None:
    """SET quotes each value: 'a,b' is one schema named "a,b"; a quoted identifier keeps its case."""
    (setting,) = one("SET search_path = \"Hidden\", 'a,b', Public").settings
    assert setting[0] == "search_path"
    assert parse_search_path(setting[1]) == ("Hidden", "a,b", "public")
    # set_config's value is a list string, read as PostgreSQL reads it.
    (setting,) = one("SELECT set_config('search_path', 'Hidden, \"Hidden\",\"a,b\"', false)").settings
    assert parse_search_path(setting[1]) == ("hidden", "Hidden", "a,b")


def test_a_search_path_pgguard_cannot_read_is_unsupported() -> None:
    with pytest.raises(Unsupported):
        parse("SELECT set_config('search_path', 'public, \"unterminated', false)")
    with pytest.raises(Unsupported):
        parse("SELECT set_config('search_path', current_user, false)")


@pytest.mark.parametrize(("text", "names"), [
    ("public", ["public"]),
    ('"$user", public', ["$user", "public"]),
    ("  A ,b,\"C D\" ", ["a", "b", "C D"]),
    ('"a""b"', ['a"b']),
    ('"", public', ["", "public"]),  # PostgreSQL takes an empty quoted name (SET search_path = '', public)
    ("", []),
    ("a,,b", None),
    ('"x', None),
    ("a b", None),
    ("Ä", ["Ä"]),  # only ASCII folds
    ("x" * 70, ["x" * 63]),  # NAMEDATALEN
])
def test_split_identifiers(text: str, names: list[str] | None) -> None:
    assert split_identifiers(text) == names


def test_a_sequence_s_last_value_is_a_read_of_it() -> None:
    assert one("SELECT pg_sequence_last_value('hidden.s')").reads == {n("hidden.s")}
    assert one("SELECT pg_catalog.pg_sequence_last_value('\"S\"')").reads == {Name(None, "S")}
    assert one("SELECT pg_sequence_last_value('s'::regclass)").reads == {Name(None, "s")}
    for sql in ("SELECT pg_sequence_last_value(oid) FROM pg_class",
                "SELECT pg_sequence_last_value('s'::text::regclass)"):
        with pytest.raises(Unsupported, match="not a constant"):
            parse(sql)


def test_sequence_names_are_read_as_regclass_reads_them() -> None:
    assert one("SELECT nextval('\"Public\".Orders_Seq')").writes == {Name("Public", "orders_seq"): {"nextval"}}
    # As a column default prints it: regclass reads the text either way.
    assert one("SELECT nextval('orders_id_seq'::regclass)").writes == {Name(None, "orders_id_seq"): {"nextval"}}
    with pytest.raises(Unsupported, match="by its OID"):
        parse("SELECT nextval('16440'::pg_catalog.regclass)")
    with pytest.raises(Unsupported):
        parse("SELECT nextval(relname) FROM pg_class")


def test_discard_all_forgets_prepared_statements_and_resets_settings() -> None:
    statement = one("DISCARD ALL")
    assert statement.deallocates == "*" and statement.settings == [("all", None)]


def test_garbage_does_not_parse() -> None:
    with pytest.raises(Unsupported, match="does not parse"):
        parse("DELETE FROM WHERE orders")


def test_statement_locations_are_byte_offsets() -> None:
    first, second = parse("SELECT 'é'; /* c */ DELETE FROM t")
    assert (first.location, first.text) == (0, "SELECT 'é'")
    assert "SELECT 'é'; /* c */ ".encode().__len__() == second.location
    assert second.text == "DELETE FROM t" and second.verb == "DELETE"


# --- startup settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("params", "settings"), [
    ({"user": "u", "database": "d"}, []),
    ({"user": "u", "options": "-c search_path=hidden"}, [("search_path", "hidden")]),
    ({"options": "-csearch_path=a -c statement_timeout=5"}, [("search_path", "a"), ("statement_timeout", "5")]),
    ({"options": "--default-transaction-read-only=off"}, [("default_transaction_read_only", "off")]),
    ({"options": r"-c application_name=a\ b\\c"}, [("application_name", r"a b\c")]),
    ({"options": "  -c   Role=postgres  "}, [("role", "postgres")]),
    ({"application_name": "psql", "client_encoding": "UTF8", "DateStyle": "ISO"}, [("datestyle", "ISO")]),
    ({"search_path": "hidden", "options": "-c x=1"}, [("search_path", "hidden"), ("x", "1")]),
])
def test_startup_settings(params: dict[str, str], settings: list[tuple[str, str]]) -> None:
    assert startup_settings(params) == settings


@pytest.mark.parametrize("options", ["-e", "-d 5", "-c", "-c x", "--x", "-c =1", "search_path=x", "-B 100", "-P",
                                     "-c application_name=x\\"])
def test_startup_switches_other_than_settings_are_unsupported(options: str) -> None:
    with pytest.raises(Unsupported):
        startup_settings({"options": options})


@pytest.mark.parametrize(("settings", "allowed_", "text"), [
    ([("application_name", "x"), ("statement_timeout", "5s")], True, None),
    ([("role", "postgres")], False, "setting role is reserved"),
    ([("session_authorization", "postgres")], False, "setting session_authorization is reserved"),
    ([("default_transaction_read_only", "off")], False, "may not write anything"),
    ([("default_transaction_read_only", "f")], False, "may not write anything"),
    ([("standard_conforming_strings", "off")], False, "standard_conforming_strings"),
])
def test_check_startup(make_guard: GuardFactory, settings: list[tuple[str, str]], allowed_: bool,
                       text: str | None) -> None:
    decision = make_guard().check_startup(settings)
    assert decision.allowed is allowed_
    if text:
        assert decision.message.startswith("pgguard:") and text in decision.message


def test_a_startup_search_path_is_a_list_string(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert guard.check_startup([("search_path", "Hidden, public")]).allowed
    assert refusal(guard, "SELECT * FROM orders").reason == "role analysts may not read hidden.orders"


# --- name resolution -------------------------------------------------------------------------------------


def test_default_search_path(make_guard: GuardFactory) -> None:
    guard = make_guard()
    # No schema is named after the login, so "$user" adds nothing.
    assert guard.resolve(Name(None, "orders")) == ["public.orders"]
    assert guard.resolve(Name("hidden", "orders")) == ["hidden.orders"]
    # A system relation: pg_catalog is searched first, so nothing else is.
    assert guard.resolve(Name(None, "pg_class")) == ["pg_catalog.pg_class"]


def test_user_schema_where_it_exists(make_guard: GuardFactory) -> None:
    """A schema named after the upstream login comes first on the default path, and is checked."""
    with_user = Catalog.from_rows([("s", "public", ""), ("s", READER, ""), ("r", "pg_catalog", "pg_class")])
    guard = make_guard(catalog=with_user)
    assert guard.resolve(Name(None, "orders")) == [f"{READER}.orders", "public.orders"]
    assert refusal(guard, "SELECT * FROM orders").reason == f"role analysts may not read {READER}.orders"
    assert make_guard(catalog=with_user, login="someone_else").resolve(Name(None, "orders")) == ["public.orders"]


def test_search_path_is_the_union_of_every_path_set(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "SET search_path = hidden")
    assert allowed(guard, "SET search_path = public")
    assert set(guard.resolve(Name(None, "orders"))) == {"public.orders", "hidden.orders"}
    # Even a SET inside a transaction that rolls back stays in the union.
    assert allowed(guard, "BEGIN; SET LOCAL search_path = analytics; ROLLBACK")
    assert "analytics.orders" in guard.resolve(Name(None, "orders"))
    assert refusal(guard, "SELECT * FROM orders").reason.startswith("role analysts may not read")


def test_pg_catalog_placed_later_in_the_path_lets_a_schema_shadow_system_relations(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "SET search_path = hidden, pg_catalog")
    assert set(guard.resolve(Name(None, "pg_class"))) == {"hidden.pg_class", "pg_catalog.pg_class"}
    assert refusal(guard, "SELECT * FROM pg_class").reason == "role analysts may not read hidden.pg_class"


def test_quoted_search_path_entries_keep_their_case(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, 'SET search_path = "Hidden"')
    assert "Hidden.orders" in guard.resolve(Name(None, "orders"))
    assert "hidden.orders" not in guard.resolve(Name(None, "orders"))
    guard = make_guard()
    assert allowed(guard, "SET search_path = 'public, Hidden'")  # one schema named "public, Hidden"
    assert "public, Hidden.orders" in guard.resolve(Name(None, "orders"))


def test_reset_and_set_config_reach_the_search_path(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "SELECT set_config('search_path', 'hidden', false)")
    assert "hidden.orders" in guard.resolve(Name(None, "orders"))
    assert allowed(guard, "RESET search_path")
    assert "public.orders" in guard.resolve(Name(None, "orders"))


@pytest.mark.parametrize("sql", ["RESET search_path", "SET search_path TO DEFAULT", "RESET ALL", "DISCARD ALL"])
def test_back_to_the_default_search_path(make_guard: GuardFactory, sql: str) -> None:
    """The default path holds "$user", which is the login's schema, not a schema named "$user"."""
    guard = make_guard()
    assert allowed(guard, sql)
    assert set(guard.resolve(Name(None, "orders"))) == {"public.orders"}
    assert allowed(guard, "SELECT * FROM orders")


def test_a_schema_with_a_dot_in_its_name_does_not_match_a_wildcard_of_another_schema(
        make_guard: GuardFactory) -> None:
    assert qualify("public.payroll", "salaries") == '"public.payroll".salaries'
    assert qualify("public", "orders") == "public.orders"
    guard = make_guard("engineering")
    assert allowed(guard, "DELETE FROM public.orders WHERE id = 1")
    decision = refusal(guard, 'DELETE FROM "public.payroll".salaries')
    assert decision.reason == 'role engineering may not read "public.payroll".salaries'
    decision = refusal(guard, 'INSERT INTO "public.payroll".salaries DEFAULT VALUES')
    assert decision.reason == 'role engineering may not write (insert) "public.payroll".salaries'
    # A table of public with a dot in its name is still public's.
    assert allowed(guard, 'DELETE FROM public."orders.x"')


def test_unqualified_functions_resolve_through_the_path(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "SELECT lower('X')")
    assert allowed(guard, "SET search_path = analytics, public")
    assert refusal(guard, "SELECT lower('X')").reason == \
        "user-defined function analytics.lower() is not listed as safe"


# --- decisions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sql", "verb", "reason", "rule"), [
    ("DELETE FROM orders WHERE id = 1", "DELETE", "role analysts may not write (delete) public.orders", "write"),
    ("INSERT INTO public.tickets VALUES (1)", "INSERT", "role analysts may not write (insert) public.tickets",
     "write"),
    ("WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", "WITH",
     "role analysts may not write (delete) public.orders", "write"),
    ("SELECT * FROM orders FOR UPDATE", "SELECT", "role analysts may not write (lock) public.orders", "write"),
    ("EXPLAIN ANALYZE UPDATE orders SET total = 0", "EXPLAIN",
     "role analysts may not write (update) public.orders", "write"),
    ("SELECT nextval('orders_id_seq')", "SELECT", "role analysts may not write (nextval) public.orders_id_seq",
     "write"),
    ("SELECT * FROM hidden.orders", "SELECT", "role analysts may not read hidden.orders", "read"),
    ("DELETE FROM pg_temp.orders", "DELETE", "role analysts may not write anything", "write"),
    ("SELECT last_value FROM pg_sequences", "SELECT", "role analysts may not read pg_catalog.pg_sequences", "read"),
    ("VACUUM orders", "VACUUM", "role analysts may not run maintenance statements", "statements"),
    ("DO $$ BEGIN NULL; END $$", "DO", "role analysts may not run procedural statements", "statements"),
    ("GRANT SELECT ON orders TO PUBLIC", "GRANT", "role analysts may not run dcl statements", "statements"),
    ("CREATE TABLE x (a int)", "CREATE", "role analysts may not run ddl statements", "statements"),
    ("COPY orders TO '/tmp/x'", "COPY", "role analysts may not run admin statements", "statements"),
    ("SET ROLE postgres", "SET", "setting role is reserved", "statements"),
    ("SELECT set_config('role', 'postgres', false)", "SELECT", "setting role is reserved", "statements"),
    ("SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'role'", "SELECT",
     "setting role is reserved", "statements"),
    ("SET SESSION AUTHORIZATION postgres", "SET", "setting session_authorization is reserved", "statements"),
    ("SET default_transaction_read_only = off", "SET", "role analysts may not write anything", "write"),
    ("BEGIN READ WRITE", "BEGIN", "role analysts may not write anything", "write"),
    ("NOTIFY chan", "NOTIFY", "role analysts may not write anything", "write"),
    ("SET standard_conforming_strings = off", "SET", "setting standard_conforming_strings to off is reserved",
     "statements"),
    ("SELECT pg_read_file('postgresql.conf')", "SELECT", "function pg_read_file() is denied", "functions"),
    ("SELECT lo_import('/etc/passwd')", "SELECT", "function lo_import() is denied", "functions"),
    ("SELECT pg_terminate_backend(1)", "SELECT", "function pg_terminate_backend() is denied", "functions"),
    ("SELECT query_to_xml('DELETE FROM orders', true, true, '')", "SELECT", "function query_to_xml() is denied",
     "functions"),
    ("SELECT ts_stat('DELETE FROM orders')", "SELECT", "function ts_stat() is denied", "functions"),
    ("SELECT dblink_exec('x', 'DELETE FROM orders')", "SELECT", "function dblink_exec() is denied", "functions"),
    ("SELECT pg_advisory_lock(1)", "SELECT", "function pg_advisory_lock() is denied", "functions"),
    ("SELECT brin_summarize_new_values('orders_brin')", "SELECT", "function brin_summarize_new_values() is denied",
     "functions"),
    ("SELECT wipe()", "SELECT", "user-defined function public.wipe() is not listed as safe", "functions"),
    ("SELECT no_such_function()", "SELECT", "function no_such_function() is unknown to pgguard", "functions"),
    ("SELECT 1 <<<>>> 2", "SELECT", "user-defined operator public.<<<>>> is not listed as safe", "functions"),
    ("SELECT 1 <<<>>> ANY (SELECT 2)", "SELECT", "user-defined operator public.<<<>>> is not listed as safe",
     "functions"),
    ("SELECT o.wipe_row FROM orders o", "SELECT",
     "user-defined function public.wipe_row() is not listed as safe (.wipe_row may call it in attribute notation)",
     "functions"),
    ("SELECT (1::bigint).pg_advisory_lock", "SELECT",
     "function pg_advisory_lock() is denied (.pg_advisory_lock may call it in attribute notation)", "functions"),
    ("SELECT 1::boom", "SELECT",
     "a cast to boom runs user-defined function public.to_boom(), which is not listed as safe", "functions"),
    ("SELECT CAST(1 AS public.dom)", "SELECT",
     "a cast to public.dom runs user-defined function public.chk(), which is not listed as safe", "functions"),
])
def test_refusal_messages(make_guard: GuardFactory, sql: str, verb: str, reason: str, rule: str) -> None:
    decision = refusal(make_guard(), sql)
    assert decision.reason == reason
    assert decision.rule == f"roles.analysts.{rule}"
    assert decision.message == f"pgguard: {verb} refused: {reason} (rule roles.analysts.{rule})"


def test_a_statement_that_does_not_parse_is_refused_with_a_clear_message(make_guard: GuardFactory) -> None:
    (decision,) = make_guard().check_query("SELEC * FROM orders")
    assert not decision.allowed and decision.statement is None
    assert decision.message.startswith("pgguard: statement refused: the statement does not parse")
    assert decision.hint == "pgguard cannot analyse it, so it is not forwarded"


@pytest.mark.parametrize("sql", ["SELECT 1" + " + 1" * 3000,
                                 "SELECT * FROM " + "(SELECT * FROM " * 400 + "orders" + ") s" * 400])
def test_a_statement_nested_too_deeply_to_analyse_is_refused(make_guard: GuardFactory, sql: str) -> None:
    guard = make_guard()
    for _ in range(2):  # and again, from whatever the first attempt left cached
        assert refusal(guard, sql).reason == "the statement nests too deeply for pgguard to analyse"
    assert allowed(guard, "SELECT 1 + 1 + 1")


def test_a_table_reached_through_inheritance_or_partitioning_is_checked_too(make_guard: GuardFactory) -> None:
    catalog = replace(CATALOG, descendants={"public.events": frozenset({"public.events_1", "hidden.events_2"})})
    guard = make_guard(catalog=catalog)
    for sql in ("SELECT * FROM events", "SELECT * FROM ONLY public.events"):
        assert refusal(guard, sql).reason == "role analysts may not read hidden.events_2 (reached through public.events)"
    assert allowed(guard, "SELECT * FROM events_1")
    writer = make_guard("engineering", catalog=catalog)
    assert refusal(writer, "INSERT INTO events DEFAULT VALUES").reason == \
        "role engineering may not write (insert) hidden.events_2 (reached through public.events)"
    inside = replace(CATALOG, descendants={"public.events": frozenset({"public.events_1"})})
    assert allowed(make_guard(catalog=inside), "SELECT * FROM events")
    assert allowed(make_guard("engineering", catalog=inside), "INSERT INTO events DEFAULT VALUES")


def test_catalog_descendants_are_transitive() -> None:
    rows = [["public", "a", "public", "b"], ["public", "b", "hidden", "c"], ["x.y", "d", "public", "a"]]
    descendants = CATALOG.with_inheritance(rows).descendants
    assert descendants == {"public.a": {"public.b", "hidden.c"}, "public.b": {"hidden.c"},
                           '"x.y".d': {"public.a", "public.b", "hidden.c"}}


def test_multi_statement_decisions_stop_at_the_first_refusal(make_guard: GuardFactory) -> None:
    sql = "SELECT 1; DELETE FROM orders; SELECT 2"
    decisions = make_guard().check_query(sql)
    assert [d.allowed for d in decisions] == [True, False]
    assert decisions[1].statement is not None and decisions[1].statement.location == sql.index("DELETE")


@pytest.mark.parametrize(("role", "sql"), [
    ("support", "INSERT INTO tickets (customer_id, subject, body, status) VALUES (1, 's', 'b', 'open')"),
    ("support", "UPDATE tickets SET status = 'closed' WHERE id = 1"),
    ("support", "DELETE FROM public.tickets WHERE id = 1"),
    ("support", "SELECT * FROM tickets FOR UPDATE"),
    ("support", "SELECT t.id FROM tickets t JOIN customers c ON c.id = t.customer_id"),
    ("engineering", "CREATE TABLE public.scratch (a int)"),
    ("engineering", "DELETE FROM orders WHERE id = 1"),
    ("engineering", "WITH x AS (DELETE FROM orders RETURNING *) INSERT INTO tickets SELECT * FROM x"),
    ("engineering", "BEGIN READ WRITE"),
    ("analysts", "SELECT count(*) FROM orders; SET statement_timeout = '5s'; RESET ALL; SHOW search_path"),
    ("analysts", "BEGIN READ ONLY; DECLARE c CURSOR FOR SELECT * FROM orders; FETCH 5 FROM c; CLOSE c; COMMIT"),
    ("analysts", "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"),
    ("analysts", "SELECT * FROM information_schema.columns WHERE table_name = 'orders'"),
    ("analysts", "SELECT CASE status WHEN 'paid' THEN 1 END, total BETWEEN 1 AND 2 FROM orders"),
    ("analysts", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r"),
    ("analysts", "EXPLAIN DELETE FROM orders"),
    ("analysts", "SELECT o.total, (o).status FROM orders o"),
    ("analysts", "SELECT 1::int, '2024-01-01'::date, CAST('x' AS text)"),
])
def test_allowed(make_guard: GuardFactory, role: str, sql: str) -> None:
    decisions = make_guard(role).check_query(sql)
    assert all(d.allowed for d in decisions), [d.message for d in decisions if not d.allowed]


@pytest.mark.parametrize(("role", "sql", "reason"), [
    ("support", "DELETE FROM customers WHERE id = 1", "role support may not write (delete) public.customers"),
    ("support", "UPDATE orders SET total = 0", "role support may not write (update) public.orders"),
    ("support", "SELECT * FROM orders FOR UPDATE", "role support may not write (lock) public.orders"),
    ("support", "SELECT * FROM orders o WHERE EXISTS (SELECT 1 FROM orders FOR UPDATE)",
     "role support may not write (lock) public.orders"),
    ("support", "WITH victim AS (SELECT * FROM victim) SELECT * FROM victim",
     "role support may not read public.victim"),
    ("support", "SELECT setval('tickets_id_seq', 1)", "role support may not write (setval) public.tickets_id_seq"),
    ("support", "CREATE TABLE public.x (a int)", "role support may not run ddl statements"),
    ("engineering", "SET ROLE postgres", "setting role is reserved"),
    ("engineering", "SELECT pg_read_file('x')", "function pg_read_file() is denied"),
    ("engineering", "DO $$ BEGIN NULL; END $$", "role engineering may not run procedural statements"),
    ("engineering", "DELETE FROM hidden.t", "role engineering may not read hidden.t"),
    ("engineering", "INSERT INTO hidden.t DEFAULT VALUES", "role engineering may not write (insert) hidden.t"),
])
def test_refused_for_writers(make_guard: GuardFactory, role: str, sql: str, reason: str) -> None:
    assert refusal(make_guard(role), sql).reason == reason


# --- prepared statements -------------------------------------------------------------------------------------


def test_execute_is_decided_by_what_was_prepared(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert refusal(guard, "PREPARE p AS DELETE FROM orders WHERE id = $1").reason == \
        "role analysts may not write (delete) public.orders"
    decision = refusal(guard, "EXECUTE p(1)")
    assert decision.message == "pgguard: EXECUTE refused: EXECUTE of 'p', which pgguard did not see prepared"
    assert allowed(guard, "PREPARE q AS SELECT * FROM orders WHERE id = $1")
    assert allowed(guard, "EXECUTE q(1)")
    assert allowed(guard, "DEALLOCATE q")
    assert not guard.check_query("EXECUTE q(1)")[0].allowed


def test_a_protocol_level_prepare_can_be_executed_in_sql(make_guard: GuardFactory) -> None:
    guard = make_guard("support")
    assert guard.check_parse("s1", "DELETE FROM tickets WHERE id = $1").allowed
    assert allowed(guard, "EXECUTE s1(1)")
    assert not guard.check_parse("s2", "DELETE FROM orders WHERE id = $1").allowed
    assert refusal(guard, "EXECUTE s2(1)").reason.startswith("EXECUTE of 's2'")
    guard.forget("s1")
    assert not guard.check_query("EXECUTE s1(1)")[0].allowed


def test_a_search_path_set_by_a_prepared_statement_counts(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "PREPARE sp AS SELECT set_config('search_path', 'hidden', false)")
    assert allowed(guard, "EXECUTE sp")
    assert refusal(guard, "SELECT * FROM orders").reason == "role analysts may not read hidden.orders"
    guard = make_guard()
    assert guard.check_parse("sp", "SELECT set_config('search_path', 'hidden', false)").allowed
    assert allowed(guard, "EXECUTE sp")
    assert refusal(guard, "SELECT * FROM orders").reason == "role analysts may not read hidden.orders"


def test_prepare_holds_everything_its_statement_would_be_refused_for(make_guard: GuardFactory) -> None:
    guard = make_guard()
    for sql, reason in [
        ("PREPARE a AS SELECT set_config('role', 'postgres', false)", "setting role is reserved"),
        ("PREPARE b AS SELECT o.wipe_row FROM orders o", "user-defined function public.wipe_row() is not listed"),
        ("PREPARE c AS SELECT 1::boom", "a cast to boom runs user-defined function public.to_boom()"),
        ("EXPLAIN SELECT 1::boom", "a cast to boom runs user-defined function public.to_boom()"),
    ]:
        assert refusal(guard, sql).reason.startswith(reason)


def test_discard_all_forgets_what_was_prepared(make_guard: GuardFactory) -> None:
    guard = make_guard()
    assert allowed(guard, "PREPARE q AS SELECT 1")
    assert allowed(guard, "DISCARD ALL")
    assert guard.prepared.candidates("q") == ()


# --- the cache ----------------------------------------------------------------------------------------------------


def test_classifications_are_shared_by_shape_unless_a_constant_is_read(policy: Policy) -> None:
    first = policy.classify("SELECT * FROM orders WHERE id = 1")
    other = policy.classify("SELECT * FROM orders WHERE id = 22")
    assert other[0].text == "SELECT * FROM orders WHERE id = 22"
    assert (other[0].reads, other[0].classes) == (first[0].reads, first[0].classes)
    # set_config's name is read: a different constant can change the decision.
    assert policy.classify("SELECT set_config('application_name', 'x', false)")[0].settings == \
        [("application_name", ["x"])]
    assert policy.classify("SELECT set_config('role', 'x', false)")[0].settings == [("role", ["x"])]
    assert policy.classify("SELECT set_config('role', 'x', false)")[0].settings == [("role", ["x"])]
    # So is the name pg_dump's set_config(name, …) FROM pg_settings WHERE name = '…' compares with.
    from_settings = "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = '{}'"
    assert policy.classify(from_settings.format("application_name"))[0].settings == [("application_name", ["x"])]
    assert policy.classify(from_settings.format("role"))[0].settings == [("role", ["x"])]


def test_a_catalog_without_functions_refuses_unknown_ones(make_guard: GuardFactory) -> None:
    empty = Catalog.from_rows([("s", "public", "")])
    assert refusal(make_guard(catalog=empty), "SELECT lower('x')").reason == \
        "function lower() is unknown to pgguard"
    assert make_guard(catalog=empty, assume_builtin=True).check_query("SELECT lower('x')")[0].allowed


def test_catalog_from_rows() -> None:
    assert CATALOG.functions["lower"] == frozenset({"pg_catalog", "analytics"})
    assert CATALOG.operators["<<<>>>"] == frozenset({"public"})
    assert CATALOG.casts == {"boom": frozenset({"public.to_boom"}), "dom": frozenset({"public.chk"})}
    assert "pg_class" in CATALOG.system_relations and "Hidden" in CATALOG.schemas


def test_a_row_built_from_text_runs_its_columns_domain_checks(make_guard: GuardFactory) -> None:
    """`w` rows: a row type with a column of a domain whose check calls a user-defined function."""
    catalog = Catalog.from_rows([("s", "public", ""), ("f", "pg_catalog", "json_populate_record"),
                                 ("o", "pg_catalog", "="), ("f", "sly", "noted"), ("w", "sly.noted", "holder")])
    assert catalog.casts == {"holder": frozenset({"sly.noted"})} and catalog.row_checks == {"sly.noted"}
    guard = make_guard(catalog=catalog)
    assert refusal(guard, "SELECT json_populate_record(s, '{}') FROM (SELECT 1 AS a) s").reason == \
        "json_populate_record() builds a row from text, which runs domain checks that call user-defined function" \
        " sly.noted(), which is not listed as safe"
    assert refusal(guard, "SELECT '(1)'::holder").reason == \
        "a cast to holder runs user-defined function sly.noted(), which is not listed as safe"
    assert guard.check_query("SELECT 1 = 1")[0].allowed


def test_an_untrusted_extensions_function_in_pg_catalog_is_refused(make_guard: GuardFactory) -> None:
    """`x` and `y` rows: functions and operators an extension put in pg_catalog, by name."""
    catalog = Catalog.from_rows([("s", "public", ""), ("f", "pg_catalog", "xpath_table"), ("f", "pg_catalog", "lower"),
                                 ("x", "xml2", "xpath_table"), ("o", "pg_catalog", "->"), ("y", "hstore", "->")])
    assert catalog.system_members == {("f", "xpath_table"): {"xml2"}, ("o", "->"): {"hstore"}}
    guard = make_guard(catalog=catalog)
    for sql in ("SELECT xpath_table('a', 'b', 'c', 'd', 'e')",
                "SELECT pg_catalog.xpath_table('a', 'b', 'c', 'd', 'e')"):
        assert refusal(guard, sql).reason == "function pg_catalog.xpath_table() of extension xml2, which is not" \
            " trusted: xpath_table() runs the SQL text it is given"
    assert guard.check_query("SELECT lower('x'), 'a=>1'::text -> 'a'")[0].allowed  # hstore is trusted


def test_policy_fixture_is_the_demo_config(policy: Policy) -> None:
    assert set(policy.scopes) == {"analysts", "support", "engineering", "dba"}
    assert policy.scopes["support"].write == ("public.tickets",)
    assert policy.unrestricted(["dba"]) and not policy.unrestricted(["engineering"])


def test_parse_search_path_reads_list_strings() -> None:
    assert parse_search_path(['"$user", public']) == ("$user", "public")
    assert parse_search_path(['"$user", public', "Hidden"]) == ("$user", "public", "hidden")
    assert parse_search_path(["a,,b"]) == ()  # PostgreSQL refuses it; classify refuses it first
