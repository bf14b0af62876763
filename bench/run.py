"""pgguard next to PostgreSQL direct and PgBouncer, on this machine, in one run, every guard on.

A number for pgguard alone says little: it depends on the CPU, the kernel and
PostgreSQL's own speed. So every run builds five paths side by side from the
same private PostgreSQL, and reports pgguard relative to the others:

    direct          client -> PostgreSQL
    pgbouncer       client -> PgBouncer (session pooling) -> PostgreSQL
    pgguard-nolog   client -> pgguard as a plain relay: `dba` identity, session logs off -> PostgreSQL
    pgguard         client -> pgguard, `dba` identity, session logs on -> PostgreSQL
    pgguard+policy  client -> the same pgguard process with every guard on: `analyst` identity
                    (statement policy, masking, content detectors, session log) -> PostgreSQL

`dba` is allowed every statement class and sees everything, so pgguard relays
its statements without analysing them. `analyst` (role `analysts`) has every
statement parsed and checked, its result's lineage traced against the masked
columns (which include `pgbench_accounts.filler`), its rows masked and
scanned by the detectors, and all of it recorded. The ratios between the
gateway targets say what each layer costs.

All of them speak plaintext over loopback (pgguard's upstream `sslmode` is set
to `disable`, as PgBouncer's is). direct, pgbouncer and pgguard reach
PostgreSQL as the same database role (`pgguard_admin`, the role pgguard uses
for `dba`), so the only difference between them is the proxy in the middle.
pgguard+policy reaches it as `pgguard_reader`, the analysts' read-only login.

    ./dev bench [--bench idle,logins,select-only,large-select] [--duration S] [--clients 1,8]
                [--modes simple,prepared] [--rows N] [--formats text,binary] [--idle-clients N]
                [--rounds N] [--json FILE] [--markdown] [--cpu-load FRACTION]

The benchmarks, each in a module of its own, in the order they run:

    idle            memory per idle connection, N clients at once (idle.py)
    logins          logins per second, one client logging in and out (logins.py)
    select-only     pgbench -S, one indexed point SELECT per transaction (select_only.py)
    large-select    SELECT * of a 1,000,000-row table with masked columns, streamed (large_select.py)

A last table holds the issue's targets against this run's figures, PASS or FAIL.
Everything started (PostgreSQL, PgBouncer, the gateways, temp dirs) is removed
on exit, on failure and on Ctrl-C alike. bench/README.md says how to add a
target or a benchmark.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pgguard.demo.cluster import PostgresError

from idle import IDLE_CLIENTS, IDLE_COLUMNS, IdleMemory, idle_memory, idle_table_rows
from large_select import (CHUNK_ROWS, MASKED_VS_DIRECT, READ_COLUMNS, RESULT_FORMATS, ReadResult, large_select,
                          read_table_rows)
from logins import LOGIN_COLUMNS, LOGIN_RATIOS, LoginRate, login_rates, login_ratio, login_table_rows
from cpu_load import cpu_load
from procs import BenchError
from report import CHECK_COLUMNS, Check, connection_info, machine_info, print_table
from select_only import COLUMNS, GUARDED_VS_PGBOUNCER, Result, Setting, select_only, table_rows, warm_up
from targets import (DIRECT, PEOPLE_MASKS, PEOPLE_ROWS, PEOPLE_TABLE, PGBENCH_SCALE, PGBOUNCER, PGGUARD_NOLOG,
                     PGGUARD_POLICY, environment)

IDLE, LOGINS, SELECT_ONLY, LARGE_SELECT = "idle", "logins", "select-only", "large-select"
# In the order they run: idle first, while the gateways have served almost nothing yet.
BENCHMARKS = (IDLE, LOGINS, SELECT_ONLY, LARGE_SELECT)

# The targets.
GUARDED_TPS_VS_PGBOUNCER = 0.8  # pgbench -S, 8 clients, every guard on, simple and prepared
GUARDED_CLIENTS = 8
MASKED_ROWS_VS_DIRECT = 0.5  # the masked large SELECT within 2× of direct
IDLE_KIB_PER_CONNECTION = 100.0


def checks(selects: Sequence[Result], reads: Sequence[ReadResult], idle: Sequence[IdleMemory], rows: int
           ) -> list[Check]:
    """The issue's targets, one row each, whether or not this run measured them."""
    by_setting = {(r.setting.mode, r.setting.clients): r for r in selects}
    by_format = {r.format: r for r in reads}
    by_target = {r.target: r for r in idle}
    found: list[Check] = []
    for mode in ("simple", "prepared"):
        result = by_setting.get((mode, GUARDED_CLIENTS))
        found.append(Check(f"pgbench -S {mode}, {GUARDED_CLIENTS} clients: {PGGUARD_POLICY} TPS / {PGBOUNCER}",
                           None if result is None else result.ratio(GUARDED_VS_PGBOUNCER), GUARDED_TPS_VS_PGBOUNCER,
                           True, "×"))
    for fmt in RESULT_FORMATS:
        read = by_format.get(fmt)
        found.append(Check(f"SELECT of {rows:,} rows, masked, {fmt}: {PGGUARD_POLICY} rows/s / {DIRECT}",
                           None if read is None else read.ratio(MASKED_VS_DIRECT), MASKED_ROWS_VS_DIRECT, True, "×"))
    for name in (PGGUARD_POLICY, PGGUARD_NOLOG):
        memory = by_target.get(name)
        found.append(Check(f"gateway memory per idle connection: {name}",
                           None if memory is None else memory.kib_per_connection, IDLE_KIB_PER_CONNECTION,
                           False, " KiB"))
    return found


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10,
                        help="whole seconds per pgbench run and per target's login run (default 10)")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts (default 1,8)")
    parser.add_argument("--modes", default="simple,prepared",
                        help="comma-separated pgbench query modes: simple, extended, prepared")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded warm-up per target (0: none)")
    parser.add_argument("--scale", type=int, default=PGBENCH_SCALE, help="pgbench -i scale (default 10)")
    parser.add_argument("--json", type=Path, help="also write the numbers (every run) to this file")
    parser.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    parser.add_argument("--keep-logs", type=Path, help="copy the gateway's and PgBouncer's logs here")
    parser.add_argument("--bench", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--rows", type=int, default=PEOPLE_ROWS,
                        help=f"rows the large SELECT reads (default {PEOPLE_ROWS:,})")
    parser.add_argument("--formats", default=",".join(RESULT_FORMATS),
                        help="comma-separated result formats of the large SELECT: text, binary (default both)")
    parser.add_argument("--idle-clients", type=int, default=IDLE_CLIENTS,
                        help=f"idle connections held at once per target (default {IDLE_CLIENTS})")
    parser.add_argument("--cpu-load", type=float, default=0.0,
                        help="keep this fraction of one core busy in another process while benchmarks run "
                             "(bench/cpu_load.py; default 0)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    args.bench = [b for b in args.bench.split(",") if b]
    args.formats = [f for f in args.formats.split(",") if f]
    for option, given, known in (("mode", args.modes, {"simple", "extended", "prepared"}),
                                 ("benchmark", args.bench, set(BENCHMARKS)),
                                 ("format", args.formats, set(RESULT_FORMATS))):
        if bad := set(given) - known:
            parser.error(f"unknown {option}(s): {', '.join(sorted(bad))}")
    if args.rounds < 1 or args.duration <= 0 or not args.clients or args.rows <= 0 or args.idle_clients <= 0:
        parser.error("--rounds, --duration, --clients, --rows and --idle-clients must be positive")
    if not 0 <= args.cpu_load < 1:
        parser.error("--cpu-load must be at least 0 and below 1")
    if not args.bench or not args.formats:
        parser.error("--bench and --formats need at least one name")
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    # Unwinds through every `finally`, so SIGTERM cleans up exactly as Ctrl-C does.
    raise KeyboardInterrupt


Table = tuple[str, Sequence[str], list[list[str]]]


def run_benchmarks(args: argparse.Namespace, base: Path, log: Callable[[str], None]
                   ) -> tuple[list[Table], dict[str, Any]]:
    """Every benchmark asked for, in BENCHMARKS' order, in one environment: the tables and the JSON."""
    settings = [Setting(mode, clients) for mode in args.modes for clients in args.clients]
    selects: list[Result] = []
    reads: list[ReadResult] = []
    idle: list[IdleMemory] = []
    with environment(base, scale=args.scale if SELECT_ONLY in args.bench else 0,
                     people=args.rows if LARGE_SELECT in args.bench else 0,
                     idle_clients=args.idle_clients if IDLE in args.bench else 0, log=log) as env, \
            cpu_load(args.cpu_load, base / "cpu-load.log"):
        report: dict[str, Any] = {"machine": machine_info(env), "rounds": args.rounds,
                                     "connections": connection_info(env), "cpu_load": args.cpu_load}
        tables: list[Table] = []
        if IDLE in args.bench:
            log(f"{args.idle_clients} idle clients per target ...")
            idle = idle_memory(env, args.idle_clients, log)
            tables.append((f"memory per idle connection, {args.idle_clients} idle clients", IDLE_COLUMNS,
                           idle_table_rows(idle)))
            report[IDLE] = {"clients": args.idle_clients, "results": [r.to_json() for r in idle]}
        if LOGINS in args.bench:
            log(f"logins for {args.duration}s per target ...")
            rates: dict[str, LoginRate] = login_rates(env, args.duration, log)
            tables.append(("logins per second, one client", LOGIN_COLUMNS, login_table_rows(rates)))
            report[LOGINS] = {"duration_seconds": args.duration, "results": [r.to_json() for r in rates.values()],
                              **{ratio.key: login_ratio(rates, ratio) for ratio in LOGIN_RATIOS}}
        if SELECT_ONLY in args.bench:
            log(f"warming up ({args.warmup:g}s per target) ...")
            warm_up(env, args.warmup)
            log(f"{len(settings)} settings × {len(env.targets)} targets × {args.rounds} round(s) "
                f"× {args.duration:g}s")
            selects = select_only(env, settings, args.duration, args.rounds, log)
            tables.append(("pgbench -S: median TPS per target", COLUMNS, table_rows(selects)))
            report[SELECT_ONLY] = {"benchmark": "pgbench -S (select only)", "duration_seconds": args.duration,
                                   "scale": args.scale, "results": [r.to_json() for r in selects]}
        if LARGE_SELECT in args.bench:
            log(f"{len(args.formats)} format(s) × {len(env.targets)} targets × {args.rounds} round(s) "
                f"× {args.rows:,} rows")
            reads = large_select(env, args.formats, args.rows, args.rounds, log)
            masked = ", ".join(f"{column} ({function})" for column, function in PEOPLE_MASKS.items())
            tables.append((f"SELECT * of {args.rows:,} rows, {masked} masked for {PGGUARD_POLICY}: "
                           "median rows/s per target", READ_COLUMNS, read_table_rows(reads)))
            report[LARGE_SELECT] = {"benchmark": f"SELECT * FROM {PEOPLE_TABLE}", "rows": args.rows,
                                    "masked_columns": PEOPLE_MASKS, "chunk_rows": CHUNK_ROWS,
                                    "results": [r.to_json() for r in reads]}
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(env.gateway_log, args.keep_logs / "gateway.log")
            shutil.copy(base / "pgbouncer" / "pgbouncer.log", args.keep_logs / "pgbouncer.log")
    targets = checks(selects, reads, idle, args.rows)
    tables.append(("the issue's targets, every guard on", CHECK_COLUMNS, [check.row() for check in targets]))
    report["checks"] = [check.to_json() for check in targets]
    return tables, report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    base = Path(tempfile.mkdtemp(prefix="pgguard-bench-"))
    base.chmod(0o755)  # PostgreSQL and PgBouncer run as another OS user when we are root

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        tables, report = run_benchmarks(args, base, log)
        for title, columns, rows in tables:
            print_table(title, columns, rows, args.markdown)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in report["machine"].items()))
        if args.cpu_load:
            print(f"cpu load: another process kept {args.cpu_load:g} of a core busy throughout (--cpu-load)")
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    except (BenchError, PostgresError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
