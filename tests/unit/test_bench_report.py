"""bench/: the targets table holds every one of the issue's targets, and judges each one right."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))

from idle import IdleMemory  # noqa: E402
from large_select import Read, ReadResult  # noqa: E402
from report import Check  # noqa: E402
from run import checks  # noqa: E402
from select_only import Result, Run, Setting  # noqa: E402


def test_a_check_passes_at_its_threshold_and_fails_past_it() -> None:
    assert Check("tps", 0.8, 0.8, True, "×").row() == ["tps", "0.80×", "≥ 0.80×", "PASS"]
    assert Check("tps", 0.79, 0.8, True, "×").verdict == "FAIL"
    assert Check("memory", 100.0, 100.0, False, " KiB").row() == ["memory", "100.0 KiB", "≤ 100.0 KiB", "PASS"]
    assert Check("memory", 100.1, 100.0, False, " KiB").verdict == "FAIL"
    assert Check("tps", None, 0.8, True, "×").row() == ["tps", "-", "≥ 0.80×", "not run"]


def test_every_target_has_a_row_even_when_its_benchmark_did_not_run() -> None:
    rows = [check.row() for check in checks([], [], [], 1_000_000)]
    assert [row[3] for row in rows] == ["not run"] * 6
    assert [row[0] for row in rows] == [
        "pgbench -S simple, 8 clients: pgguard+policy TPS / pgbouncer",
        "pgbench -S prepared, 8 clients: pgguard+policy TPS / pgbouncer",
        "SELECT of 1,000,000 rows, masked, text: pgguard+policy rows/s / direct",
        "SELECT of 1,000,000 rows, masked, binary: pgguard+policy rows/s / direct",
        "gateway memory per idle connection: pgguard+policy",
        "gateway memory per idle connection: pgguard-nolog",
    ]


def test_the_checks_read_the_every_guard_on_figures() -> None:
    simple = Result(Setting("simple", 8))
    simple.runs["pgbouncer"] = [Run(1000.0, 1000, 1.0)]
    simple.runs["pgguard+policy"] = [Run(850.0, 850, 1.0)]
    prepared_1 = Result(Setting("prepared", 1))  # one client: not what the target is about
    prepared_1.runs["pgbouncer"] = [Run(1000.0, 1000, 1.0)]
    prepared_1.runs["pgguard+policy"] = [Run(900.0, 900, 1.0)]
    text = ReadResult("text")
    text.runs["direct"] = [Read(1000, 1.0, None)]
    text.runs["pgguard+policy"] = [Read(1000, 2.5, None)]
    idle = [IdleMemory("pgguard+policy", 500, "VmRSS growth", 60_000, 110_000),
            IdleMemory("pgguard-nolog", 500, "VmRSS growth", 50_000, 55_000)]
    verdicts = [(check.value, check.verdict) for check in checks([simple, prepared_1], [text], idle, 1000)]
    assert verdicts == [(0.85, "PASS"), (None, "not run"), (0.4, "FAIL"), (None, "not run"),
                        (100.0, "PASS"), (10.0, "PASS")]
