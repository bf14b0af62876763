"""Masking through the real gateway: no raw sensitive value reaches an analyst, whatever the query does."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import psycopg
import pytest

from helpers import fetch_all

SENSITIVE = ("email", "phone", "card_number", "ssn")


@pytest.fixture(scope="module")
def raw_values(postgres) -> dict[str, list[str]]:
    """The real values, read directly, to look for in what the gateway returns."""
    rows = fetch_all(postgres.dsn(), f"SELECT {', '.join(SENSITIVE)} FROM customers ORDER BY id LIMIT 200")
    return {column: [row[i] for row in rows] for i, column in enumerate(SENSITIVE)}


def leaked(received: str, raw: dict[str, list[str]]) -> list[str]:
    """Raw values, or recognisable fragments of them, found in `received`."""
    found = []
    for email in raw["email"]:
        if email.split("@")[0] in received:
            found.append(email)
    for card in raw["card_number"]:
        if card[:12] in re.sub(r"[ -]", "", received):
            found.append(card)
    for ssn in raw["ssn"]:
        if ssn in received:
            found.append(ssn)
    return found


# Statements that compute with a hidden value beyond the functions that cannot fail: refused to the analyst,
# whose roles are all strict_inference (docs/masking.md, "Strict inference").
COMPUTING: set[str] = set()


def computes(sql: str) -> str:
    COMPUTING.add(sql)
    return sql


@pytest.mark.parametrize("sql", [
    "SELECT * FROM customers ORDER BY id LIMIT 200",
    "SELECT email, card_number, ssn, phone FROM customers ORDER BY id LIMIT 200",
    "SELECT email AS harmless, card_number AS n FROM customers ORDER BY id LIMIT 200",
    "SELECT lower(email), upper(email), concat(email, ''), length(ssn) FROM customers ORDER BY id LIMIT 200",
    computes("SELECT lower(email), upper(email), email || '' FROM customers ORDER BY id LIMIT 200"),
    computes("SELECT row_to_json(c) FROM customers c ORDER BY id LIMIT 200"),
    computes("SELECT to_jsonb(c) FROM customers c ORDER BY id LIMIT 200"),
    computes("SELECT json_agg(c) FROM (SELECT * FROM customers ORDER BY id LIMIT 200) c"),
    "SELECT string_agg(email, ',') FROM (SELECT email FROM customers ORDER BY id LIMIT 200) s",
    "SELECT c FROM customers c ORDER BY id LIMIT 200",
    "WITH x AS (SELECT email, ssn FROM customers) SELECT * FROM x LIMIT 200",
    "SELECT (SELECT card_number FROM customers c2 WHERE c2.id = c.id) FROM customers c ORDER BY id LIMIT 200",
    "SELECT email FROM customers UNION ALL SELECT status FROM orders LIMIT 200",
    computes("SELECT array_agg(ssn) FROM customers"),
    "SELECT body FROM tickets ORDER BY id LIMIT 300",
    computes("SELECT subject || ' ' || body FROM tickets ORDER BY id LIMIT 300"),
])
def test_no_raw_value_reaches_the_analyst(gateway, raw_values, sql):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        if sql in COMPUTING:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                conn.execute(sql)
            text = caught.value.diag.message_primary or ""
            assert "computes with" in text and text.endswith("(rule masking)")
        else:
            text = repr(conn.execute(sql).fetchall())
    assert not leaked(text, raw_values)


@pytest.mark.parametrize("sql", [
    "SELECT * FROM customers ORDER BY id LIMIT 200",
    "SELECT email, card_number, ssn FROM customers ORDER BY id LIMIT 200",
    "SELECT c, (c).email, lower(email) FROM customers c ORDER BY id LIMIT 200",
])
def test_binary_results_through_asyncpg_are_masked_too(gateway, raw_values, sql):
    async def run() -> str:
        conn = await asyncpg.connect(gateway.dsn("analyst"))
        try:
            return repr(await conn.fetch(sql)) + repr(await (await conn.prepare(sql)).fetch())
        finally:
            await conn.close()

    assert not leaked(asyncio.run(run()), raw_values)


def test_masked_values_keep_their_shape(gateway):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        email, ssn, card = conn.execute("SELECT email, ssn, card_number FROM customers WHERE id = 1").fetchone()
    assert email.startswith("***@") and ssn == "[redacted]" and card.endswith(card[-4:]) and "*" in card


def test_server_side_cursors_and_declare_fetch_are_masked(gateway, raw_values):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with conn.cursor(name="masked_cursor") as cursor:
            cursor.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 200")
            named = repr(cursor.fetchall())
        with conn.transaction():
            conn.execute("DECLARE c CURSOR FOR SELECT card_number FROM customers ORDER BY id")
            fetched = repr(conn.execute("FETCH 200 FROM c").fetchall())
    assert not leaked(named + fetched, raw_values)


def test_an_error_quoting_a_value_is_scrubbed(gateway, raw_values):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with pytest.raises(psycopg.Error) as caught:
            conn.execute("SELECT card_number::int FROM customers ORDER BY id LIMIT 1").fetchall()
    assert not leaked(str(caught.value), raw_values)


@pytest.mark.parametrize("sql", [
    "SELECT id FROM customers WHERE ssn LIKE '1%'",
    "SELECT id FROM customers ORDER BY email",
    "COPY customers TO STDOUT (NULL '')",
    "SELECT j.value FROM customers c, jsonb_each(to_jsonb(c)) j",
])
def test_what_cannot_be_masked_is_refused(gateway, sql):
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="^pgguard: "):
            conn.execute(sql)


def test_support_sees_emails_raw_and_nothing_else(gateway, postgres):
    direct = fetch_all(postgres.dsn(), "SELECT email, ssn FROM customers WHERE id = 1")[0]
    with psycopg.connect(gateway.dsn("support")) as conn:
        email, ssn = conn.execute("SELECT email, ssn FROM customers WHERE id = 1").fetchone()
    assert email == direct[0] and ssn != direct[1]


def test_dba_sees_everything(gateway, postgres):
    direct = fetch_all(postgres.dsn(), "SELECT email, ssn, card_number FROM customers WHERE id = 1")[0]
    with psycopg.connect(gateway.dsn("dba")) as conn:
        assert conn.execute("SELECT email, ssn, card_number FROM customers WHERE id = 1").fetchone() == direct


def test_the_leak_check_finds_raw_values_when_they_are_there(gateway, raw_values):
    """The check above would fail on an unmasked result: the dba's."""
    with psycopg.connect(gateway.dsn("dba")) as conn:
        text = repr(conn.execute("SELECT email, card_number, ssn FROM customers ORDER BY id LIMIT 200").fetchall())
    assert len(leaked(text, raw_values)) >= 600


def test_langchain_table_info_shows_masked_sample_rows(gateway, raw_values):
    """What a LangChain SQL agent puts in its prompt: the schema with three sample rows."""
    from langchain_community.utilities import SQLDatabase

    url = gateway.dsn("agent").replace("postgresql://", "postgresql+psycopg://", 1)
    database = SQLDatabase.from_uri(url)
    try:
        info = database.get_table_info(["customers", "tickets"])
    finally:
        database._engine.dispose()
    assert "CREATE TABLE customers" in info and "3 rows from customers table" in info
    assert "***@" in info and not leaked(info, raw_values)
