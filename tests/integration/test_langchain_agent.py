"""examples/langchain_agent.py end to end: a LangChain SQL agent, driven by a scripted local chat
model, through `pgguard demo` as the `agent` service account. Reads work and come back masked,
the DELETE and the DROP reach the agent as pgguard's refusals, and the session log holds it all."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg
import pytest

from helpers import unique_name

EXAMPLE = Path(__file__).parents[2] / "examples" / "langchain_agent.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("langchain_agent", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(example: ModuleType) -> Iterator[dict[str, Any]]:
    with example.demo() as summary:
        yield summary


@pytest.fixture(scope="module")
def raw_values(demo: dict[str, Any]) -> set[str]:
    """Every email, phone, card number and SSN in the demo's customers, read past the gateway."""
    with psycopg.connect(demo["upstream_dsn"]) as conn:
        rows = conn.execute("SELECT email, phone, card_number, ssn FROM customers").fetchall()
    return {value for row in rows for value in row}


def leaks(text: str, raw_values: set[str]) -> list[str]:
    return [value for value in raw_values if value in text]


def closed_tickets_and_orders(demo: dict[str, Any]) -> tuple[int, bool]:
    with psycopg.connect(demo["upstream_dsn"]) as conn:
        closed = conn.execute("SELECT count(*) FROM tickets WHERE status = 'closed'").fetchone()[0]
        orders = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()[0]
    return closed, orders


def test_the_agent_reads_masked_data_and_its_writes_are_refused(example: ModuleType, demo: dict[str, Any],
                                                                raw_values: set[str]) -> None:
    before = closed_tickets_and_orders(demo)
    run = example.run(demo, application=unique_name("agent"))
    tools = {message.tool_call_id: message for message in run.tool_messages()}
    calls = [(call["name"], call["args"], tools[call["id"]].text)
             for message in run.messages for call in getattr(message, "tool_calls", [])]
    assert [(name, args) for name, args, _ in calls] == list(example.SCRIPT)
    (_, _, tables), (_, _, schema), (_, _, checked), (_, _, rows), (_, _, delete), (_, _, drop) = calls

    assert tables == "customers, orders, tickets"
    # The schema with its sample rows, as the agent puts it in its prompt: every PII column masked.
    assert "CREATE TABLE customers" in schema and "3 rows from customers table" in schema
    assert schema.count("***@example.") == 3 and schema.count("[redacted]") == 3
    assert checked == example.READ_QUERY
    assert rows.startswith("[(") and rows.count("***@example.") == 5 and rows.count("+*-***-***-") == 5
    # The writes come back to the agent as the tool's error, with pgguard's reason and rule.
    assert delete.startswith("Error: (psycopg.errors.InsufficientPrivilege) pgguard: DELETE refused")
    assert "(rule roles.analysts.write)" in delete
    assert drop.startswith("Error: (psycopg.errors.InsufficientPrivilege) pgguard: DROP refused")
    assert "(rule roles.analysts.statements)" in drop
    assert not leaks(repr(run.messages), raw_values)
    assert "refused by the gateway (2 statements)" in run.messages[-1].text
    assert closed_tickets_and_orders(demo) == before and before[0] > 0


def test_the_session_log_holds_the_agents_reads_refusals_and_masked_rows(
        example: ModuleType, demo: dict[str, Any], raw_values: set[str]) -> None:
    run = example.run(demo, application=unique_name("agent"))
    assert run.logs and all(report.ok for _, report, _ in run.logs), [r.problems for _, r, _ in run.logs]
    for _, _, records in run.logs:
        assert records[0]["identity"]["username"] == "sql-agent"
        assert records[0]["identity"]["roles"] == ["analysts"]
    statements = {record["sql"]: record for record in run.statements()}
    assert statements[example.READ_QUERY]["decision"] == "allowed"
    assert (statements[example.DELETE_QUERY]["decision"], statements[example.DELETE_QUERY]["rule"]) == (
        "refused", "roles.analysts.write")
    assert (statements[example.DROP_QUERY]["decision"], statements[example.DROP_QUERY]["rule"]) == (
        "refused", "roles.analysts.statements")

    results = {record["statement"]: record for record in run.results()}
    read = results[statements[example.READ_QUERY]["seq"]]
    assert read["row_count"] == 5
    assert [row[2].decode()[:4] for row in read["rows"]] == ["***@"] * 5  # email, as the agent got it
    samples = [results[record["seq"]] for record in statements.values()
               if "LIMIT" in record["sql"] and "customers.email" in record["sql"]]
    assert [sample["row_count"] for sample in samples] == [3]
    for refused in (example.DELETE_QUERY, example.DROP_QUERY):
        assert results[statements[refused]["seq"]]["error"]["sqlstate"] == "42501"
    assert not leaks(repr([records for _, _, records in run.logs]), raw_values)


# What an agent (or a prompt injected into its data) might try instead, through the same tool,
# and the one thing each must come back as.
WAYS_AROUND = {
    "SELECT upper(email), lower(phone) FROM customers LIMIT 3": "[(None, None), (None, None), (None, None)]",
    "SELECT string_agg(email, ',') FROM customers WHERE id < 4": "[(None,)]",
    "SELECT email FROM customers WHERE email LIKE 'a%' LIMIT 2": "(rule masking)",
    "WITH gone AS (DELETE FROM tickets RETURNING id) SELECT count(*) FROM gone": "(rule roles.analysts.write)",
    "SELECT 1; DROP TABLE orders": "(rule roles.analysts.statements)",
    "SET ROLE pgguard_admin": "(rule roles.analysts.statements)",
    "SELECT set_config('default_transaction_read_only', 'off', false)": "(rule roles.analysts.write)",
    "UPDATE customers SET city = 'Nowhere' WHERE id = 1": "(rule roles.analysts.write)",
    "SELECT pg_read_file('/etc/passwd')": "(rule roles.analysts.functions)",
    # Free text that quotes emails and card numbers, cut or reshaped so no detector knows it: arithmetic and
    # calls that may fail on the text, which strict inference refuses (they would be NULL otherwise).
    "SELECT substr(body, strpos(body, '@') - 20, 20), reverse(body) FROM tickets LIMIT 2": "(rule masking)",
    # A runtime error as an oracle on a hidden value: whether it fails tells one bit of the SSN.
    "SELECT 1 / (CASE WHEN ssn LIKE '4%' THEN 0 ELSE 1 END) FROM customers WHERE id = 1": "(rule masking)",
    "SELECT md5(ssn), length(email), concat(full_name, ' ', email) FROM customers LIMIT 1": "[(None, None, None)]",
    "SELECT count(*) FROM tickets WHERE body ~ '4[0-9]{3} [0-9]{4}'": "(rule masking)",
}


def test_an_agents_ways_around_the_rules_come_back_masked_or_refused(
        example: ModuleType, demo: dict[str, Any], raw_values: set[str]) -> None:
    before = closed_tickets_and_orders(demo)
    script = (*(("sql_db_query", {"query": query}) for query in WAYS_AROUND),
              ("sql_db_query", {"query": "SELECT body FROM tickets ORDER BY id LIMIT 40"}))
    run = example.run(demo, example.ScriptedChatModel(script=script), application=unique_name("agent"))
    *answers, bodies = [message.text for message in run.tool_messages()]
    for (query, expected), answer in zip(WAYS_AROUND.items(), answers, strict=True):
        assert expected in answer, (query, answer)
        assert "rule" not in expected or "pgguard:" in answer
    # Free text that quotes customers' emails: the detectors mask them wherever they appear.
    assert bodies.count("@example.") >= 5
    assert not leaks(repr(run.messages), raw_values) and not leaks(repr(run.logs), raw_values)
    assert closed_tickets_and_orders(demo) == before
    with psycopg.connect(demo["upstream_dsn"]) as conn:
        assert conn.execute("SELECT city FROM customers WHERE id = 1").fetchone()[0] != "Nowhere"
    refused = {record["sql"]: record["rule"] for record in run.statements() if record["decision"] == "refused"}
    assert refused == {query: expected.removeprefix("(rule ").removesuffix(")")
                       for query, expected in WAYS_AROUND.items() if expected.startswith("(rule")}


def test_the_example_runs_from_the_command_line(demo: dict[str, Any], tmp_path: Path) -> None:
    summary = tmp_path / "demo.json"
    summary.write_text(json.dumps(demo) + "\n")
    proc = subprocess.run([sys.executable, str(EXAMPLE), "--summary", str(summary)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "agent -> sql_db_query" in proc.stdout and "***@example." in proc.stdout
    assert "refused  roles.analysts.write" in proc.stdout and "refused  roles.analysts.statements" in proc.stdout
    assert ": verified," in proc.stdout
