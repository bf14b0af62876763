"""pgbench -S: one indexed point SELECT per transaction, on every target (TPS, proxy CPU per transaction)."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from procs import BenchError, process_cpu_seconds
from report import Ratio
from targets import (DIRECT, PGBOUNCER, PGGUARD, PGGUARD_NOLOG, PGGUARD_POLICY, PROXIES, TARGET_NAMES, Environment,
                     Target, pgbench)

PGBENCH_GRACE_SECONDS = 120  # beyond -T: connection setup, a slow shutdown

# Every guard on over PgBouncer: the figure the issue holds pgguard to (≥ 0.8 at 8 clients).
GUARDED_VS_PGBOUNCER = Ratio(PGGUARD_POLICY, PGBOUNCER, "pgguard_policy_vs_pgbouncer", "pgguard+policy/pgbouncer")
RATIOS = (
    # JSON only: direct's TPS is in the table, and PgBouncer is the reference pgguard is held to.
    Ratio(PGGUARD, DIRECT, "pgguard_vs_direct", "pgguard/direct", in_table=False),
    Ratio(PGGUARD_NOLOG, PGBOUNCER, "relay_vs_pgbouncer", "pgguard-nolog/pgbouncer"),
    Ratio(PGGUARD, PGBOUNCER, "pgguard_vs_pgbouncer", "pgguard/pgbouncer"),
    GUARDED_VS_PGBOUNCER,
    # What the statement policy and masking cost: the same gateway, analyst over dba.
    Ratio(PGGUARD_POLICY, PGGUARD, "policy_on_vs_off", "policy on/off"),
    # What the session log costs: the bare relay with its log over one without.
    Ratio(PGGUARD, PGGUARD_NOLOG, "log_on_vs_off", "log on/off"),
    # Every guard over the plain relay.
    Ratio(PGGUARD_POLICY, PGGUARD_NOLOG, "guards_on_vs_off", "all guards on/off"),
)


@dataclass(frozen=True)
class Run:
    """One pgbench run: its throughput and what the proxy spent on it."""

    tps: float
    transactions: int
    cpu_seconds: float | None  # of the target's proxy process; None when direct

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.cpu_seconds is None or self.transactions == 0:
            return None
        return self.cpu_seconds * 1e6 / self.transactions


def measure(target: Target, args: Sequence[str], duration: int) -> Run:
    """Run pgbench for a timed run (`args` includes -T) and charge the proxy's CPU time to it.

    TPS is pgbench's figure "without initial connection time", so login cost
    (token validation, SCRAM) does not blur the per-statement overhead.
    """
    before = process_cpu_seconds(target.pid) if target.pid is not None else None
    output = pgbench(target, *args, timeout=duration + PGBENCH_GRACE_SECONDS)
    after = process_cpu_seconds(target.pid) if target.pid is not None else None
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", output, re.MULTILINE)
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    if tps is None or processed is None:
        raise BenchError(f"could not read tps from pgbench's output against {target.name}:\n{output}")
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    if failed is not None and int(failed.group(1)) > 0:
        raise BenchError(f"{failed.group(1)} transactions failed against {target.name}:\n{output}")
    cpu = after - before if before is not None and after is not None else None
    return Run(float(tps.group(1)), int(processed.group(1)), cpu)



@dataclass(frozen=True)
class Setting:
    """One point of a sweep: how pgbench sends its queries and how many clients it runs."""

    mode: str
    clients: int

    @property
    def label(self) -> str:
        return f"{self.mode}, {self.clients} client{'s' if self.clients != 1 else ''}"


@dataclass
class Result:
    """All runs of one setting, per target; medians are what gets reported."""

    setting: Setting
    runs: dict[str, list[Run]] = field(default_factory=lambda: {name: [] for name in TARGET_NAMES})

    def tps(self, target: str) -> float:
        return statistics.median(run.tps for run in self.runs[target])

    def ratio(self, ratio: Ratio) -> float:
        return self.tps(ratio.numerator) / self.tps(ratio.denominator)

    def cpu_us_per_txn(self, target: str) -> float | None:
        values = [v for run in self.runs[target] if (v := run.cpu_us_per_txn) is not None]
        return statistics.median(values) if values else None

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.setting.mode,
            "clients": self.setting.clients,
            "targets": {
                name: {
                    "tps_median": self.tps(name),
                    "cpu_us_per_txn_median": self.cpu_us_per_txn(name),
                    "runs": [asdict(run) | {"cpu_us_per_txn": run.cpu_us_per_txn} for run in runs],
                }
                for name, runs in self.runs.items()
            },
            **{ratio.key: self.ratio(ratio) for ratio in RATIOS},
        }


def select_only_args(setting: Setting, duration: int) -> list[str]:
    """pgbench's built-in SELECT-only script: one indexed point read per transaction.

    -n: no vacuum before the run (done once after `pgbench -i`); -j: pgbench
    threads, capped at 2 so the client does not eat the cores the proxies need.
    """
    return ["-n", "-S", "-M", setting.mode, "-c", str(setting.clients), "-j", str(min(setting.clients, 2)),
            "-T", str(duration)]


def warm_up(env: Environment, seconds: int) -> None:
    """One short unrecorded run per target: page cache, PostgreSQL's buffers, Python's first paths."""
    if seconds <= 0:
        return
    for target in env.targets.values():
        measure(target, select_only_args(Setting("prepared", 1), seconds), seconds)


def select_only(env: Environment, settings: Sequence[Setting], duration: int, rounds: int,
                log: Callable[[str], None] = print) -> list[Result]:
    """The SELECT-only sweep: every setting on every target, interleaved, `rounds` times over."""
    results = [Result(setting) for setting in settings]
    width = max(map(len, env.targets))
    for round_no in range(1, rounds + 1):
        for result in results:
            for name, target in env.targets.items():
                run = measure(target, select_only_args(result.setting, duration), duration)
                result.runs[name].append(run)
                cpu = f", proxy CPU {run.cpu_us_per_txn:.1f} µs/txn" if run.cpu_us_per_txn is not None else ""
                log(f"round {round_no}/{rounds} {result.setting.label:<22} {name:<{width}} "
                    f"{run.tps:>10.0f} tps{cpu}")
    return results



TABLE_RATIOS = tuple(ratio for ratio in RATIOS if ratio.in_table)
# Built from the target list: TPS for every target, then the ratios, then CPU per proxy.
COLUMNS = ("setting", *(f"{name} TPS" for name in TARGET_NAMES), *(ratio.label for ratio in TABLE_RATIOS),
           *(f"{name} CPU µs/txn" for name in PROXIES))


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """One row per setting, cell for cell in the order of COLUMNS."""
    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [
        [r.setting.label,
         *(f"{r.tps(name):.0f}" for name in TARGET_NAMES),
         *(f"{r.ratio(ratio):.2f}×" for ratio in TABLE_RATIOS),
         *(us(r.cpu_us_per_txn(name)) for name in PROXIES)]
        for r in results
    ]

