"""Tables and machine information: what every benchmark reports, and how."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgguard.demo.gateway_config import IDENTITIES

from targets import GATEWAY_IDENTITIES, PGBOUNCER_CANDIDATES, REPO, Environment

@dataclass(frozen=True)
class Ratio:
    """One target's figure (median TPS, rows/s, logins/s) over another's: what carries over
    between machines."""

    numerator: str
    denominator: str
    key: str  # in the JSON
    label: str  # the table's column header
    in_table: bool = True



def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    if markdown:
        print(f"{title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*row)
    # Not a terminal (piped, CI): rich would assume 80 columns and squeeze the table. Given
    # room, it renders the table at its natural width (~220 columns with four targets), no wider.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


def machine_info(env: Environment) -> dict[str, str]:
    """What the numbers depend on, for whoever compares them with another run."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.MULTILINE).group(1))  # type: ignore[union-attr]
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": env.cluster.psql("SHOW server_version"),
        "pgbench": _first_line(["pgbench", "--version"]),
        "pgbouncer": _first_line([next(p for n in PGBOUNCER_CANDIDATES if (p := shutil.which(n))), "--version"]),
        "pgguard_source": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        # Other work on the machine skews everything; this says whether there was any.
        "loadavg_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def connection_info(env: Environment) -> dict[str, dict[str, str]]:
    """Per target, who connects and as which database role: what the ratios compare."""
    info: dict[str, dict[str, str]] = {}
    for name, target in env.targets.items():
        entry = {"user": target.user, "database_role": env.roles[name]}
        if (identity := GATEWAY_IDENTITIES.get(name)) is not None:
            entry = {"identity": identity, "groups": ",".join(IDENTITIES[identity][1]), **entry}
        info[name] = entry
    return info


def _first_line(cmd: Sequence[str]) -> str:
    """A tool's first line of output, or "?" (machine info must never fail a finished benchmark)."""
    try:
        lines = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return "?"
    return lines[0].strip() if lines else "?"



@dataclass(frozen=True)
class Check:
    """One of the issue's targets, held against this run's figure."""

    name: str
    value: float | None  # None: the benchmark or setting it needs did not run
    threshold: float
    at_least: bool  # True: passes at or above the threshold; False: at or below it
    unit: str  # "×" for ratios, " KiB" for memory

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "not run"
        passed = self.value >= self.threshold if self.at_least else self.value <= self.threshold
        return "PASS" if passed else "FAIL"

    def row(self) -> list[str]:
        def number(value: float) -> str:
            return f"{value:.2f}{self.unit}" if self.unit == "×" else f"{value:.1f}{self.unit}"

        return [self.name, "-" if self.value is None else number(self.value),
                f"{'≥' if self.at_least else '≤'} {number(self.threshold)}", self.verdict]

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold,
                "at_least": self.at_least, "verdict": self.verdict}


CHECK_COLUMNS = ("target", "measured", "goal", "result")
