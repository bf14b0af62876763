"""A large SELECT with masked columns, streamed through every target (rows/s, proxy CPU per row, peak RSS)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from psycopg import pq

from connect import login
from procs import BenchError, process_cpu_seconds, process_memory_kib, reset_peak_rss
from report import Ratio
from targets import (DIRECT, PEOPLE_TABLE, PGBOUNCER, PGGUARD, PGGUARD_POLICY, PROXIES, TARGET_NAMES, Environment,
                     Target)

# Rows per result the client takes from libpq at a time (chunked rows mode): it streams, as an
# application reading a large result would, instead of holding all of it.
CHUNK_ROWS = 1000
RESULT_FORMATS = {"text": 0, "binary": 1}


@dataclass(frozen=True)
class ProxyUsage:
    """What the proxy in between spent and held during one read."""

    cpu_seconds: float
    rss_before_kib: int
    rss_peak_kib: int  # VmHWM, reset just before the read


@dataclass(frozen=True)
class Read:
    """One full read of PEOPLE_TABLE: how long it took and what the proxy, if any, spent on it."""

    rows: int
    seconds: float  # from sending the query to the last row, login excluded
    proxy: ProxyUsage | None  # None when direct

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_us_per_row(self) -> float | None:
        return None if self.proxy is None else self.proxy.cpu_seconds * 1e6 / self.rows


@dataclass
class ReadResult:
    """All reads in one result format, per target; medians are what gets reported."""

    format: str
    runs: dict[str, list[Read]] = field(default_factory=lambda: {name: [] for name in TARGET_NAMES})

    def rows_per_second(self, target: str) -> float:
        return statistics.median(run.rows_per_second for run in self.runs[target])

    def ratio(self, ratio: Ratio) -> float:
        return self.rows_per_second(ratio.numerator) / self.rows_per_second(ratio.denominator)

    def cpu_us_per_row(self, target: str) -> float | None:
        values = [v for run in self.runs[target] if (v := run.cpu_us_per_row) is not None]
        return statistics.median(values) if values else None

    def rss_mib(self, target: str) -> tuple[float, float] | None:
        """The proxy's RSS before a read and its peak during one, the largest of each over the rounds."""
        usages = [run.proxy for run in self.runs[target] if run.proxy is not None]
        if not usages:
            return None
        return max(u.rss_before_kib for u in usages) / 1024, max(u.rss_peak_kib for u in usages) / 1024

    def to_json(self) -> dict[str, object]:
        return {
            "format": self.format,
            "targets": {
                name: {
                    "rows_per_second_median": self.rows_per_second(name),
                    "cpu_us_per_row_median": self.cpu_us_per_row(name),
                    "runs": [asdict(run) | {"rows_per_second": run.rows_per_second, "cpu_us_per_row": run.cpu_us_per_row}
                             for run in runs],
                }
                for name, runs in self.runs.items()
            },
            **{ratio.key: self.ratio(ratio) for ratio in READ_RATIOS},
        }


# The masked read over direct: the figure the issue holds pgguard to (≥ 0.5, within 2× of direct).
MASKED_VS_DIRECT = Ratio(PGGUARD_POLICY, DIRECT, "pgguard_masked_vs_direct", "masked/direct")
READ_RATIOS = (
    Ratio(PGGUARD, DIRECT, "pgguard_vs_direct", "pgguard/direct"),
    MASKED_VS_DIRECT,
    Ratio(PGGUARD, PGBOUNCER, "pgguard_vs_pgbouncer", "pgguard/pgbouncer"),
    Ratio(PGGUARD_POLICY, PGBOUNCER, "pgguard_masked_vs_pgbouncer", "masked/pgbouncer"),
    # What masking the rows costs: the same gateway, analyst over dba.
    Ratio(PGGUARD_POLICY, PGGUARD, "masked_vs_unmasked", "masked/unmasked"),
)


def read_people(target: Target, fmt: int) -> tuple[int, float]:
    """`SELECT *` of PEOPLE_TABLE through `target` with libpq, in result format `fmt`: (rows, seconds).

    The client streams (chunked rows mode) and decodes nothing: what is
    timed is the server, the proxy and the transport, not the client's
    conversion to values.
    """
    conn = login(target)
    try:
        rows = 0
        start = time.perf_counter()
        conn.send_query_params(f"SELECT * FROM {PEOPLE_TABLE}".encode(), None, result_format=fmt)
        conn.set_chunked_rows_mode(CHUNK_ROWS)
        while (result := conn.get_result()) is not None:
            if result.status not in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.TUPLES_OK):
                raise BenchError(f"SELECT * FROM {PEOPLE_TABLE} through {target.name} failed: "
                                 f"{result.get_error_message()}")
            rows += result.ntuples
        return rows, time.perf_counter() - start
    finally:
        conn.finish()


def measure_read(target: Target, fmt: int, expected_rows: int) -> Read:
    """Read PEOPLE_TABLE once through `target`, charging the proxy's CPU time and peak RSS to it."""
    pid = target.pid
    if pid is None:
        rows, seconds = read_people(target, fmt)
        usage = None
    else:
        rss_before = process_memory_kib(pid)["VmRSS"]
        reset_peak_rss(pid)
        cpu_before = process_cpu_seconds(pid)
        rows, seconds = read_people(target, fmt)
        usage = ProxyUsage(process_cpu_seconds(pid) - cpu_before, rss_before, process_memory_kib(pid)["VmHWM"])
    if rows != expected_rows:
        raise BenchError(f"read {rows} rows of {PEOPLE_TABLE} through {target.name}, expected {expected_rows}")
    return Read(rows, seconds, usage)


def large_select(env: Environment, formats: Sequence[str], rows: int, rounds: int,
                 log: Callable[[str], None] = print) -> list[ReadResult]:
    """The large-SELECT benchmark: PEOPLE_TABLE read whole, per format on every target, `rounds` times over."""
    results = [ReadResult(fmt) for fmt in formats]
    width = max(map(len, env.targets))
    read_people(env.targets[DIRECT], RESULT_FORMATS["text"])  # unrecorded: the table into PostgreSQL's cache
    for round_no in range(1, rounds + 1):
        for result in results:
            for name, target in env.targets.items():
                run = measure_read(target, RESULT_FORMATS[result.format], rows)
                result.runs[name].append(run)
                proxy = "" if run.proxy is None else (
                    f", proxy CPU {run.cpu_us_per_row:.2f} µs/row, RSS {run.proxy.rss_before_kib // 1024} MiB "
                    f"before, peak {run.proxy.rss_peak_kib // 1024} MiB")
                log(f"round {round_no}/{rounds} {result.format:<6} {name:<{width}} "
                    f"{run.rows_per_second:>10.0f} rows/s ({run.seconds:.2f} s){proxy}")
    return results



READ_COLUMNS = ("format", *(f"{name} rows/s" for name in TARGET_NAMES), *(ratio.label for ratio in READ_RATIOS),
                *(f"{name} CPU µs/row" for name in PROXIES), *(f"{name} RSS MiB before→peak" for name in PROXIES))


def read_table_rows(results: Sequence[ReadResult]) -> list[list[str]]:
    """One row per result format, cell for cell in the order of READ_COLUMNS."""
    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def rss(value: tuple[float, float] | None) -> str:
        return "-" if value is None else f"{value[0]:.0f}→{value[1]:.0f}"

    return [
        [r.format,
         *(f"{r.rows_per_second(name):.0f}" for name in TARGET_NAMES),
         *(f"{r.ratio(ratio):.2f}×" for ratio in READ_RATIOS),
         *(us(r.cpu_us_per_row(name)) for name in PROXIES),
         *(rss(r.rss_mib(name)) for name in PROXIES)]
        for r in results
    ]

