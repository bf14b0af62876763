"""A client encoding as an oracle on hidden values, closed for strict roles.

PostgreSQL converts each row into the client's encoding as it sends it, and fails on a character that
encoding cannot represent: a hidden ticket body holding `€` fails in LATIN1 where one without it comes
back masked. Strict roles may therefore neither set such an encoding nor read hidden columns in one they
started with (pgguard/masking/encodings.py); UTF8, SQL_ASCII and the server's own encoding are kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

EURO, PLAIN = 900001, 900002


@pytest.fixture(scope="module")
def euro_ticket(postgres) -> Iterator[None]:
    """Two tickets whose bodies differ only in a character LATIN1 lacks."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO public.tickets (id, customer_id, subject, body, status) VALUES "
                     f"({EURO}, 1, 'refund', 'Refund 10 € please', 'open'), "
                     f"({PLAIN}, 1, 'refund', 'Refund 10 E please', 'open')")
    yield
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f"DELETE FROM public.tickets WHERE id IN ({EURO}, {PLAIN})")


BODIES = f"SELECT id, body FROM tickets WHERE id IN ({EURO}, {PLAIN}) ORDER BY id"
LOSSY = [
    "SET client_encoding = 'LATIN1'",
    "SET NAMES 'win1252'",
    "SET LOCAL client_encoding TO 'ISO-8859-1'",
    "SELECT set_config('client_encoding', 'LATIN1', false)",
    "SELECT set_config(name, 'latin1', false) FROM pg_settings WHERE name = 'client_encoding'",
]


@pytest.mark.parametrize("sql", LOSSY)
def test_a_strict_role_may_not_set_an_encoding_that_cannot_send_every_value(gateway, euro_ticket, sql):
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
            conn.execute(sql)
        assert "may not set client_encoding" in caught.value.diag.message_primary
        assert conn.execute("SHOW client_encoding").fetchone() == ("UTF8",)
        assert conn.execute(BODIES).fetchall() == [(EURO, "Refund 10 € please"), (PLAIN, "Refund 10 E please")]
        for kept in ("SET client_encoding = 'UTF8'", "SET NAMES 'utf-8'", "SET client_encoding TO DEFAULT"):
            conn.execute(kept)


def test_a_strict_role_may_not_set_it_through_asyncpg(gateway, euro_ticket):
    async def attempt() -> list[str]:
        conn = await asyncpg.connect(gateway.dsn("agent"))
        try:
            refused = []
            for sql in LOSSY[:2]:
                with pytest.raises(asyncpg.InsufficientPrivilegeError) as caught:
                    await conn.execute(sql)
                refused.append(caught.value.message)
            assert [row["body"] for row in await conn.fetch(BODIES)] == ["Refund 10 € please", "Refund 10 E please"]
            return refused
        finally:
            await conn.close()

    assert all("may not set client_encoding" in message for message in asyncio.run(attempt()))


def test_a_strict_session_started_in_such_an_encoding_reads_no_hidden_column(gateway, euro_ticket):
    """Both bodies are refused alike, so the refusal tells nothing; what hides nothing still runs."""
    with psycopg.connect(gateway.dsn("analyst", client_encoding="LATIN1"), autocommit=True) as conn:
        assert conn.execute("SHOW client_encoding").fetchone() == ("LATIN1",)
        for ticket in (EURO, PLAIN):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                conn.execute(f"SELECT body FROM tickets WHERE id = {ticket}").fetchall()
            assert "reads hidden columns in client_encoding LATIN1" in caught.value.diag.message_primary
        assert conn.execute(f"SELECT id, subject FROM tickets WHERE id = {EURO}").fetchone() == (EURO, "refund")


def test_roles_that_are_not_strict_keep_their_encoding_and_the_oracle(gateway, euro_ticket):
    """The control: in LATIN1 the server sends the body without `€` and fails on the other."""
    with psycopg.connect(gateway.dsn("support", client_encoding="LATIN1"), autocommit=True) as conn:
        assert conn.execute(f"SELECT body FROM tickets WHERE id = {PLAIN}").fetchone() == ("Refund 10 E please",)
        with pytest.raises(psycopg.errors.UntranslatableCharacter):
            conn.execute(f"SELECT body FROM tickets WHERE id = {EURO}").fetchall()
