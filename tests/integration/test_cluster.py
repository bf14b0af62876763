"""The shared PostgreSQL fixture, checked with a real client: TLS, demo data, logins, auth methods."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from pgguard.demo import data
from pgguard.demo.data import format_card

if TYPE_CHECKING:
    from conftest import PostgresServer

INSERT_TICKET = "INSERT INTO tickets (customer_id, subject, body, status) VALUES (1, 's', 'b', 'open')"


def luhn_valid(number: str) -> bool:
    """Independent of the generator's own check-digit code, on purpose."""
    digits = [int(c) for c in reversed(number)]
    doubled = [d * 2 - 9 if d * 2 > 9 else d * 2 for d in digits[1::2]]
    return (sum(digits[0::2]) + sum(doubled)) % 10 == 0


def fetch_all(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_superuser_connects_with_verify_full_and_sees_demo_data(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn(sslmode="verify-full")) as conn:
        ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert ssl == (True,)
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] >= 1000
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] >= 5000
        assert conn.execute("SELECT count(*) FROM tickets").fetchone()[0] >= 1000


def test_psql_helper_runs_as_superuser(postgres: PostgresServer) -> None:
    output = postgres.cluster.psql("SELECT current_user, count(*) FROM tickets", dbname="demo")
    assert output == "postgres|1500"


def test_every_card_number_is_16_digits_and_passes_luhn(postgres: PostgresServer) -> None:
    cards = [card for (card,) in fetch_all(postgres.dsn(), "SELECT card_number FROM customers")]
    assert cards and all(re.fullmatch(r"\d{16}", card) and luhn_valid(card) for card in cards)


def test_ticket_bodies_quote_emails_and_cards_in_varied_formats(postgres: PostgresServer) -> None:
    customers = fetch_all(postgres.dsn(), "SELECT email, card_number FROM customers")
    corpus = "\n".join(body for (body,) in fetch_all(postgres.dsn(), "SELECT body FROM tickets"))
    quoted_emails = [email for email, _ in customers if email in corpus]
    assert len(quoted_emails) >= 100
    for style in ("plain", "spaced", "dashed"):
        quoted = [card for _, card in customers if format_card(card, style) in corpus]
        assert len(quoted) >= 20, style


def test_reader_is_read_only_and_lacks_write_privileges(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn(user=data.READER)) as conn:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        assert conn.execute("SELECT count(*) FROM tickets").fetchone()[0] > 0
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute(INSERT_TICKET)
        conn.rollback()
        conn.execute("SET TRANSACTION READ WRITE")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(INSERT_TICKET)
        conn.rollback()


def test_support_writes_tickets_only(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn(user=data.SUPPORT)) as conn:
        conn.execute(INSERT_TICKET)
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE orders SET status = 'paid' WHERE id = 1")
        conn.rollback()


def test_engineer_may_run_ddl_on_demo_tables(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.dsn(user=data.ENGINEER)) as conn:
        conn.execute("CREATE INDEX ON orders (status)")
        conn.execute("ALTER TABLE customers ADD COLUMN note text")
        conn.rollback()


@pytest.mark.parametrize("user", ["md5_user", "plain_user", "trust_user"])
def test_auth_method_users_log_in(postgres: PostgresServer, user: str) -> None:
    rows = fetch_all(postgres.dsn(user=user), "SELECT current_user, count(*) > 0 FROM customers")
    assert rows == [(user, True)]


def test_md5_user_has_an_md5_verifier(postgres: PostgresServer) -> None:
    sql = "SELECT rolname, left(rolpassword, 3) FROM pg_authid WHERE rolname LIKE '%\\_user'"
    assert dict(fetch_all(postgres.dsn(), sql)) == {
        "md5_user": "md5", "plain_user": "SCR", "trust_user": "SCR", "nossl_user": "SCR",
    }


def test_trust_user_needs_no_password(postgres: PostgresServer) -> None:
    assert fetch_all(postgres.dsn(user="trust_user", password="wrong"), "SELECT 1") == [(1,)]


def test_nossl_user_must_use_tls(postgres: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(postgres.dsn(user="nossl_user"))
    assert fetch_all(postgres.dsn(user="nossl_user", sslmode="verify-full"), "SELECT 1") == [(1,)]


def test_demo_data_script_is_deterministic() -> None:
    assert data.demo_data_sql() == data.demo_data_sql()
