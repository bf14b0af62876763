"""Masked results stream through the gateway: its memory does not grow with the size of a result.

A fresh gateway serves an analyst a 300,000-row result (about 75 MB on the
wire) with two masked columns and the detectors over a third, to a client
that stops reading for a while and then reads everything. A gateway that
kept rows (or masked output the client had not taken yet) would grow by
tens of megabytes; one that streams, with backpressure, holds a few receive
buffers. The bound is the peak resident set (VmHWM, reset just before the
query) over the resident set before it, which depends on no timing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import PostgresServer, RunningGateway
from pgguard.demo import data

TABLE = "memtest_people"
ROWS = 300_000
MASKS = {"email": "email", "phone": "partial"}
# Far below what a gateway without backpressure holds once the client stops
# reading (most of the ~75 MB result), far above a streaming gateway's
# growth (tens of kilobytes: its buffers are in place before the query).
GROWTH_BOUND_KIB = 32 * 1024
PAUSE_AFTER_ROWS, PAUSE_SECONDS = 1000, 2.5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def large_table(postgres: PostgresServer) -> Iterator[str]:
    postgres.cluster.load(f"""
CREATE TABLE {TABLE} (id integer, email text, phone text, note text);
INSERT INTO {TABLE}
SELECT g, 'customer' || g || '@example.com', '+1 555 ' || lpad(g::text, 7, '0'), repeat('lorem ipsum ', 16)
FROM generate_series(1, {ROWS}) AS g;
GRANT SELECT ON {TABLE} TO {data.READER};
""", data.DATABASE)
    try:
        yield TABLE
    finally:
        postgres.cluster.psql(f"DROP TABLE {TABLE}", data.DATABASE)


def with_masks(text: str) -> str:
    lines = "".join(f'"public.{TABLE}.{column}" = "{function}"\n' for column, function in MASKS.items())
    return text.replace("[masking.columns]\n", "[masking.columns]\n" + lines, 1)


def memory_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value.split()[0]) for line in status.splitlines()
            for key, _, value in [line.partition(":")] if key in ("VmRSS", "VmHWM")}


def test_a_large_masked_result_streams_in_bounded_memory(
        large_table: str, gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(with_masks)
    pid = gateway.process.pid
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        # The session's one-time costs (catalog, clearance, first plans) come before the baseline.
        first = conn.execute(f"SELECT * FROM {large_table} ORDER BY id LIMIT 1").fetchone()
        assert first is not None and first[1] == "***@example.com" and first[2] == "+* *** ***0001"
        before = memory_kib(pid)["VmRSS"]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        rows = 0
        with conn.cursor() as cur:
            for row in cur.stream(f"SELECT * FROM {large_table}"):
                rows += 1
                if rows == PAUSE_AFTER_ROWS:
                    time.sleep(PAUSE_SECONDS)  # the client stops reading; the server does not stop sending
                assert row[1].startswith("***@")
        peak = memory_kib(pid)["VmHWM"]
    assert rows == ROWS
    assert peak - before < GROWTH_BOUND_KIB, f"the gateway grew from {before} KiB to a peak of {peak} KiB"
