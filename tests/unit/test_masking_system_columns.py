"""PostgreSQL's own query texts and connection strings: hidden from analysed sessions, strictly, by lineage."""

from __future__ import annotations

import pytest

from pgguard.config import RoleConfig
from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import MaskSpec
from pgguard.masking.lineage import Relations, SourceColumn, lineage
from pgguard.masking.plan import NULLIFY, Clearance, MaskingRefused, MaskingRules, clearance_for, plan
from pgguard.masking.bodies import Routine

RULES = MaskingRules({"public.customers.email": MaskSpec("email")})
STRICT = Clearance(RULES, (), Scrubber(["email"]), strict=True)
LENIENT = Clearance(RULES, ("*",), None, strict=False)  # sees every configured column raw, may filter on any
ANYTHING = Clearance(RULES, ("*",), None, strict=False, sees_system=True)

ACTIVITY = ("datid", "datname", "pid", "usename", "application_name", "state", "wait_event", "query")
TABLES = {
    "public.customers": ["id", "email"],
    "pg_catalog.pg_stat_activity": list(ACTIVITY),
    "pg_catalog.pg_subscription": ["oid", "subdbid", "subname", "subowner", "subenabled", "subconninfo"],
    "ext.pg_stat_statements": ["userid", "queryid", "query", "calls"],
    "public.activity": ["pid", "text"],
    "public.raw_activity": ["pid", "query"],
    "pg_catalog.pg_stat_ssl": ["pid", "ssl", "version"],
    "public.last_texts": ["text"],
}
VIEWS = {
    # As pg_get_viewdef prints it: over a function lineage cannot see into.
    "pg_catalog.pg_stat_activity": "SELECT s.datid, d.datname, s.pid, u.rolname AS usename, s.application_name,"
                                   " s.state, s.wait_event, s.query FROM pg_stat_get_activity(NULL::integer) s"
                                   " (datid, pid, application_name, state, wait_event, query)"
                                   " LEFT JOIN pg_database d ON s.datid = d.oid",
    # As the extension defines it: over its function in C, which lineage cannot follow.
    "ext.pg_stat_statements": "SELECT pg_stat_statements.userid, pg_stat_statements.queryid, pg_stat_statements.query,"
                              " pg_stat_statements.calls FROM ext.pg_stat_statements(true)"
                              " pg_stat_statements(userid, queryid, query, calls)",
    "public.activity": "SELECT pid, query AS text FROM pg_catalog.pg_stat_activity",
    "pg_catalog.pg_stat_ssl": "SELECT s.pid, s.ssl, s.sslversion AS version FROM pg_stat_get_activity(NULL::integer) s"
                              " (pid, ssl, sslversion)",
    # Views over the functions themselves, which the policy does not see in a view.
    "public.raw_activity": "SELECT s.pid, s.query FROM pg_stat_get_activity(NULL::integer) s(pid, query)",
    "public.last_texts": "SELECT pg_catalog.pg_stat_get_backend_activity(b) AS text FROM pg_stat_get_backend_idset() b",
}


class Catalog(Relations):
    def resolve(self, schema: str | None, name: str) -> str | None:
        for candidate in ([schema] if schema else ["pg_catalog", "public", "ext"]):
            if f"{candidate}.{name}" in TABLES or f"{candidate}.{name}" in VIEWS:
                return f"{candidate}.{name}"
        return None

    def columns(self, relation: str) -> list[str] | None:
        return TABLES.get(relation)

    def view_definition(self, relation: str) -> str | None:
        return VIEWS.get(relation)

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        return [Routine("ext.pg_stat_statements", "c", True)] if name == "pg_stat_statements" else []

    def sensitive(self) -> frozenset[SourceColumn]:
        return frozenset({SourceColumn("public.customers", "email")})


def plan_for(sql: str, clearance: Clearance) -> tuple[object, ...]:
    return plan(lineage(sql, Catalog()), clearance).columns or ()


@pytest.mark.parametrize("clearance", [STRICT, LENIENT], ids=["strict", "lenient"])
@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT pid, state, wait_event FROM pg_stat_activity", (None, None, None)),
    ("SELECT pid, query FROM pg_stat_activity", (None, NULLIFY)),
    ("SELECT query AS harmless FROM pg_catalog.pg_stat_activity a", (NULLIFY,)),
    ("SELECT * FROM pg_stat_activity", (None,) * 7 + (NULLIFY,)),
    ("SELECT text FROM activity", (NULLIFY,)),                   # a view over it
    ("SELECT text FROM last_texts", (NULLIFY,)),                 # a view over the function
    ("SELECT a.pid, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)", (None, None)),
    ("SELECT x.q FROM (SELECT query AS q FROM pg_stat_activity) x", (NULLIFY,)),
    ("SELECT subname, subenabled FROM pg_subscription", (None, None)),
    ("SELECT subname, subconninfo AS conninfo FROM pg_subscription", (None, NULLIFY)),
    ("SELECT count(*) FROM pg_subscription", (None,)),
])
def test_query_texts_and_connection_strings_come_back_null(sql: str, expected: tuple[object, ...],
                                                           clearance: Clearance) -> None:
    assert plan_for(sql, clearance) == expected


@pytest.mark.parametrize("sql", [
    "SELECT pid FROM pg_stat_activity WHERE query LIKE '%bob.customer%'",
    "SELECT count(*) FROM pg_stat_activity WHERE query ~ 'email = ''b'",
    "SELECT pid FROM pg_stat_activity ORDER BY query",
    "SELECT substr(query, 1, 40) FROM pg_stat_activity",
    "SELECT pid FROM activity WHERE text ILIKE '%@%'",
    "SELECT query FROM raw_activity",                           # rows from the function: where do they end up?
    "SELECT pid FROM raw_activity",
    "SELECT 1 FROM last_texts WHERE text LIKE '%@%'",
    "SELECT 1 FROM pg_stat_statements WHERE query LIKE 'SELECT%'",
    "SELECT query, calls FROM pg_stat_statements",  # through the extension's C function: where does it end up?
    "SELECT * FROM pg_stat_statements",
    "SELECT subname FROM pg_subscription WHERE subconninfo LIKE '%password=a%'",
    "SELECT row_to_json(s) FROM pg_subscription s WHERE s::text LIKE '%password%'",
    "SELECT position('password=' IN subconninfo) FROM pg_subscription",
])
def test_filters_and_computations_on_them_are_refused_whatever_the_role(sql: str) -> None:
    """What a filter or a computation on another session's text answers reveals it one question at a time,
    so these columns are strict for every analysed role, not only for those with strict_inference."""
    for clearance in (STRICT, LENIENT):
        with pytest.raises(MaskingRefused):
            plan_for(sql, clearance)


@pytest.mark.parametrize("sql", [
    "SELECT row_to_json(s) FROM pg_subscription s",
    "SELECT to_jsonb(a) FROM pg_stat_activity a",
    "SELECT s::text FROM pg_subscription s",
    "SELECT (a).* IS NULL FROM pg_stat_activity a",
])
def test_whole_rows_that_hold_them_are_refused(sql: str) -> None:
    for clearance in (STRICT, LENIENT):
        with pytest.raises(MaskingRefused):
            plan_for(sql, clearance)


def test_the_other_columns_of_pg_stat_statements_stay_readable_to_roles_without_hidden_columns() -> None:
    assert plan_for("SELECT queryid, calls FROM pg_stat_statements", LENIENT) == (None, None)


def test_a_role_that_may_run_anything_sees_them_raw() -> None:
    assert plan_for("SELECT pid, query FROM pg_stat_activity WHERE query LIKE '%x%'", ANYTHING) == (None, None)
    assert plan_for("SELECT subconninfo FROM pg_subscription", ANYTHING) == (None,)


def role(name: str, **rules: object) -> RoleConfig:
    return RoleConfig(name, (name,), "login", dict(rules))


def test_every_analysed_session_is_masked_and_only_the_exact_name_clears_a_text() -> None:
    """A role cleared for every configured column still shares its login: its sessions are masked."""
    cleared = clearance_for(RULES, [], [role("ops", unmasked=["*"], statements=["read"])])
    assert cleared.active and cleared.scrubber is None
    assert cleared.spec_for(SourceColumn("public.customers", "email")) is None
    assert cleared.spec_for(SourceColumn("pg_catalog.pg_stat_activity", "query")) == NULLIFY
    named = clearance_for(RULES, [], [role("ops", unmasked=["pg_catalog.pg_stat_activity.query"])])
    assert named.spec_for(SourceColumn("pg_catalog.pg_stat_activity", "query")) is None
    assert named.spec_for(SourceColumn("pg_catalog.pg_subscription", "subconninfo")) == NULLIFY
    dba = clearance_for(RULES, [], [role("dba", unmasked=["*"], statements=["*"])])
    assert not dba.active
    assert dba.spec_for(SourceColumn("pg_catalog.pg_subscription", "subconninfo")) is None
