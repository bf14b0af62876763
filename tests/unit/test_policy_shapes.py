"""Statement shapes (pgguard/policy/shapes.py): texts that differ only in constants share one analysis,
and only where the analysis never read a constant.

The differential tests are the proof's check: every statement the classifier's, lineage's and the
attack suites' tests use is rewritten with other constants (setting names, schema names, SQL text,
column numbers), and what the shared analysis answers for each rewrite must be what analysing the
rewrite on its own answers.
"""

from __future__ import annotations

import ast
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pglast import parser

from helpers import offline_demo_config
from pgguard.config import load
from pgguard.policy.catalog import Catalog
from pgguard.policy.classify import Unsupported, classify_tree, parse
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.policy.shapes import ConstantRead, shape_of, shared
from pgguard.masking.lineage import erased_lineages, lineages
from rawclient import set_keys
from test_masking_lineage import FakeCatalog
from test_policy_classify import CATALOG

TESTS = Path(__file__).parent.parent
CORPUS_MODULES = ("unit/test_policy_classify.py", "unit/test_masking_lineage.py", "unit/test_masking_bodies.py",
                  "integration/test_masking_attacks.py", "integration/test_policy_reads.py",
                  "integration/test_policy_writes.py", "integration/test_policy_roles.py")
_CONSTANT_TOKENS = ("ICONST", "FCONST", "SCONST")
# What a rewrite puts in place of constants: values a decision could turn on.
_STRINGS = ("'role'", "'search_path'", "'public.customers'", "'SELECT email FROM customers'", "'off'", "''",
            "'session_authorization'", "'orders_id_seq'", "'analytics, public'")
_INTEGERS = ("0", "2", "1", "7", "2147483647")
_FLOATS = ("0.5", "1e3")


def _has_constant(text: str) -> bool:
    try:
        return parser.parse_sql_json(text) is not None and \
            any(token.name in _CONSTANT_TOKENS for token in parser.scan(text))
    except parser.ParseError:
        return False


def corpus() -> list[str]:
    """Every string in the corpus modules that parses as SQL and holds a constant."""
    texts: set[str] = set()
    for module in CORPUS_MODULES:
        for node in ast.walk(ast.parse((TESTS / module).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and _has_constant(node.value):
                texts.add(node.value)
    return sorted(texts)


def rewrites(text: str) -> list[str]:
    """`text` with its constants replaced, in a few ways."""
    tokens = [token for token in parser.scan(text) if token.name in _CONSTANT_TOKENS]
    encoded = text.encode()
    out = []
    for turn in range(len(_STRINGS)):
        pieces, last = [], 0
        for index, token in enumerate(tokens):
            choices = {"ICONST": _INTEGERS, "FCONST": _FLOATS, "SCONST": _STRINGS}[token.name]
            pieces += [encoded[last:token.start], choices[(index + turn) % len(choices)].encode()]
            last = token.end + 1
        out.append((b"".join(pieces) + encoded[last:]).decode(errors="replace"))
    return out


CORPUS = corpus()


def test_the_corpus_is_broad() -> None:
    assert len(CORPUS) > 300
    assert any("ORDER BY 2" in text for text in CORPUS) and any("set_config" in text for text in CORPUS)


def classified(analyse: Any, text: str) -> Any:
    try:
        return analyse(text)
    except Unsupported as exc:
        return f"refused: {exc}"


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    return Policy(load(offline_demo_config(tmp_path_factory.mktemp("shapes"))))


def test_a_shared_classification_is_each_rewrites_own(policy: Policy) -> None:
    shared_count = separate = 0
    for text in CORPUS:
        classified(policy.classify, text)
        for rewrite in rewrites(text):
            shape = shape_of(rewrite)
            if shape is not None and policy._shapes.get(shape.key) not in (None, []):
                shared_count += 1
            else:
                separate += 1
            assert classified(policy.classify, rewrite) == classified(parse, rewrite), rewrite
    # Both routes were taken, many times each.
    assert shared_count > 1000 and separate > 100, (shared_count, separate)


def test_a_shared_lineage_is_each_rewrites_own() -> None:
    relations = FakeCatalog()

    def traced(text: str) -> Any:
        try:
            return lineages(text, relations)
        except Exception as exc:  # lineage refuses with several kinds of error: compare their messages
            return f"{type(exc).__name__}: {exc}"

    shared_count = separate = 0
    for text in CORPUS:
        shape = shape_of(text)
        found = shared(shape, lambda tree: erased_lineages(tree, relations)) if shape is not None else None
        if found is None:
            separate += 1
            continue
        assert found == traced(text), text
        for rewrite in rewrites(text):
            if shape_of(rewrite) is not None and shape_of(rewrite).key == shape.key:
                shared_count += 1
                assert found == traced(rewrite), rewrite
    assert shared_count > 500 and separate > 20, (shared_count, separate)


@pytest.mark.parametrize(("same", "texts"), [
    (True, ["SELECT * FROM t WHERE a = 1", "select *  from t where a = 22 -- note", "SELECT * FROM t WHERE a = 'x'",
            "SELECT * FROM t WHERE a = NULL", "SELECT * FROM t WHERE a = 1.5"]),
    (False, ["SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE b = 1"]),
    (False, ["SELECT * FROM t1 WHERE a = 1", "SELECT * FROM t2 WHERE a = 1"]),
    (False, ['SELECT * FROM "t 1"', 'SELECT * FROM "t 2"']),
    (False, ["SELECT * FROM t WHERE a = 1", "SELECT * FROM t WHERE a < 1"]),
    (False, ["SELECT * FROM t WHERE a = '1'", "SELECT * FROM t WHERE a = $1"]),
    # Constants the grammar does not keep as A_Const stay in the key.
    (False, ["FETCH 5 FROM c", "FETCH 6 FROM c"]),
    (False, ["COPY t TO STDOUT (FORMAT 'csv')", "COPY t TO STDOUT (FORMAT 'binary')"]),
    (False, ["CREATE SEQUENCE s CACHE 5", "CREATE SEQUENCE s CACHE 6"]),
    (False, ["SELECT 1::float(10)", "SELECT 1::float(40)"]),
    (False, ["DO $$ BEGIN END $$", "DO $$ BEGIN PERFORM 1; END $$"]),
    (False, ["SELECT 1; SELECT 2", "SELECT 1"]),
    (True, ["SELECT * FROM t WHERE a IN (1, 22, 333) AND b = ARRAY[1]",
            "SELECT * FROM t WHERE a IN (4444, 5, 6) AND b = ARRAY[77777]"]),
    (False, ["SELECT * FROM t WHERE a IN (1, 2, 3)", "SELECT * FROM t WHERE a IN (1, 2)"]),
    # Whether a position is there still counts: the statement ends at a semicolon or at the end.
    (False, ["SELECT 1", "SELECT 1;"]),
])
def test_keys(same: bool, texts: list[str]) -> None:
    keys = {shape_of(text).key for text in texts}  # type: ignore[union-attr]
    assert (len(keys) == 1) is same


def test_texts_that_do_not_parse_or_are_huge_have_no_shape() -> None:
    assert shape_of("SELEC 1") is None
    assert shape_of("SELECT " + "1 + " * 20000 + "1") is None


def _erased() -> tuple[Any, Any, Any]:
    tree, reads = shape_of("SELECT 'secret' FROM t").erased_tree()  # type: ignore[union-attr]
    target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]
    return target["val"]["A_Const"], target["location"], reads


@pytest.mark.parametrize("read", [
    lambda c: c["sval"], lambda c: c.get("sval"), lambda c: "sval" in c, lambda c: list(c), lambda c: len(c),
    lambda c: bool(c), lambda c: c == {}, lambda c: c.items(), lambda c: c.values(), lambda c: json.dumps(c),
    lambda c: copy.deepcopy(c), lambda c: copy.copy(c), lambda c: str(c), lambda c: f"{c}", lambda c: dict(c),
    lambda c: {**c}, lambda c: c | {}, lambda c: sorted(c),
])
def test_an_erased_constant_cannot_be_read(read: Any) -> None:
    constant, _, reads = _erased()
    with pytest.raises(ConstantRead):
        read(constant)
    assert reads.touched
    assert isinstance(constant, dict)  # as the real contents are, so that type checks take the same path


@pytest.mark.parametrize("read", [
    lambda p: p + 1, lambda p: 1 + p, lambda p: p < 3, lambda p: p == 0, lambda p: int(p), lambda p: "abc"[p:],
    lambda p: f"{p}", lambda p: hash(p), lambda p: bool(p), lambda p: str(p), lambda p: -p, lambda p: p.real,
])
def test_an_erased_position_cannot_be_read(read: Any) -> None:
    _, position, reads = _erased()
    with pytest.raises(ConstantRead):
        read(position)
    assert reads.touched


def test_a_read_caught_by_the_analysis_still_keeps_the_result_from_being_shared() -> None:
    def careless(tree: Any) -> str:
        try:
            tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]["A_Const"]["sval"]
        except BaseException:
            pass
        return "answer"

    assert shared(shape_of("SELECT 'x'"), careless) is None  # type: ignore[arg-type]
    assert shared(shape_of("SELECT 'x'"), lambda tree: "answer") == "answer"  # type: ignore[arg-type]


def test_an_analysis_that_fails_on_the_erased_tree_is_not_shared() -> None:
    assert shared(shape_of("SELECT 1"), lambda tree: 1 / 0) is None  # type: ignore[arg-type]


def test_classify_tree_of_an_erased_tree_is_the_classification_without_places() -> None:
    tree, reads = shape_of("SELECT lower(email) FROM customers WHERE id = 3").erased_tree()  # type: ignore[union-attr]
    (statement,) = classify_tree(tree)
    assert not reads.touched and statement.text == "" and {str(n) for n in statement.reads} == {"customers"}


# --- decisions: the bypasses a shared answer would open ------------------------------------------------------------


@pytest.fixture
def guard(policy: Policy) -> SessionGuard:
    return SessionGuard(policy, ["analysts"], "reader", lambda: CATALOG)


def decide(guard: SessionGuard, sql: str) -> bool:
    return all(decision.allowed for decision in guard.check_query(sql))


def test_set_config_of_a_harmless_setting_does_not_clear_the_same_call_of_a_reserved_one(guard: SessionGuard) -> None:
    assert decide(guard, "SELECT set_config('application_name', 'report', false)")
    assert not decide(guard, "SELECT set_config('role', 'postgres', false)")
    assert not decide(guard, "SELECT set_config('session_authorization', 'postgres', false)")


def test_a_search_path_set_by_set_config_is_followed_for_every_value(guard: SessionGuard) -> None:
    assert decide(guard, "SELECT set_config('search_path', 'public', false)")
    assert decide(guard, "SELECT set_config('search_path', 'hidden', false)")
    assert ("hidden",) in guard.search_paths


def test_a_sequence_function_is_decided_by_its_sequence(policy: Policy) -> None:
    first, second = policy.classify("SELECT nextval('a_seq')"), policy.classify("SELECT nextval('orders_id_seq')")
    assert {str(name) for name in second[0].writes} == {"orders_id_seq"}
    assert {str(name) for name in first[0].writes} == {"a_seq"}


def test_places_follow_each_text(policy: Policy) -> None:
    policy.classify("SELECT 1; PREPARE p AS SELECT * FROM orders WHERE id = 1")
    first, second = policy.classify("SELECT 100; PREPARE p AS SELECT * FROM orders WHERE id = 22222")
    assert (first.text, first.location) == ("SELECT 100", 0)
    assert (second.text, second.location) == ("PREPARE p AS SELECT * FROM orders WHERE id = 22222", 12)
    assert second.inner is not None and second.inner.text == second.text


# --- a kept decision is decided again when what it depends on changes ----------------------------------------------


def test_a_kept_decision_is_decided_again_when_the_search_path_grows(guard: SessionGuard) -> None:
    """`lower` is also user-defined in analytics, which is not on the path until the SET."""
    for value in ("'a'", "'b'", "'c'"):
        assert decide(guard, f"SELECT lower({value}) FROM orders")
    guard.apply(parse("SET search_path = analytics, public")[0])
    assert not decide(guard, "SELECT lower('d') FROM orders")


def test_a_kept_decision_is_decided_again_under_a_new_catalog_snapshot(policy: Policy) -> None:
    """`wipe` is a built-in in the first snapshot; in the second it is user-defined, and not listed as safe."""
    builtin = Catalog.from_rows([("s", "public", ""), ("s", "pg_catalog", ""), ("f", "pg_catalog", "wipe")])
    snapshot = {"now": builtin}
    guard = SessionGuard(policy, ["analysts"], "reader", lambda: snapshot["now"])
    assert decide(guard, "SELECT wipe(1)") and decide(guard, "SELECT wipe(2)")
    snapshot["now"] = Catalog.from_rows([("s", "public", ""), ("s", "pg_catalog", ""), ("f", "public", "wipe")])
    assert not decide(guard, "SELECT wipe(3)")


def test_a_kept_decision_is_decided_again_after_a_reload(tmp_path: Path, policy: Policy) -> None:
    path = offline_demo_config(tmp_path)
    path.write_text(set_keys(path.read_text(), "roles.analysts", {"read": ["public.customers"]}))
    guard = SessionGuard(policy, ["analysts"], "reader", lambda: CATALOG)
    assert decide(guard, "SELECT * FROM orders WHERE id = 1")
    guard.reconfigure(Policy(load(path)), ["analysts"])
    assert not decide(guard, "SELECT * FROM orders WHERE id = 2")
    # The same policy, other roles: the statements' shapes are the very same objects.
    guard = SessionGuard(policy, ["analysts"], "reader", lambda: CATALOG)
    assert decide(guard, "SELECT * FROM widgets WHERE id = 1")
    guard.reconfigure(policy, ["support"])
    assert not decide(guard, "SELECT * FROM widgets WHERE id = 2")


def test_a_refusal_is_not_kept(guard: SessionGuard) -> None:
    """A refusal may have the catalog read again (an unknown function): it is made anew each time."""
    first = guard.check_query("SELECT no_such_function(1)")[0]
    second = guard.check_query("SELECT no_such_function(2)")[0]
    assert not first.allowed and not second.allowed and first is not second
    assert second.statement is not None and second.statement.text == "SELECT no_such_function(2)"


def test_a_kept_decision_names_each_statement_as_sent(guard: SessionGuard) -> None:
    first = guard.check_query("SELECT * FROM orders WHERE id = 1")[0]
    second = guard.check_query("SELECT * FROM orders WHERE id = 2")[0]
    assert first.allowed and second.allowed
    assert second.statement is not None and second.statement.text == "SELECT * FROM orders WHERE id = 2"
