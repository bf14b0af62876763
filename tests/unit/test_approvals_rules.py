"""Approval rules: validated when the config loads, and matched against what a statement does."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgguard.config import ConfigError, load
from pgguard.demo import data
from pgguard.demo.gateway_config import write_config
from pgguard.policy.catalog import Catalog
from pgguard.policy.guard import Policy, SessionGuard

CATALOG = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class")])
DEMO_RULE = 'approval = [\n    { classes = ["ddl"] },\n    { tables = ["public.orders"], kinds = ["update", "delete"] },\n]'


@pytest.fixture
def demo_config(tmp_path: Path) -> Path:
    for name in ("c", "k", "ca"):
        (tmp_path / name).write_text("placeholder")
    return write_config(
        tmp_path / "gw", host="127.0.0.1", port=6432, admin_port=6433, tls_cert=tmp_path / "c",
        tls_key=tmp_path / "k", pg_host="127.0.0.1", pg_port=5432, pg_ca=tmp_path / "ca",
        database=data.DATABASE, login_passwords={name: "x" for name in data.LOGINS})


def with_rules(config: Path, rules: str) -> Path:
    text = config.read_text()
    assert DEMO_RULE in text
    config.write_text(text.replace(DEMO_RULE, f"approval = [{rules}]"))
    return config


@pytest.mark.parametrize(("rules", "message"), [
    ('{ clases = ["ddl"] }', "[roles.engineering.approval[0]]: unknown key(s) clases"),
    ('{ classes = ["dll"] }', "classes: unknown dll"),
    ('{ tables = ["public.orders"], kinds = ["erase"] }', "kinds: unknown erase"),
    ("{ approvers = 2 }", "needs classes, tables or kinds"),
    ('{ classes = ["ddl"], approvers = 0 }', "approvers must be a whole number from 1 to 5"),
    ('"ddl"', "[roles.engineering.approval[0]] must be a table"),
])
def test_bad_rules_are_refused_at_load(demo_config: Path, rules: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(with_rules(demo_config, rules))
    assert message in str(caught.value)


def test_a_rule_on_a_role_that_is_not_analysed_is_refused(demo_config: Path) -> None:
    text = demo_config.read_text().replace('statements = ["*"]\n', 'statements = ["*"]\napproval = [{ classes = ["ddl"] }]\n', 1)
    demo_config.write_text(text)
    with pytest.raises(ConfigError, match="cannot be held"):
        load(demo_config)


@pytest.mark.parametrize(("values", "message"), [
    ('timeout = "soon"', "[approvals] timeout: not a duration"),
    ("max_pending = 0", "[approvals] max_pending must be positive"),
    ('webhook_url = "ftp://x"', "webhook_url must be an http or https URL"),
    ("approvers = 2", "[approvals]: unknown key(s) approvers"),
])
def test_bad_approvals_sections_are_refused(demo_config: Path, values: str, message: str) -> None:
    demo_config.write_text(demo_config.read_text().replace('timeout = "10m"', values))
    with pytest.raises(ConfigError) as caught:
        load(demo_config)
    assert message in str(caught.value)


def decisions(config: Path, sql: str, rules: str | None = None) -> list[str]:
    if rules is not None:
        with_rules(config, rules)
    guard = SessionGuard(Policy(load(config)), ["engineering"], data.ENGINEER, lambda: CATALOG, assume_builtin=True)
    return [decision.rule if decision.approval else "allowed" if decision.allowed else "refused"
            for decision in guard.check_query(sql)]


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM orders", ["allowed"]),
    ("SELECT * FROM orders FOR UPDATE", ["allowed"]),
    ("INSERT INTO orders (id) VALUES (1)", ["allowed"]),
    ("DELETE FROM tickets WHERE id = 1", ["allowed"]),
    ("DELETE FROM orders WHERE id = 1", ["roles.engineering.approval[1]"]),
    ("UPDATE public.orders SET total = 0", ["roles.engineering.approval[1]"]),
    # A write hidden in a CTE is still a write.
    ("WITH gone AS (DELETE FROM orders RETURNING id) SELECT count(*) FROM gone", ["roles.engineering.approval[1]"]),
    ("CREATE INDEX ON tickets (status)", ["roles.engineering.approval[0]"]),
    ("DROP TABLE tickets", ["roles.engineering.approval[0]"]),
    # Preparing runs nothing; executing runs what was prepared.
    ("PREPARE d AS DELETE FROM orders WHERE id = $1; EXECUTE d(1)", ["allowed", "roles.engineering.approval[1]"]),
    ("PREPARE s AS SELECT 1; CREATE TABLE public.made AS EXECUTE s", ["allowed", "roles.engineering.approval[0]"]),
    # A MERGE or an upsert is held for what its clauses do to the target.
    ("MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN DELETE",
     ["roles.engineering.approval[1]"]),
    ("MERGE INTO orders o USING customers c ON o.customer_id = c.id WHEN MATCHED THEN UPDATE SET total = 0",
     ["roles.engineering.approval[1]"]),
    ("MERGE INTO orders o USING customers c ON o.id = c.id WHEN NOT MATCHED THEN INSERT (id) VALUES (c.id)",
     ["allowed"]),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET total = 0", ["roles.engineering.approval[1]"]),
    ("INSERT INTO orders (id) VALUES (1) ON CONFLICT DO NOTHING", ["allowed"]),
    # TRUNCATE deletes every row; with CASCADE, of tables it does not name.
    ("TRUNCATE orders", ["roles.engineering.approval[1]"]),
    ("TRUNCATE customers CASCADE", ["roles.engineering.approval[1]"]),
    ("TRUNCATE tickets", ["allowed"]),
])
def test_the_demo_rules(demo_config: Path, sql: str, expected: list[str]) -> None:
    assert decisions(demo_config, sql) == expected


def test_unfiltered_matches_only_updates_and_deletes_without_where(demo_config: Path) -> None:
    rules = '{ kinds = ["unfiltered", "truncate"] }'
    assert decisions(demo_config, "DELETE FROM tickets", rules) == ["roles.engineering.approval[0]"]
    assert decisions(demo_config, "UPDATE tickets SET status = 'x'") == ["roles.engineering.approval[0]"]
    assert decisions(demo_config, "TRUNCATE tickets") == ["roles.engineering.approval[0]"]
    assert decisions(demo_config, "DELETE FROM tickets WHERE id = 3") == ["allowed"]


def test_read_rules_hold_reads_of_their_tables(demo_config: Path) -> None:
    rules = '{ classes = ["read"], tables = ["public.customers"] }'
    assert decisions(demo_config, "SELECT * FROM customers", rules) == ["roles.engineering.approval[0]"]
    assert decisions(demo_config, "SELECT * FROM orders") == ["allowed"]


@pytest.mark.parametrize(("sql", "rules"), [
    # A partition's rows are rows of the table a rule names.
    ("DELETE FROM orders_2026 WHERE id = 1", '{ tables = ["public.orders"], kinds = ["delete"] }'),
    ("UPDATE orders_old SET total = 0", '{ tables = ["public.orders"], kinds = ["update"] }'),
    # A write to a parent reaches the children a rule names, even with ONLY (a child may be a partition).
    ("DELETE FROM orders WHERE id = 1", '{ tables = ["public.orders_2026"], kinds = ["delete"] }'),
])
def test_rules_reach_through_inheritance_and_partitions(demo_config: Path, sql: str, rules: str) -> None:
    with_rules(demo_config, rules)
    catalog = Catalog.from_rows([("s", "public", ""), ("r", "pg_catalog", "pg_class")]) \
        .with_inheritance([["public", "orders", "public", "orders_2026"],
                           ["public", "orders_2026", "public", "orders_old"]])
    guard = SessionGuard(Policy(load(demo_config)), ["engineering"], data.ENGINEER, lambda: catalog,
                         assume_builtin=True)
    [decision] = guard.check_query(sql)
    assert decision.approval is not None and decision.approval.label == "roles.engineering.approval[0]"
