"""Column lineage: every route from a sensitive column to an output column is followed."""

from __future__ import annotations

import pytest

from pgguard.masking.bodies import Routine
from pgguard.masking.lineage import Relations, SourceColumn, lineage

TABLES = {
    "public.customers": ["id", "full_name", "email", "phone", "card_number", "ssn", "city", "created_at"],
    "public.orders": ["id", "customer_id", "total", "status", "created_at"],
    "public.contacts": ["id", "mail"],
    "public.deep": ["mail"],
}
VIEWS = {
    "public.contacts": "SELECT id, lower(email) AS mail FROM public.customers",
    "public.deep": "SELECT mail FROM public.contacts",
}


class FakeCatalog(Relations):
    def resolve(self, schema: str | None, name: str) -> str | None:
        qualified = f"{schema or 'public'}.{name}"
        return qualified if qualified in TABLES else None

    def columns(self, relation: str) -> list[str] | None:
        return TABLES.get(relation)

    def view_definition(self, relation: str) -> str | None:
        return VIEWS.get(relation)

    def functions(self, schema: str | None, name: str, operator: bool = False) -> list[Routine] | None:
        return []  # built-ins only; tests/unit/test_masking_bodies.py has user-defined ones

    def sensitive(self) -> frozenset[SourceColumn]:
        return frozenset(SourceColumn("public.customers", c) for c in ("email", "phone", "card_number", "ssn"))


def outputs(sql: str) -> list[tuple[str, set[str], bool]]:
    result = lineage(sql, FakeCatalog())
    assert result.columns is not None, result.uncertain
    return [(c.name, {s.column for s in c.sources}, c.direct) for c in result.columns]


def sources_of(sql: str) -> list[set[str]]:
    return [sources for _, sources, _ in outputs(sql)]


@pytest.mark.parametrize("sql", [
    "SELECT email FROM customers",
    "SELECT email AS harmless FROM customers",
    "SELECT c.email FROM customers c",
    "SELECT public.customers.email FROM public.customers",
    'SELECT "email" FROM "customers"',
    "SELECT email::varchar FROM customers",
    "SELECT x.e FROM (SELECT email AS e FROM customers) x",
    "SELECT y.a FROM (SELECT e AS a FROM (SELECT email AS e FROM customers) x) y",
    "WITH x AS (SELECT email FROM customers) SELECT email FROM x",
    "WITH x(renamed) AS (SELECT email FROM customers) SELECT renamed FROM x",
    "SELECT q.z FROM (SELECT email FROM customers) AS q(z)",
    "SELECT x FROM customers AS t(i, n, x)",
    "SELECT t.x FROM customers t(i, n, x)",
    "WITH w AS (SELECT id, email FROM customers) SELECT y FROM w AS v(i, y)",
    "SELECT j.x FROM (customers c JOIN orders o ON o.customer_id = c.id) AS j(i, n, x)",
    "SELECT l.v FROM customers CROSS JOIN LATERAL (SELECT email) AS l(v)",
    "SELECT v FROM customers c JOIN LATERAL (SELECT c.email AS v) l ON true",
    "WITH d AS (DELETE FROM customers WHERE false RETURNING email) SELECT email FROM d",
])
def test_a_column_is_followed_through_aliases_casts_subqueries_and_ctes(sql):
    assert outputs(sql) == [(outputs(sql)[0][0], {"email"}, True)]


@pytest.mark.parametrize("sql", [
    "SELECT lower(email) FROM customers",
    "SELECT upper(substr(email, 1, 3)) FROM customers",
    "SELECT email || '' FROM customers",
    "SELECT CASE WHEN id > 0 THEN email END FROM customers",
    "SELECT coalesce(NULL, email) FROM customers",
    "SELECT (SELECT email FROM customers LIMIT 1)",
    "SELECT ARRAY(SELECT email FROM customers)",
    "SELECT max(email) FROM customers",
    "SELECT string_agg(email, ',') FROM customers",
    "SELECT json_agg(email) FROM customers",
    "SELECT first_value(email) OVER (ORDER BY id) FROM customers",
    "SELECT * FROM contacts",
    "SELECT mail FROM deep",
])
def test_derived_values_keep_their_sources(sql):
    sources = sources_of(sql)
    assert any("email" in s for s in sources), sources


@pytest.mark.parametrize("sql", [
    "SELECT row_to_json(c) FROM customers c",
    "SELECT to_jsonb(c.*) FROM customers c",
    "SELECT c FROM customers c",
    "SELECT ROW(c.*) FROM customers c",
    "SELECT json_agg(c) FROM customers c",
    "SELECT array_agg(c) FROM customers c",
])
def test_whole_row_references_carry_every_column(sql):
    (sources,) = sources_of(sql)
    assert {"email", "ssn", "card_number", "phone"} <= sources


def test_star_expands_in_from_order_with_every_join_side():
    names = [name for name, _, _ in outputs("SELECT * FROM orders o JOIN customers c ON c.id = o.customer_id")]
    assert names[:5] == TABLES["public.orders"] and names[5:] == TABLES["public.customers"]
    assert outputs("SELECT c.*, o.id FROM orders o, customers c")[2] == ("email", {"email"}, True)


def test_set_operations_merge_sources_by_position():
    assert sources_of("SELECT status FROM orders UNION SELECT email FROM customers") == [{"status", "email"}]
    assert sources_of("SELECT email FROM customers EXCEPT SELECT status FROM orders") == [{"email", "status"}]


def test_recursive_cte_follows_the_recursive_term():
    sql = ("WITH RECURSIVE t(n, s) AS (SELECT 1, ''::text UNION ALL "
           "SELECT n + 1, (SELECT ssn FROM customers LIMIT 1) FROM t WHERE n < 3) SELECT s FROM t")
    assert sources_of(sql) == [{"ssn"}]


def test_an_alias_column_list_renames_by_position():
    """`customers AS t(i, n, city)`: city is the third column, email, whatever its own name."""
    assert sources_of("SELECT city || '' FROM customers AS t(i, n, city)") == [{"email"}]
    assert sources_of("SELECT t.city FROM customers AS t(i, n, city) ORDER BY t.id") == [{"email"}]
    assert outputs("SELECT * FROM customers AS t(i, n)")[:3] == \
        [("i", {"id"}, True), ("n", {"full_name"}, True), ("email", {"email"}, True)]


def test_a_column_lineage_cannot_place_counts_as_every_column_within_reach():
    """PostgreSQL resolved it, or fails on it: either way it is taken to be any of them (fail closed)."""
    result = lineage("SELECT somewhere || '' FROM orders o, customers c", FakeCatalog())
    assert result.uncertain == ["column somewhere cannot be resolved"]
    assert {"email", "ssn", "status"} <= {s.column for s in result.touched}
    assert {"email", "ssn"} <= {s.column for s in (result.columns or [])[0].sources}
    # System columns hold no user column's value.
    assert lineage("SELECT ctid, xmin, c.tableoid FROM customers c", FakeCatalog()).uncertain == []


def test_excluded_is_the_row_that_could_not_be_inserted():
    result = lineage("INSERT INTO orders (id, status) SELECT id, email FROM customers "
                     "ON CONFLICT (id) DO UPDATE SET status = excluded.status || ''", FakeCatalog())
    assert result.uncertain == []
    assert (frozenset({SourceColumn("public.orders", "status")}), frozenset({SourceColumn("public.customers", "email")})) \
        in result.written[-1:]


def test_lateral_subquery_sees_the_outer_row():
    assert outputs("SELECT l.x FROM customers c, LATERAL (SELECT c.ssn AS x) l") == [("x", {"ssn"}, True)]


def test_counting_reveals_nothing_but_filters_are_collected():
    result = lineage("SELECT count(email) FROM customers WHERE ssn LIKE '1%' GROUP BY city ORDER BY count(*)",
                     FakeCatalog())
    assert [c.sources for c in result.columns or []] == [frozenset()]
    assert {s.column for s in result.filters} == {"ssn", "city"}


@pytest.mark.parametrize(("sql", "column"), [
    ("SELECT id FROM customers ORDER BY ssn", "ssn"),
    ("SELECT id FROM customers c JOIN orders o ON o.customer_id = c.id AND c.email = 'x'", "email"),
    ("SELECT id FROM orders WHERE customer_id IN (SELECT id FROM customers WHERE card_number > '4')", "card_number"),
    ("SELECT id FROM orders o WHERE EXISTS (SELECT 1 FROM customers c WHERE c.ssn = 'x')", "ssn"),
    ("SELECT DISTINCT ON (email) id FROM customers", "email"),
    ("SELECT id FROM customers GROUP BY id, phone", "phone"),
    # CYCLE compares each row with those before it, and ends the recursion where they are equal
    ("WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM customers UNION ALL SELECT n + 1, ltrim(s, '0') FROM r) "
     "CYCLE s SET c USING p SELECT count(*) FROM r", "ssn"),
])
def test_inference_through_predicates_is_recorded(sql, column):
    assert column in {s.column for s in lineage(sql, FakeCatalog()).filters}


def test_search_and_cycle_add_columns_derived_from_those_they_name():
    assert outputs("WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM customers UNION ALL SELECT n + 1, s FROM r "
                   "WHERE n < 2) SEARCH DEPTH FIRST BY s SET o CYCLE n SET c USING p SELECT * FROM r") == [
        ("n", set(), False), ("s", {"ssn"}, True), ("o", {"ssn"}, False), ("c", set(), False), ("p", set(), False)]


def test_a_cte_shadows_a_table_of_the_same_name():
    assert sources_of("WITH customers AS (SELECT 1 AS email) SELECT email FROM customers") == [set()]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM nowhere",
    "SELECT * FROM customers, jsonb_each(to_jsonb(customers)) j",
    "SELECT j.value FROM customers c, jsonb_each(to_jsonb(c)) j",
])
def test_what_cannot_be_followed_is_reported_uncertain(sql):
    assert lineage(sql, FakeCatalog()).uncertain


def test_copy_of_a_table_lists_its_columns_in_the_copy_order():
    assert outputs("COPY customers (ssn, id) TO STDOUT") == [("ssn", {"ssn"}, True), ("id", {"id"}, True)]
    assert sources_of("COPY (SELECT lower(email) FROM customers) TO STDOUT") == [{"email"}]


def test_a_sampled_table_is_the_table():
    """TABLESAMPLE wraps the table: its columns are the table's, not those of rows from a function."""
    assert sources_of("SELECT ssn || '' FROM customers TABLESAMPLE SYSTEM (100)") == [{"ssn"}]
    assert outputs("SELECT t.phone FROM customers AS t(i) TABLESAMPLE BERNOULLI (50) REPEATABLE (1)") == \
        [("phone", {"phone"}, True)]


def test_an_ordered_set_aggregate_returns_what_it_sorts():
    """mode() and percentile_disc() WITHIN GROUP (ORDER BY x) return one of the x sorted."""
    assert sources_of("SELECT mode() WITHIN GROUP (ORDER BY ssn) FROM customers") == [{"ssn"}]
    assert sources_of("SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY phone) FROM customers") == [{"phone"}]
    assert sources_of("SELECT string_agg(city, ',' ORDER BY ssn) FROM customers") == [{"city"}]


def test_a_recursive_cte_is_followed_until_nothing_changes():
    """Each step moves the SSN one column left: after four steps it is in `a`."""
    sql = ("WITH RECURSIVE r(a, b, c, d, e, n) AS (SELECT '', '', '', '', ssn, 0 FROM customers "
           "UNION ALL SELECT b, c, d, e, a, n + 1 FROM r WHERE n < 4) SELECT a || '', n FROM r")
    assert sources_of(sql) == [{"ssn"}, set()]


def test_a_bare_name_is_a_column_of_any_query_level_before_it_is_a_row():
    """PostgreSQL looks for a column in every enclosing query before taking a name as a relation's row."""
    assert sources_of("SELECT (SELECT phone FROM (SELECT 1 AS x) AS phone) || '' FROM customers") == [{"phone"}]
    assert sources_of("SELECT (SELECT o FROM customers) FROM orders o")[0] >= {"status"}
    # A function's rows named like the column: its column, or the outer one if it has none of that name.
    assert outputs("SELECT (SELECT phone FROM jsonb_each('{}') AS phone) FROM customers") == \
        [("phone", {"phone"}, False)]
    assert sources_of("SELECT x FROM generate_series(1, 3) AS x") == [set()]


def test_a_using_join_merges_its_columns_first_as_postgresql_does():
    """`*` over `JOIN … USING (city)` is city, then each side's other columns; a bare city is the merged one."""
    sql = "SELECT * FROM customers c JOIN (SELECT city, 'x' AS k FROM orders) o USING (city)"
    assert [name for name, _, _ in outputs(sql)] == \
        ["city", "id", "full_name", "email", "phone", "card_number", "ssn", "created_at", "k"]
    # By position: the seventh column is the SSN, whatever lineage thought before.
    assert sources_of(f"SELECT s.x || '' FROM ({sql}) AS s(a, b, c, d, e, f, x)") == [{"ssn"}]
    natural = "SELECT j.x FROM (customers NATURAL JOIN (SELECT city FROM orders) o) AS j(a, b, c, d, e, f, x)"
    assert sources_of(natural) == [{"ssn"}]
    # RIGHT JOIN: the merged column is the right side's; FULL JOIN: either side's.
    right = "SELECT ssn || '' FROM (SELECT 'a'::text AS ssn) a {} JOIN customers USING (ssn)"
    assert sources_of(right.format("RIGHT")) == [{"ssn"}]
    assert sources_of(right.format("FULL")) == [{"ssn"}]
    assert sources_of(right.format("LEFT")) == [set()]
    # Both sides' columns are compared, and each side's own column is still there by name.
    result = lineage(right.format("RIGHT"), FakeCatalog())
    assert {s.column for s in result.filters} == {"ssn"}
    assert sources_of("SELECT a.ssn, customers.ssn FROM (SELECT 'a'::text AS ssn) a JOIN customers USING (ssn)") == \
        [set(), {"ssn"}]
    assert sources_of("SELECT u.ssn FROM (SELECT 'a'::text AS ssn) a FULL JOIN customers USING (ssn) AS u") == [{"ssn"}]


def test_a_cast_that_may_cut_the_value_is_not_the_columns_value():
    """Masked as a card, `card_number::varchar(8)` would show the card's fifth to eighth digits."""
    assert outputs("SELECT card_number::varchar(8), phone::character, ssn::name, email::varchar, ssn::text "
                   "FROM customers") == [("card_number", {"card_number"}, False), ("phone", {"phone"}, False),
                                         ("ssn", {"ssn"}, False), ("email", {"email"}, True), ("ssn", {"ssn"}, True)]
    # Each cut is a computation too, which strict roles are refused; the casts that keep the whole value are not.
    result = lineage("SELECT card_number::varchar(8), phone::character, ssn::name, email::varchar, ssn::text, "
                     "full_name::bpchar FROM customers", FakeCatalog())
    assert {s.column: doing for s, doing in result.computed.items()} == {
        "card_number": "a cast to varchar(8)", "phone": "a cast to bpchar(1)", "ssn": "a cast to name"}


def test_a_schema_qualified_column_names_a_table_never_a_subquery_called_like_it():
    """PostgreSQL passes over the inner `customers` (a subquery) for the outer query's public.customers."""
    sql = "SELECT (SELECT public.customers.ssn || '' FROM (SELECT 'x'::text AS ssn) AS customers) FROM public.customers"
    assert sources_of(sql) == [{"ssn"}]
    assert sources_of(sql.replace("public.customers.ssn", "customers.ssn")) == [set()]
    # An alias hides the table's own name: only c names it.
    result = lineage("SELECT public.customers.ssn FROM public.customers c", FakeCatalog())
    assert result.uncertain == ["column public.customers.ssn cannot be resolved"]
    assert sources_of("SELECT public.customers.email, customers.ssn FROM customers") == [{"email"}, {"ssn"}]


def test_t_star_names_an_outer_querys_relation_too():
    """`c.*` inside a subquery is the outer query's row when the subquery has no c."""
    assert sources_of("SELECT (SELECT row_to_json(c.*)::text FROM orders LIMIT 1) FROM customers c")[0] >= \
        {"ssn", "phone"}
    assert sources_of("SELECT l.r FROM customers c, LATERAL (SELECT ROW(c.*)::text AS r) l")[0] >= {"ssn"}
    assert sources_of("SELECT (SELECT ROW(public.customers.*) FROM (SELECT 1) AS customers) FROM customers")[0] >= \
        {"ssn"}
    result = lineage("SELECT nowhere.* FROM customers", FakeCatalog())
    assert result.columns is None and result.uncertain == ["nowhere.* cannot be resolved"]


def test_a_with_recursive_item_sees_later_items():
    """In WITH RECURSIVE, `orders` in the first item is the second item, not the table."""
    sql = ("WITH RECURSIVE b AS (SELECT status AS w FROM orders), orders AS (SELECT ssn AS status FROM customers) "
           "SELECT w || '' FROM b")
    assert sources_of(sql) == [{"ssn"}]
    # Without RECURSIVE it is the table.
    assert sources_of(sql.replace("RECURSIVE ", "")) == [{"status"}]
    result = lineage("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT * FROM a) SELECT * FROM a", FakeCatalog())
    assert "WITH RECURSIVE items refer to each other in a circle" in result.uncertain


def test_unnamed_columns_are_named_as_postgresql_names_them():
    """A subquery's columns are found by name: `?column?` is the SSN here, the CASE is `case`."""
    sql = "SELECT q.\"?column?\" || '' FROM (SELECT CASE WHEN true THEN 'x' END, ssn || '' FROM customers) q"
    assert sources_of(sql) == [{"ssn"}]
    assert [name for name, _, _ in outputs(
        "SELECT CASE WHEN true THEN 1 END, CASE WHEN true THEN 1 ELSE ssn END, coalesce(1), ARRAY[1], ROW(1), "
        "greatest(1), nullif(1, 2), 'a'::text, ssn::text, (SELECT city FROM orders), EXISTS (SELECT 1), current_date, "
        "xmlelement(name a), (ARRAY[ssn])[1], (SELECT 1 UNION SELECT 2), 1 + 1 FROM customers")] == \
        ["case", "ssn", "coalesce", "array", "row", "greatest", "nullif", "text", "ssn", "city", "exists",
         "current_date", "xmlelement", "array", "?column?", "?column?"]
    # VALUES' columns are column1, column2 …: here column2 is the SSN, whatever the first is called.
    assert sources_of("SELECT v.column2 || '' FROM (SELECT 'x' AS column2) z, customers c, "
                      "LATERAL (VALUES (z.column2, c.ssn)) AS v") == [{"ssn"}]
