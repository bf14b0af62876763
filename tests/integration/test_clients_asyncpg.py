"""asyncpg through the gateway: binary protocol, prepared statements, COPY, cursors, pools.

asyncpg needs asyncio while pytest-trio runs in trio mode, so every test is a
plain function that runs its coroutine with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
import pytest

from helpers import fetch_all, scratch_table

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

T = TypeVar("T")
ORDERS = "SELECT id, customer_id, total, status, created_at FROM orders ORDER BY id"
TYPED = """SELECT 42::int4 AS i4, 9000000000::int8 AS i8, 3.14159265358979323846::numeric AS n,
                  '2024-06-01 09:30:15.123456+02'::timestamptz AS ts,
                  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS u,
                  '{"a": [1, 2.5, null], "b": "ü"}'::jsonb AS j,
                  ARRAY[1, NULL, 3]::int4[] AS arr, ARRAY['x', 'y z']::text[] AS tarr,
                  '\\xdeadbeef00'::bytea AS b, NULL::text AS nothing, true AS yes"""


@pytest.fixture
def direct(postgres: PostgresServer) -> str:
    """A DSN straight to PostgreSQL as superuser, for comparison and for checking side effects."""
    return postgres.dsn(sslmode="verify-full")


@pytest.fixture
def scratch(direct: str) -> Iterator[str]:
    """A scratch table (id int, label text, amount numeric, at timestamptz)."""
    with scratch_table(direct, "id int PRIMARY KEY, label text, amount numeric, at timestamptz") as name:
        yield name


def run(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Connect with asyncpg (TLS per the DSN's sslmode/sslrootcert), run `work`, close."""
    async def main() -> T:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def records(rows: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
    """Records as plain tuples, comparable with psycopg rows."""
    return [tuple(row) for row in rows]


def test_binary_results_of_many_types_equal_direct(gateway: RunningGateway, direct: str) -> None:
    """The DSN says sslmode=verify-full, so this also proves asyncpg verified the gateway's certificate."""
    async def fetch(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
        return records(await conn.fetch(TYPED))

    through = run(gateway.dsn("analyst"), fetch)
    assert through == run(direct, fetch)
    assert through == [(
        42, 9000000000, Decimal("3.14159265358979323846"),
        datetime(2024, 6, 1, 7, 30, 15, 123456, tzinfo=timezone.utc),
        uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), '{"a": [1, 2.5, null], "b": "ü"}',
        [1, None, 3], ["x", "y z"], b"\xde\xad\xbe\xef\x00", None, True,
    )]


def test_table_rows_equal_direct(gateway: RunningGateway, direct: str) -> None:
    async def fetch(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
        return records(await conn.fetch(ORDERS))

    through = run(gateway.dsn("analyst"), fetch)
    assert len(through) == 6000
    assert through == run(direct, fetch)


def test_prepared_statement_reused_with_different_arguments(gateway: RunningGateway, direct: str) -> None:
    sql = "SELECT id, total FROM orders WHERE customer_id = $1 AND total > $2 ORDER BY id"
    arguments = [(1, Decimal(0)), (2, Decimal("10.5")), (7, Decimal(100)), (1, Decimal(0))]

    async def work(conn: asyncpg.Connection) -> tuple[list[str], list[list[tuple[Any, ...]]]]:
        statement = await conn.prepare(sql)
        types = [t.name for t in statement.get_parameters()] + [a.name for a in statement.get_attributes()]
        return types, [records(await statement.fetch(*args)) for args in arguments]

    types, results = run(gateway.dsn("analyst"), work)
    assert types == ["int4", "numeric", "id", "total"]
    assert results == [fetch_all(direct, sql.replace("$1", "%s").replace("$2", "%s"), args) for args in arguments]
    assert results[0] == results[3] and results[0]


def test_copy_records_to_table(gateway: RunningGateway, direct: str, scratch: str) -> None:
    rows = [(i, f"label {i}", Decimal(i) / 4, datetime(2024, 1, 1, i % 24, tzinfo=timezone.utc))
            for i in range(1, 3001)]

    async def work(conn: asyncpg.Connection) -> str:
        return await conn.copy_records_to_table(scratch, records=rows, columns=["id", "label", "amount", "at"])

    assert run(gateway.dsn("engineer"), work) == "COPY 3000"
    assert fetch_all(direct, f"SELECT * FROM {scratch} ORDER BY id") == rows


@pytest.mark.parametrize("source", ["query", "table"])
def test_copy_out_equals_direct(gateway: RunningGateway, direct: str, source: str) -> None:
    async def copy_out(conn: asyncpg.Connection) -> bytes:
        output = io.BytesIO()
        if source == "query":
            await conn.copy_from_query(ORDERS, output=output, format="csv", header=True)
        else:
            await conn.copy_from_table("orders", output=output, format="text")
        return output.getvalue()

    through = run(gateway.dsn("dba"), copy_out)
    assert through.count(b"\n") in (6000, 6001)
    assert through == run(direct, copy_out)


def test_cursor_inside_transaction(gateway: RunningGateway, direct: str) -> None:
    async def work(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        async with conn.transaction():
            iterated = [tuple(row) async for row in conn.cursor(ORDERS, prefetch=128)]
            cursor = await conn.cursor("SELECT id FROM orders WHERE customer_id < $1 ORDER BY id", 50)
            fetched = records(await cursor.fetch(10))
            await cursor.forward(5)
            fetched.append(tuple(await cursor.fetchrow()))
            fetched += records(await cursor.fetch(1000))
        return iterated, fetched

    iterated, fetched = run(gateway.dsn("analyst"), work)
    assert iterated == fetch_all(direct, ORDERS)
    ids = fetch_all(direct, "SELECT id FROM orders WHERE customer_id < 50 ORDER BY id")
    assert fetched == ids[:10] + ids[15:]


def test_executemany(gateway: RunningGateway, direct: str, scratch: str) -> None:
    rows = [(i, f"many {i}", Decimal(i)) for i in range(1, 501)]

    async def work(conn: asyncpg.Connection) -> None:
        await conn.executemany(f"INSERT INTO {scratch} (id, label, amount) VALUES ($1, $2, $3)", rows)

    run(gateway.dsn("engineer"), work)
    assert fetch_all(direct, f"SELECT id, label, amount FROM {scratch} ORDER BY id") == rows


def test_pool_runs_queries_concurrently(gateway: RunningGateway) -> None:
    """Each query notes, by the server's clock, when it started and ended: on five connections,
    five of them run at the same time."""
    sql = ("SELECT $1::int * 2 AS doubled, pg_backend_pid() AS pid, clock_timestamp() AS started,"
           " (SELECT clock_timestamp() FROM pg_sleep(0.2)) AS ended")

    async def main() -> list[asyncpg.Record]:
        async with asyncpg.create_pool(gateway.dsn("analyst"), min_size=5, max_size=5) as pool:
            return await asyncio.gather(*(pool.fetchrow(sql, n) for n in range(20)))

    results = asyncio.run(main())
    assert [row["doubled"] for row in results] == [n * 2 for n in range(20)]
    assert len({row["pid"] for row in results}) == 5
    at_once = max(sum(other["started"] <= row["started"] < other["ended"] for other in results) for row in results)
    assert at_once == 5


def test_timeout_cancels_and_connection_stays_usable(gateway: RunningGateway, direct: str) -> None:
    """asyncpg cancels a timed-out query with a CancelRequest to the gateway: the server's backend
    stops sleeping (uncancelled, it would sleep for ten minutes)."""
    async def work(conn: asyncpg.Connection) -> tuple[list[tuple[Any, ...]], int]:
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(600)", timeout=0.3)
        deadline = time.monotonic() + 10
        while True:
            activity = fetch_all(direct, "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid])
            if activity != [("active", "SELECT pg_sleep(600)")] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        return activity, await conn.fetchval("SELECT 1")

    activity, one = run(gateway.dsn("analyst"), work)
    assert activity == [("idle", "SELECT pg_sleep(600)")]
    assert one == 1


def test_is_closed_after_close(gateway: RunningGateway) -> None:
    async def main() -> tuple[bool, bool]:
        conn = await asyncpg.connect(gateway.dsn("analyst"))
        before = conn.is_closed()
        await conn.close()
        return before, conn.is_closed()

    assert asyncio.run(main()) == (False, True)
