"""Lineage through user-defined functions: a call returns whatever its body reads.

SQL bodies (strings, BEGIN ATOMIC, RETURN) and PL/pgSQL bodies are followed;
dynamic SQL, other languages, SQL run from a string and calls nested too deeply
count as reading every sensitive column. Harmless functions stay harmless.
"""

from __future__ import annotations

import pytest

from pgguard.masking.bodies import Routine, body_of
from pgguard.masking.lineage import Lineage, SourceColumn, lineage
from pgguard.masking.plan import NULLIFY, Clearance, MaskingRefused, plan
from test_masking_lineage import FakeCatalog
from test_masking_plan import ANALYST, RULES, SUPPORT

EVERYTHING = {"email", "phone", "card_number", "ssn"}


def sql_function(name: str, signature: str, returns: str, body: str, options: str = "") -> Routine:
    definition = f"CREATE OR REPLACE FUNCTION public.{name}({signature}) RETURNS {returns} LANGUAGE sql {options} {body}"
    return Routine(f"public.{name}", "sql", returns.startswith(("SETOF", "TABLE")), definition)


def plpgsql_function(name: str, signature: str, returns: str, body: str) -> Routine:
    definition = (f"CREATE OR REPLACE FUNCTION public.{name}({signature}) RETURNS {returns} LANGUAGE plpgsql "
                  f"AS $function$\n{body}\n$function$")
    return Routine(f"public.{name}", "plpgsql", returns.startswith("SETOF"), definition)


FUNCTIONS = {routine.name.split(".")[1]: routine for routine in [
    sql_function("get_email", "p_id integer", "text",
                 "AS $$ SELECT email FROM customers WHERE id = p_id $$"),
    sql_function("get_email_atomic", "integer", "text",
                 "BEGIN ATOMIC SELECT email FROM public.customers WHERE id = $1; END"),
    sql_function("get_ssn_return", "x integer", "text",
                 "RETURN (SELECT ssn FROM public.customers WHERE id = x)"),
    sql_function("all_customers", "", "SETOF customers", "AS $$ SELECT * FROM customers $$"),
    sql_function("calls_get_email", "integer", "text", "AS $$ SELECT upper(get_email($1)) $$"),
    sql_function("ssn_starts", "p text", "bigint",
                 "AS $$ SELECT count(*) FROM customers WHERE ssn LIKE p || '%' $$"),
    sql_function("order_total", "p_id integer", "numeric",
                 "AS $$ SELECT sum(total) FROM orders WHERE customer_id = p_id $$"),
    sql_function("add_tax", "numeric", "numeric", "AS $$ SELECT $1 * 1.2 $$"),
    sql_function("countdown", "n integer", "integer",
                 "AS $$ SELECT CASE WHEN n <= 0 THEN 0 ELSE countdown(n - 1) END $$"),
    sql_function("mail", "o orders", "text",
                 "AS $$ SELECT email FROM customers WHERE id = o.customer_id $$"),
    sql_function("through_xml", "", "xml",
                 "AS $$ SELECT query_to_xml('SELECT email FROM customers', true, false, '') $$"),
    sql_function("sampled", "", "text",
                 "AS $$ SELECT most_common_vals::text FROM pg_stats WHERE attname = 'email' $$"),
    sql_function("pathed_email", "integer", "text",
                 "AS $$ SELECT email FROM customers WHERE id = $1 $$", "SET search_path TO 'pg_catalog', 'public'"),
    sql_function("own_user_path", "", "text", "AS $$ SELECT 'x' $$", "SET search_path TO '$user', 'public'"),
    plpgsql_function("plpgsql_email", "p_id integer", "text", """
DECLARE v text;
BEGIN
  SELECT email INTO v FROM customers WHERE id = p_id;
  RETURN v;
END"""),
    plpgsql_function("plpgsql_assigned", "p_id integer", "text", """
DECLARE v text; a text[];
BEGIN
  a[1] := 'x';
  v := (SELECT card_number FROM customers WHERE id = p_id);
  RETURN v;
END"""),
    plpgsql_function("plpgsql_dynamic", "p_col text", "text", """
DECLARE v text;
BEGIN
  EXECUTE format('SELECT %I FROM customers LIMIT 1', p_col) INTO v;
  RETURN v;
END"""),
    plpgsql_function("plpgsql_return_query", "", "SETOF text", """
BEGIN
  RETURN QUERY EXECUTE 'SELECT ssn FROM customers';
END"""),
    plpgsql_function("plpgsql_harmless", "p numeric", "numeric", """
DECLARE v numeric := 0; i integer;
BEGIN
  FOR i IN 1..3 LOOP
    v := v + p * i;
  END LOOP;
  IF v > 100 THEN
    RAISE NOTICE 'big: %', v;
  END IF;
  SELECT v + coalesce(sum(total), 0) INTO v FROM orders WHERE status = 'paid';
  RETURN v;
END"""),
    Routine("public.c_function", "c", False, None),
]}


class Catalog(FakeCatalog):
    """The fake catalog with the user-defined functions above, all in public."""

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        if operator:
            return [Routine("public.op_function", "c")] if name == "###" else []
        if schema in (None, "public") and name in FUNCTIONS:
            return [FUNCTIONS[name]]
        # Anything else is PostgreSQL's own, but for names the catalog does not know.
        return [] if schema in (None, "pg_catalog") and not name.startswith("unknown") else None


def analysed(sql: str) -> Lineage:
    return lineage(sql, Catalog())


def output_sources(sql: str) -> list[set[str]]:
    result = analysed(sql)
    assert result.columns is not None, result.uncertain
    assert not result.uncertain, result.uncertain
    return [{source.column for source in column.sources} for column in result.columns]


@pytest.mark.parametrize(("sql", "read"), [
    ("SELECT get_email(id) FROM orders", {"email", "id"}),
    ("SELECT public.get_email(1)", {"email", "id"}),
    ("SELECT get_email_atomic(1)", {"email", "id"}),
    ("SELECT get_ssn_return(2)", {"ssn", "id"}),
    ("SELECT calls_get_email(1)", {"email", "id"}),
    ("SELECT plpgsql_email(1)", {"email", "id"}),
    ("SELECT plpgsql_assigned(1)", {"card_number", "id"}),
    ("SELECT pathed_email(1)", {"email", "id"}),
    ("SELECT o.mail FROM orders o", {"email", "id", "customer_id"}),
    ("SELECT (o).mail FROM orders o", {"email", "id", "customer_id"}),
])
def test_a_call_returns_what_the_body_reads(sql, read):
    (sources,) = output_sources(sql)
    assert read <= sources, sources


@pytest.mark.parametrize("sql", [
    "SELECT plpgsql_dynamic('email')",
    "SELECT c_function()",
    "SELECT through_xml()",
    "SELECT sampled()",
    "SELECT own_user_path()",
    "SELECT 1 ### 2",
    "SELECT unknown_function(1)",
])
def test_what_cannot_be_followed_reads_every_sensitive_column(sql):
    (sources,) = output_sources(sql)
    assert EVERYTHING <= sources


@pytest.mark.parametrize("sql", [
    "SELECT add_tax(total) FROM orders",
    "SELECT order_total(id) FROM customers",
    "SELECT plpgsql_harmless(2.5)",
    "SELECT countdown(3)",
    "SELECT lower(full_name) FROM customers",
])
def test_harmless_functions_read_nothing_sensitive(sql):
    for sources in output_sources(sql):
        assert not sources & EVERYTHING, sources


def test_a_function_in_from_returning_sensitive_rows_is_uncertain_and_named():
    result = analysed("SELECT * FROM all_customers()")
    assert any("public.all_customers" in reason or "all_customers" in reason for reason in result.uncertain)
    with pytest.raises(MaskingRefused, match="all_customers"):
        plan(result, ANALYST)


def test_a_set_returning_function_filters_on_what_it_reads():
    assert "ssn" in {s.column for s in analysed("SELECT plpgsql_return_query()").filters}


def test_plans_mask_calls_for_those_not_cleared():
    lax = Clearance(RULES, (), None, strict=False)
    assert plan(analysed("SELECT id, get_email(id) FROM customers"), lax).columns == (None, NULLIFY)
    # Support sees emails raw, and a function that reads only emails is not hidden from it.
    assert plan(analysed("SELECT id, get_email(id) FROM customers"), SUPPORT).columns == (None, None)
    assert plan(analysed("SELECT plpgsql_dynamic('ssn')"), SUPPORT).columns == (NULLIFY,)


def test_strict_inference_refuses_a_call_in_where_and_names_the_function():
    with pytest.raises(MaskingRefused, match=r"public\.customers\.ssn \(through public\.ssn_starts\(\)\)"):
        plan(analysed("SELECT id FROM orders WHERE ssn_starts('123') > 0"), ANALYST)
    with pytest.raises(MaskingRefused, match=r"through public\.get_email\(\)"):
        plan(analysed("SELECT id FROM customers ORDER BY get_email(id)"), ANALYST)
    # Lax roles may filter, as they may on the column itself.
    assert plan(analysed("SELECT id FROM orders WHERE ssn_starts('123') > 0"), SUPPORT).columns == (None,)


def test_strict_inference_refuses_a_call_that_reads_a_hidden_column():
    """What the body does with the value (a condition that raises, a loop as long as the value) is not
    followed: for strict roles, the call is refused, not NULL."""
    with pytest.raises(MaskingRefused, match=r"public\.customers\.email \(public\.get_email\(\)\)"):
        plan(analysed("SELECT id, get_email(id) FROM customers"), ANALYST)


def test_the_function_read_is_recorded_for_refusals():
    assert analysed("SELECT calls_get_email(1)").functions["public.get_email"] >= {
        SourceColumn("public.customers", "email")}


@pytest.mark.parametrize(("name", "followed"), [
    ("get_email", True), ("get_email_atomic", True), ("get_ssn_return", True), ("plpgsql_email", True),
    ("plpgsql_assigned", True), ("plpgsql_harmless", True), ("pathed_email", True),
    ("plpgsql_dynamic", False), ("plpgsql_return_query", False), ("own_user_path", False), ("c_function", False),
])
def test_bodies_are_followed_where_their_sql_can_be_told(name, followed):
    assert (body_of(FUNCTIONS[name]).statements is not None) == followed


def test_a_functions_own_search_path_is_kept():
    assert body_of(FUNCTIONS["pathed_email"]).search_path == ("pg_catalog", "public")
    assert body_of(FUNCTIONS["get_email"]).search_path is None


class CountingCatalog(Catalog):
    """A user-defined public.count(text) that returns its argument."""

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        if name == "count" and schema in (None, "public") and not operator:
            return [sql_function("count", "text", "text", "AS $$ SELECT $1 $$")]
        return super().functions(schema, name, operator)


def test_a_user_defined_count_is_not_counting():
    """Only PostgreSQL's count reveals no values: public.count(ssn) may return the SSN."""
    for sql in ("SELECT count(ssn) FROM customers", "SELECT public.count(ssn) FROM customers"):
        result = lineage(sql, CountingCatalog())
        assert [{s.column for s in c.sources} for c in result.columns or []] == [{"ssn"}]
    assert output_sources("SELECT count(ssn), pg_catalog.count(email) FROM customers") == [set(), set()]
