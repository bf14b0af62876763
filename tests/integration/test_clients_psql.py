"""psql through the gateway: meta-commands and \\copy behave exactly as on a direct connection."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import fetch_all, psql, scratch_table

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway


@pytest.mark.parametrize("command", [r"\d customers", r"\dt", r"\d+ orders", r"\l", r"\df", r"\dn", r"\di"])
def test_meta_command_output_equals_direct(gateway: RunningGateway, postgres: PostgresServer,
                                           command: str) -> None:
    through = psql(gateway.dsn("analyst"), command)
    direct = psql(postgres.dsn(sslmode="verify-full"), command)
    assert through == direct
    assert through.strip(), "the meta-command printed nothing"


def test_describe_shows_the_demo_schema(gateway: RunningGateway) -> None:
    """Guards the comparison above against both sides printing the same error or nothing."""
    out = psql(gateway.dsn("analyst"), r"\d customers")
    for column in ("full_name", "card_number", "created_at", "customers_pkey", "customers_email_key"):
        assert column in out
    assert 'TABLE "orders" CONSTRAINT' in out  # the referencing foreign key


def test_psql_session_is_the_roles_login(gateway: RunningGateway) -> None:
    out = psql(gateway.dsn("analyst"), r"\pset tuples_only on", "SELECT current_user, current_database()")
    assert out.split() == ["pgguard_reader", "|", "demo"]


@pytest.mark.parametrize(("identity", "query"), [
    ("dba", "SELECT * FROM customers ORDER BY id"),
    ("analyst", "SELECT * FROM orders ORDER BY id"),
])
def test_copy_out_equals_direct(gateway: RunningGateway, postgres: PostgresServer, tmp_path: Path,
                                identity: str, query: str) -> None:
    through, direct = tmp_path / "through.tsv", tmp_path / "direct.tsv"
    out = psql(gateway.dsn(identity), rf"\copy ({query}) TO '{through}'")
    psql(postgres.dsn(sslmode="verify-full"), rf"\copy ({query}) TO '{direct}'")
    rows = through.read_bytes()
    count = rows.count(b"\n")
    assert rows == direct.read_bytes()
    assert out.strip() == f"COPY {count}"
    assert count in (1200, 6000)


def test_copy_in_then_count(gateway: RunningGateway, postgres: PostgresServer, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    lines = [f'{i},"name {i}, with comma",{i * 1.5}' for i in range(1, 2001)]
    source.write_text("\n".join(lines) + "\n")
    direct = postgres.dsn(sslmode="verify-full")
    with scratch_table(direct, "id int PRIMARY KEY, label text, amount numeric") as table:
        out = psql(gateway.dsn("engineer"), rf"\copy {table} FROM '{source}' WITH (FORMAT csv)",
                   f"SELECT count(*) FROM {table}")
        assert "COPY 2000" in out
        rows = fetch_all(direct, f"SELECT count(*), sum(id), sum(amount), max(label) FROM {table}")
    assert rows == [(2000, 2001000, pytest.approx(1.5 * 2001000), "name 999, with comma")]
