"""How fast `pgguard-replay list` answers over a directory of thousands of session logs.

    .venv/bin/python bench/replay_list.py [--sessions 5000] [--statements 10] [--rounds 3] [--keep DIR]

It writes `--sessions` logs with the gateway's own writer (`SessionLogWriter`, a hundred
sessions at a time, as a busy gateway would), each with a header, `--statements` statements
(one in seven refused) with their results of a few rows, a close record and its checkpoint,
for ten users, three applications and two targets. Then it times `pgguard-replay list`, as a
user runs it (a new process, output to a pipe), three ways:

    cold      no index: every log is read and summarised, and the index is written
    warm      the index is current: only the directory is listed and stat'ed
    one new   the index is current except for one new log (a session that just started)

and prints the median of `--rounds` runs of each, and the size of the directory. The logs
are removed afterwards unless `--keep` names a directory to write them to.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.audit import records
from pgguard.audit.chain import Signer
from pgguard.audit.records import Limits, RowCapture
from pgguard.audit.writer import LogOptions, SessionLogWriter
from pgguard.identity import Identity
from replay.catalog import INDEX_NAME

LIMITS = Limits()
OPTIONS = LogOptions(fsync="never", reserve_bytes=64 * 1024)
USERS = [f"user{n}" for n in range(10)]
APPLICATIONS = ["psql", "langchain-agent", "billing-service"]
TARGETS = ["demo", "warehouse"]


async def write_session(directory: Path, signer: Signer, number: int, statements: int, start: float) -> None:
    user = USERS[number % len(USERS)]
    identity = Identity(provider="pgguard", issuer="bench", subject=user, username=user, groups=("analysts",),
                        jti=f"jti-{number}", issued_at=start, expires_at=start + 3600, valid_until=start + 3600,
                        roles=("analysts",))
    session_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start)) + f"-{number:012x}"
    header = records.header(session_id=session_id, identity=identity, client_address=f"10.0.{number % 256}.1:5000",
                            application_name=APPLICATIONS[number % len(APPLICATIONS)],
                            target=TARGETS[number % len(TARGETS)], tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
                            at=start)
    writer = await SessionLogWriter.open(directory, header, signer, OPTIONS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for index in range(statements):
            at = start + index
            refused = (number + index) % 7 == 0
            seq = writer.admit(records.statement(
                protocol="simple", sql=f"SELECT id, email, city FROM customers WHERE id > {index} LIMIT 3",
                decision="refused" if refused else "allowed", rule="roles.analysts" if refused else None,
                limits=LIMITS, at=at))
            assert seq is not None, writer.refusal
            rows = RowCapture(LIMITS)
            for row in range(3):
                rows.add([str(row).encode(), b"a***@example.com", b"Lyon"])
            writer.emit(records.result(statement=seq, limits=LIMITS, columns=[("id", 23, 0), ("email", 25, 0),
                                                                             ("city", 25, 0)],
                                       rows=None if refused else rows, command_tag=None if refused else "SELECT 3",
                                       error=("42501", "pgguard: refused") if refused else None, duration_ms=0.4,
                                       at=at + 0.01))
        writer.close(records.close(reason="client terminated", bytes_in=1000, bytes_out=5000, counts={},
                                   at=start + statements))


async def generate(directory: Path, sessions: int, statements: int, first: float) -> None:
    signer = Signer("bench", Ed25519PrivateKey.generate())
    for batch in range(0, sessions, 100):
        async with trio.open_nursery() as nursery:
            for number in range(batch, min(batch + 100, sessions)):
                nursery.start_soon(write_session, directory, signer, number, statements, first + number * 60)


def time_list(directory: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "replay.cli", "--dir", str(directory), "list"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    elapsed = time.perf_counter() - started
    assert done.stdout.count(b"\n") > 1
    return elapsed


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--sessions", type=int, default=5000)
    options.add_argument("--statements", type=int, default=10)
    options.add_argument("--rounds", type=int, default=3)
    options.add_argument("--keep", type=Path, help="write the logs here and leave them")
    args = options.parse_args()
    directory = args.keep or Path(tempfile.mkdtemp(prefix="replay-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        trio.run(generate, directory, args.sessions, args.statements, time.time() - args.sessions * 60)
        written = time.perf_counter() - started
        size = sum(path.stat().st_size for path in directory.glob("*.pgglog"))
        print(f"{args.sessions} sessions of {args.statements} statements written in {written:.1f} s "
              f"({size / 2**20:.1f} MiB)")
        cold, warm, one_new = [], [], []
        for round_ in range(args.rounds):
            (directory / INDEX_NAME).unlink(missing_ok=True)
            cold.append(time_list(directory))
            warm.append(time_list(directory))
            trio.run(generate_one, directory, args.statements, args.sessions + round_)
            one_new.append(time_list(directory))
        print("| list | median of %d (s) | runs (s) |" % args.rounds)
        print("|---|---:|---|")
        for name, runs in (("cold (no index)", cold), ("warm (index current)", warm), ("one new log", one_new)):
            print(f"| {name} | {statistics.median(runs):.2f} | {', '.join(f'{run:.2f}' for run in runs)} |")
    finally:
        if args.keep is None:
            shutil.rmtree(directory)
    return 0


async def generate_one(directory: Path, statements: int, number: int) -> None:
    await write_session(directory, Signer("bench", Ed25519PrivateKey.generate()), number, statements, time.time())


if __name__ == "__main__":
    sys.exit(main())
