"""SQLAlchemy 2 reflection and queries, and pgbench in all three query modes, through the gateway."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import sqlalchemy as sa

from helpers import fetch_value, known_to

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

DEMO_TABLES = {"customers", "orders", "tickets"}
PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def engine_for(dsn: str) -> sa.Engine:
    """A SQLAlchemy engine on psycopg 3 for a libpq URI."""
    return sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1), poolclass=sa.NullPool)


@pytest.fixture
def engines(gateway: RunningGateway, postgres: PostgresServer) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """(through the gateway as analyst, direct as superuser)."""
    through, direct = engine_for(gateway.dsn("analyst")), engine_for(postgres.dsn(sslmode="verify-full"))
    yield through, direct
    through.dispose()
    direct.dispose()


def described_columns(engine: sa.Engine, table: str) -> list[tuple[str, str, bool, Any]]:
    return [(c["name"], str(c["type"]), c["nullable"], c["default"]) for c in sa.inspect(engine).get_columns(table)]


def test_inspector_lists_tables_and_columns_as_direct(engines: tuple[sa.Engine, sa.Engine]) -> None:
    through, direct = engines
    tables = sa.inspect(through).get_table_names()
    assert DEMO_TABLES <= set(tables)
    assert sorted(tables) == sorted(sa.inspect(direct).get_table_names())
    columns = described_columns(through, "customers")
    assert [name for name, *_ in columns] == [
        "id", "full_name", "email", "phone", "card_number", "ssn", "city", "created_at"]
    assert columns == described_columns(direct, "customers")


def test_inspector_foreign_keys_indexes_and_keys(engines: tuple[sa.Engine, sa.Engine]) -> None:
    through, direct = engines
    inspector = sa.inspect(through)
    foreign_keys = inspector.get_foreign_keys("orders")
    assert [(fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) for fk in foreign_keys] == [
        (["customer_id"], "customers", ["id"])]
    assert foreign_keys == sa.inspect(direct).get_foreign_keys("orders")
    assert inspector.get_pk_constraint("customers")["constrained_columns"] == ["id"]
    assert inspector.get_indexes("orders") == sa.inspect(direct).get_indexes("orders")
    assert inspector.get_unique_constraints("customers") == sa.inspect(direct).get_unique_constraints("customers")


def test_metadata_reflect(engines: tuple[sa.Engine, sa.Engine]) -> None:
    through, direct = engines
    reflected, expected = sa.MetaData(), sa.MetaData()
    reflected.reflect(bind=through, only=sorted(DEMO_TABLES))
    expected.reflect(bind=direct, only=sorted(DEMO_TABLES))
    assert set(reflected.tables) == DEMO_TABLES

    def shape(metadata: sa.MetaData) -> dict[str, list[tuple[str, str, bool, bool]]]:
        return {name: [(c.name, str(c.type), c.primary_key, c.nullable) for c in table.columns]
                for name, table in metadata.tables.items()}

    assert shape(reflected) == shape(expected)
    orders = reflected.tables["orders"]
    assert {fk.target_fullname for fk in orders.foreign_keys} == {"customers.id"}


def test_core_select_with_bound_parameters(engines: tuple[sa.Engine, sa.Engine]) -> None:
    through, direct = engines
    orders = sa.Table("orders", sa.MetaData(), autoload_with=through)
    query = (sa.select(orders.c.id, orders.c.total, orders.c.status)
             .where(orders.c.customer_id.in_([3, 5, 8]), orders.c.status == sa.bindparam("status"))
             .order_by(orders.c.id))
    text_query = sa.text("SELECT count(*) FROM orders WHERE total BETWEEN :low AND :high")
    results = []
    for engine in (through, direct):
        with engine.connect() as conn:
            results.append((conn.execute(query, {"status": "delivered"}).all(),
                            conn.execute(text_query, {"low": 10, "high": 100}).scalar_one()))
    assert results[0] == results[1]
    assert results[0][0], "the query selected nothing: pick other customers"


# --- pgbench -------------------------------------------------------------------------------------


def pgbench(gateway: RunningGateway, identity: str, *args: str) -> str:
    """Run pgbench through the gateway with a conninfo string as the database; return its stdout."""
    ident = gateway.identities[identity]
    conninfo = (f"host={gateway.host} port={gateway.port} user={ident.user} dbname=demo "
                f"sslmode=verify-full sslrootcert={gateway.ca_cert}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = ident.token
    result = subprocess.run(["pgbench", *args, conninfo], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, f"pgbench {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pgbench_tables(gateway: RunningGateway, postgres: PostgresServer) -> Iterator[None]:
    """pgbench's tables at scale 1, made through the gateway by the dba; dropped directly afterwards."""
    direct = postgres.dsn(sslmode="verify-full")
    try:
        # d(rop), t(ables), g(enerate client-side, i.e. COPY FROM STDIN), v(acuum), p(rimary keys).
        pgbench(gateway, "dba", "-i", "-s", "1", "-I", "dtgvp", "-q")
        known_to(gateway.dsn("analyst"), *PGBENCH_TABLES)  # the dba's DDL is not analysed: the catalog learns it later
        yield
    finally:
        with psycopg.connect(direct, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS " + ", ".join(PGBENCH_TABLES))


def test_pgbench_init_through_the_gateway(pgbench_tables: None, postgres: PostgresServer) -> None:
    direct = postgres.dsn(sslmode="verify-full")
    assert fetch_value(direct, "SELECT count(*) FROM pgbench_accounts") == 100_000
    assert fetch_value(direct, "SELECT count(*) FROM pgbench_branches") == 1
    assert fetch_value(direct, "SELECT count(*) FROM pgbench_tellers") == 10
    assert fetch_value(direct, "SELECT count(*) FROM pg_constraint WHERE contype = 'p' "
                               "AND conrelid = 'pgbench_accounts'::regclass") == 1


def assert_clean_run(output: str, transactions: int) -> None:
    """pgbench's summary says every transaction ran and none failed."""
    assert f"number of transactions actually processed: {transactions}/{transactions}" in output, output
    assert re.search(r"number of failed transactions: 0 \(0\.000%\)", output), output


@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pgbench_tables: None, gateway: RunningGateway, mode: str) -> None:
    # -n: no vacuum first, which the analyst's read-only login could not run anyway.
    output = pgbench(gateway, "analyst", "-n", "-S", "-M", mode, "-c", "4", "-j", "2", "-t", "200")
    assert f"query mode: {mode}" in output
    assert_clean_run(output, 800)


def test_pgbench_tpcb_like_writes(pgbench_tables: None, gateway: RunningGateway, postgres: PostgresServer) -> None:
    direct = postgres.dsn(sslmode="verify-full")
    history_before = fetch_value(direct, "SELECT count(*) FROM pgbench_history")
    output = pgbench(gateway, "engineer", "-n", "-M", "prepared", "-c", "2", "-j", "2", "-t", "50")
    assert_clean_run(output, 100)
    assert fetch_value(direct, "SELECT count(*) FROM pgbench_history") == history_before + 100
