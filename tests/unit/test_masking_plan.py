"""Masking plans: what each output column gets, and what is refused because it cannot be masked."""

from __future__ import annotations

import pytest

from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import MaskSpec
from pgguard.masking.lineage import SourceColumn, lineage
from pgguard.config import RoleConfig
from pgguard.masking.plan import (NULLIFY, Clearance, MaskingRefused, MaskingRules, ResultPlan, clearance_for, plan,
                                  row_masker)
from pgguard.masking.values import INT4, TEXT
from pgguard.wire.backend import DataRow, FieldDescription
from test_masking_lineage import FakeCatalog

RULES = MaskingRules({"public.customers.email": MaskSpec("email"), "public.customers.ssn": MaskSpec("redact")})
ANALYST = Clearance(RULES, (), Scrubber(["card_number", "email"]), strict=True)
SUPPORT = Clearance(RULES, ("public.customers.email",), None, strict=False)


def plan_for(sql: str, clearance: Clearance = ANALYST) -> ResultPlan:
    return plan(lineage(sql, FakeCatalog()), clearance)


def test_direct_columns_get_their_function_and_derived_ones_null():
    result = plan_for("SELECT id, email, lower(email), ssn FROM customers")
    assert result.columns == (None, MaskSpec("email"), NULLIFY, MaskSpec("redact"))


def test_a_cleared_column_passes_raw():
    assert plan_for("SELECT email, ssn FROM customers", SUPPORT).columns == (None, MaskSpec("redact"))


@pytest.mark.parametrize("sql", [
    "SELECT id FROM customers WHERE ssn LIKE '1%'",
    "SELECT id FROM customers ORDER BY email",
    "SELECT city, count(*) FROM customers GROUP BY city, ssn",
])
def test_strict_mode_refuses_inference_and_lax_mode_allows_it(sql):
    with pytest.raises(MaskingRefused, match="reveals its values"):
        plan_for(sql)
    plan_for(sql, Clearance(RULES, (), None, strict=False))


# What a hidden value goes through, which decides whether the statement fails, how long it runs or how
# many rows it makes: each an oracle on the value, and how the refusal names it.
ORACLES = [
    ("SELECT 1 / (CASE WHEN ssn LIKE '4%' THEN 0 ELSE 1 END) FROM customers WHERE id = 1", "ssn (LIKE)"),
    ("SELECT CASE WHEN ssn IS NULL THEN 1 / 0 END FROM customers", "ssn (IS NULL)"),
    ("SELECT CASE ssn WHEN '444-07-2101' THEN 1 / 0 END FROM customers", "ssn (a CASE condition)"),
    ("SELECT ssn::int FROM customers WHERE id = 1", "ssn (a cast to int4)"),
    ("SELECT CAST(ssn AS pg_catalog.int8) FROM customers", "ssn (a cast to int8)"),
    ("SELECT (substr(email, 1, 1) || '1')::int FROM customers", "email (substr())"),
    ("SELECT email::inet FROM customers", "email (a cast to inet)"),
    ("SELECT ssn::text[] FROM customers", "ssn (a cast to text[])"),
    # A cast that cuts: the size of what it keeps, for n = 1, 2 …, tells where non-ASCII characters are.
    ("SELECT email::varchar(5) FROM customers", "email (a cast to varchar(5))"),
    ("SELECT CAST(email AS character varying(300)) FROM customers", "email (a cast to varchar(300))"),
    ("SELECT ssn::char(3) FROM customers", "ssn (a cast to bpchar(3))"),
    ("SELECT CAST(ssn AS character) FROM customers", "ssn (a cast to bpchar(1))"),
    ("SELECT ssn::name FROM customers", "ssn (a cast to name)"),
    ("SELECT ssn::pg_catalog.\"char\" FROM customers", 'ssn (a cast to "char")'),
    ("SELECT ssn::text::varchar(1) FROM customers", "ssn (a cast to varchar(1))"),
    ("SELECT length(email::varchar(3)) FROM customers", "email (a cast to varchar(3))"),
    ("SELECT pg_catalog.varchar(email::varchar, 5, true) FROM customers", "email (pg_catalog.varchar())"),
    ("SELECT make_date(2000, 1, length(ssn)) FROM customers", "ssn (make_date())"),
    ("SELECT 1 / (length(email) - 20) FROM customers", "email (operator -)"),
    ("SELECT sqrt(-length(ssn)) FROM customers", "ssn (operator -)"),
    ("SELECT (ARRAY[1])[length(ssn)] FROM customers", "ssn (a subscript)"),
    ("SELECT ARRAY[ssn] FROM customers", "ssn (ARRAY[…])"),
    ("SELECT ARRAY(SELECT ssn FROM customers)", "ssn (ARRAY(…))"),
    ("SELECT NULLIF(ssn, '444-07-2101') FROM customers", "ssn (NULLIF)"),
    ("SELECT COALESCE(lower(ssn), (1 / 0)::text) FROM customers", "ssn (COALESCE)"),
    ("SELECT repeat('x', length(ssn)) FROM customers", "ssn (repeat())"),
    ("SELECT pg_sleep(length(ssn)) FROM customers", "ssn (pg_sleep())"),
    ("SELECT email = 'x' AND 1 / (id - id) = 1 FROM customers", "email (operator =)"),
    ("SELECT id, (SELECT 1 / (length(ssn) - 11) FROM customers WHERE id = 1) FROM orders", "ssn (operator -)"),
    ("SELECT sum(ssn::int) FROM customers", "ssn (a cast to int4)"),
    ("SELECT max(ssn) FROM customers", "ssn (max())"),
    ("SELECT x FROM (SELECT upper(ssn) AS x FROM customers) s WHERE s.x IS NOT NULL OR true", None),
    ("SELECT y FROM (SELECT to_date(x, 'YYYY') AS y FROM (SELECT ssn AS x FROM customers) a) b",
     "ssn (to_date())"),
    ("WITH s AS (SELECT ascii(ssn) AS a FROM customers) SELECT 1", "ssn (ascii())"),
    ("SELECT id FROM contacts WHERE id = 1 AND mail IS NOT NULL", None),
    ("SELECT pg_catalog.lower(email, email) FROM customers", "email (pg_catalog.lower())"),
]


@pytest.mark.parametrize(("sql", "named"), ORACLES)
def test_strict_mode_refuses_what_a_hidden_value_goes_through_unless_it_cannot_fail(sql, named):
    with pytest.raises(MaskingRefused, match="reveals") as caught:
        plan_for(sql)
    if named:
        assert f"public.customers.{named}" in str(caught.value)


@pytest.mark.parametrize(("sql", "named"), ORACLES)
def test_lax_mode_runs_what_a_hidden_value_goes_through(sql, named):
    plan_for(sql, Clearance(RULES, (), None, strict=False))


@pytest.mark.parametrize(("sql", "columns"), [
    ("SELECT email, lower(email), upper(email), md5(ssn), length(ssn), char_length(ssn), octet_length(email) "
     "FROM customers", (MaskSpec("email"), NULLIFY, NULLIFY, NULLIFY, NULLIFY, NULLIFY, NULLIFY)),
    ("SELECT trim(email), btrim(ssn), ltrim(email), rtrim(email), concat(full_name, ' ', email), "
     "concat_ws(', ', email, ssn) FROM customers", (NULLIFY,) * 6),
    ("SELECT ssn::text, email::bpchar, CAST(email AS character varying), lower(ssn::varchar) FROM customers",
     (MaskSpec("redact"), MaskSpec("email"), MaskSpec("email"), NULLIFY)),
    ("SELECT city, count(email), count(*), string_agg(email, ',') FROM customers GROUP BY city",
     (None, None, None, NULLIFY)),
    ("SELECT c, (c).email, ROW(email, id), email COLLATE \"C\" FROM customers c", (NULLIFY,) * 4),
    ("SELECT CASE WHEN id = 1 THEN email END, lower(x) FROM customers, LATERAL (SELECT ssn x) s",
     (NULLIFY, NULLIFY)),
    ("SELECT mail FROM contacts", (NULLIFY,)),
])
def test_strict_mode_lets_a_hidden_value_through_what_cannot_fail_to_a_null_column(sql, columns):
    assert plan_for(sql).columns == columns


def test_a_count_of_distinct_hidden_values_is_a_comparison():
    """Fixed: `count(DISTINCT ssn)` over two rows tells whether their values are equal."""
    sql = "SELECT count(DISTINCT ssn) FROM customers WHERE id IN (1, 2)"
    with pytest.raises(MaskingRefused, match="filters, groups, joins or sorts on public.customers.ssn"):
        plan_for(sql)
    assert plan_for(sql, Clearance(RULES, (), None, strict=False)).columns == (None,)


def test_unknown_lineage_over_a_sensitive_column_is_refused():
    with pytest.raises(MaskingRefused, match="cannot tell"):
        plan_for("SELECT j.value FROM customers c, jsonb_each(to_jsonb(c)) j")


def test_unknown_lineage_without_sensitive_columns_is_allowed():
    assert plan_for("SELECT * FROM generate_series(1, 3)").columns is None


@pytest.mark.parametrize(("sql", "errors_scrubbed"), [
    ("UPDATE customers SET full_name = NULL WHERE id = 1", True),
    ("INSERT INTO customers (id, full_name) VALUES (1, 'x')", True),
    ("DELETE FROM customers WHERE id = 1", True),
    ("WITH d AS (DELETE FROM customers WHERE id = 1 RETURNING id) SELECT 1", True),
    ("UPDATE contacts SET id = NULL WHERE id = 1", True),  # a view whose one column derives from the email
    ("UPDATE orders SET status = NULL WHERE id = 1", False),
])
def test_a_write_to_rows_holding_hidden_columns_has_its_errors_scrubbed(sql, errors_scrubbed):
    """Fixed: a NOT NULL violation's detail quotes the whole failing row (`Failing row contains (1, …,
    444-07-2101, …)`), for a statement that read no hidden column."""
    assert plan_for(sql, Clearance(RULES, (), None, strict=False)).reads_hidden is errors_scrubbed
    assert plan_for(sql, SUPPORT).reads_hidden is errors_scrubbed


@pytest.mark.parametrize("sql", [
    "SELECT set_config('application_name', ssn, false) FROM customers",
    "SELECT pg_catalog.pg_notify('c', email) FROM customers",
    "SELECT count(*) FROM customers WHERE setval('s', length(ssn)) > 0",
    "SELECT id FROM orders WHERE EXISTS (SELECT pg_notify('c', ssn) FROM customers)",
])
def test_a_hidden_value_kept_as_a_setting_a_notification_or_a_sequence_value_is_refused(sql):
    with pytest.raises(MaskingRefused, match="a setting, a notification"):
        plan_for(sql, Clearance(RULES, (), None, strict=False))


def test_a_setting_or_notification_of_values_the_session_sees_is_allowed():
    assert plan_for("SELECT set_config('application_name', email, false) FROM customers", SUPPORT).columns == (None,)
    assert plan_for("SELECT pg_notify('c', city) FROM customers").columns == (None,)


@pytest.mark.parametrize(("sql", "refused"), [
    ("UPDATE customers SET email = 'x@' || replace(email, '@', '.')", True),
    ("UPDATE customers SET email = lower(email)", True),
    ("INSERT INTO customers (email) SELECT substr(email, 2) FROM customers", True),
    ("INSERT INTO customers SELECT * FROM customers ON CONFLICT (id) DO UPDATE SET email = upper(excluded.email)",
     True),
    ("UPDATE customers SET email = email, city = upper(city)", False),
    ("INSERT INTO customers SELECT * FROM customers ON CONFLICT (id) DO UPDATE SET email = excluded.email", False),
])
def test_a_value_derived_from_a_hidden_column_is_not_written_back_where_its_mask_would_show_it(sql, refused):
    clearance = Clearance(RULES, (), None, strict=False)
    if refused:
        with pytest.raises(MaskingRefused, match="derived from public.customers.email"):
            plan_for(sql, clearance)
    else:
        plan_for(sql, clearance)


@pytest.mark.parametrize("sql", [
    "DO $$ BEGIN RAISE NOTICE '%', (SELECT ssn FROM customers LIMIT 1); END $$",
    "DO $$ BEGIN PERFORM 1; END $$",
])
def test_a_code_block_is_refused_to_a_session_with_hidden_columns(sql):
    """Fixed: DO's notices and errors gave what its code read back raw (see test_masking_attacks for CALL)."""
    with pytest.raises(MaskingRefused, match="cannot follow"):
        plan_for(sql, Clearance(RULES, (), None, strict=False))
    assert plan_for(sql, Clearance(RULES, ("*",), None, strict=False)).columns is None


def field(name: str, type_oid: int, table_oid: int = 0, column: int = 0) -> FieldDescription:
    return FieldDescription(name, table_oid, column, type_oid, -1, -1, 0)


def test_row_masker_masks_values_and_scrubs_free_text():
    result = plan_for("SELECT id, email, full_name FROM customers")
    masker = row_masker(result, [field("id", INT4), field("email", TEXT), field("full_name", TEXT)], None,
                        ANALYST, lambda oid, attnum: None)
    assert masker is not None
    row = DataRow([b"7", b"jane.doe@example.com", b"Jane 4111 1111 1111 1111"]).encode()
    masked = DataRow.decode(masker.mask(row)[5:]).values
    assert masked[0] == b"7"
    assert b"jane.doe" not in masked[1] and masked[1].endswith(b"@example.com")
    assert b"4111 1111 1111" not in masked[2] and masked[2].endswith(b"1111")


def test_row_description_names_the_sensitive_column_even_when_lineage_does_not():
    ssn = SourceColumn("public.customers", "ssn")
    masker = row_masker(ResultPlan((None,)), [field("x", TEXT, 16384, 6)], None, SUPPORT,
                        lambda oid, attnum: ssn if (oid, attnum) == (16384, 6) else None)
    assert masker is not None
    assert DataRow.decode(masker.mask(DataRow([b"123-45-6789"]).encode())[5:]).values == [b"[redacted]"]


def test_a_misaligned_plan_masks_every_column():
    masker = row_masker(ResultPlan((None,)), [field("a", TEXT), field("b", TEXT)], None, SUPPORT,
                        lambda oid, attnum: None)
    assert masker is not None
    assert DataRow.decode(masker.mask(DataRow([b"x", b"y"]).encode())[5:]).values == [None, None]


def test_nothing_to_mask_gives_no_masker():
    assert row_masker(ResultPlan((None,)), [field("id", INT4)], None, SUPPORT, lambda oid, attnum: None) is None


SCRUB_RULES = MaskingRules({**RULES.columns, "public.customers.full_name": MaskSpec("scrub")})
NAME = SourceColumn("public.customers", "full_name")


def test_a_scrub_column_gets_the_detectors_as_itself_and_null_when_computed_from():
    clearance = Clearance(SCRUB_RULES, (), Scrubber(["card_number"]), strict=True)
    result = plan_for("SELECT full_name, lower(full_name), full_name AS n FROM customers", clearance)
    assert result.columns == (MaskSpec("scrub"), NULLIFY, MaskSpec("scrub"))
    # The third is named by RowDescription too; the second is too, as a view's computed column could be.
    fields = [field("full_name", TEXT, 16384, 2), field("lower", TEXT, 16384, 2), field("n", TEXT)]
    masker = row_masker(result, fields, None, clearance, lambda oid, attnum: NAME if oid == 16384 else None)
    assert masker is not None
    card = b"Jane 4111 1111 1111 1111"
    assert DataRow.decode(masker.mask(DataRow([card, card.lower(), card]).encode())[5:]).values == [
        b"Jane **** **** **** 1111", None, b"Jane **** **** **** 1111"]


def test_a_scrub_column_without_detectors_is_shown_as_it_is_and_still_null_when_computed_from():
    clearance = Clearance(SCRUB_RULES, (), None, strict=False)
    result = plan_for("SELECT full_name, upper(full_name) FROM customers", clearance)
    masker = row_masker(result, [field("full_name", TEXT), field("upper", TEXT)], None, clearance,
                        lambda oid, attnum: None)
    assert masker is not None
    assert DataRow.decode(masker.mask(DataRow([b"Jane", b"JANE"]).encode())[5:]).values == [b"Jane", None]


@pytest.mark.parametrize(("sql", "strict", "refused"), [
    ("SELECT id FROM customers WHERE full_name LIKE '%4111%'", True, "reveals its values"),
    ("UPDATE customers SET full_name = substr(full_name, 2)", False, "derived from public.customers.full_name"),
    ("UPDATE customers SET city = full_name", False, "could be read back unmasked"),
    ("UPDATE customers SET full_name = full_name", False, None),
])
def test_a_scrub_column_is_hidden_to_inference_and_writes(sql, strict, refused):
    clearance = Clearance(SCRUB_RULES, (), None, strict=strict)
    if refused is None:
        plan_for(sql, clearance)
        return
    with pytest.raises(MaskingRefused, match=refused):
        plan_for(sql, clearance)
    plan_for(sql, Clearance(SCRUB_RULES, ("public.customers.full_name",), None, strict=strict))


def role(name: str, **rules: object) -> RoleConfig:
    return RoleConfig(name, (name,), "login", dict(rules))


def test_clearance_is_the_union_of_the_roles_grants():
    analyst = role("analysts", detectors=["card_number", "email"], strict_inference=True)
    support = role("support", unmasked=["public.customers.email"], detectors=["card_number"])
    both = clearance_for(RULES, ["card_number", "email"], [analyst, support])
    assert both.spec_for(SourceColumn("public.customers", "email")) is None
    assert both.spec_for(SourceColumn("public.customers", "ssn")) == MaskSpec("redact")
    assert both.scrubber is not None and both.scrubber.names == ("card_number",)
    assert not both.strict
    alone = clearance_for(RULES, ["card_number", "email"], [analyst])
    assert alone.strict and alone.spec_for(SourceColumn("public.customers", "email")) == MaskSpec("email")


def test_a_role_cleared_for_everything_gets_no_detectors_by_default():
    dba = clearance_for(RULES, ["card_number"], [role("dba", unmasked=["*"], statements=["*"])])
    assert dba.scrubber is None and not dba.active
