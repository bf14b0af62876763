"""The gateway's CPU per pgbench -S transaction, without sockets, a database or the scheduler.

`SessionProtocol` is driven with the exact bytes of pgbench's select-only transactions, and
the exact bytes PostgreSQL answers them with, for three setups:

    bare      the relay alone: no guard, no masking, no session log (`dba` with [audit] off)
    log       the relay and its session log, written through the real writer into a temp dir
    analyst   every guard on: policy, result masking, detectors and the session log

and both of pgbench's query modes:

    simple    Query("SELECT abalance FROM pgbench_accounts WHERE aid = N;"), a new N each
              time; answered by RowDescription, DataRow, CommandComplete, ReadyForQuery
    prepared  Bind, Describe, Execute, Sync of the statement Parsed once per connection (as
              libpq sends them); answered by BindComplete, RowDescription, DataRow,
              CommandComplete, ReadyForQuery

It prints the CPU time (`time.process_time`) per transaction, the writer task's share
included. Unlike pgbench's TPS on a shared machine, that figure is stable to a few percent,
so it is the one to cut. `--profile` adds cProfile's top entries for each setup.

The analyst's catalog is a snapshot made here, of what the gateway would read from a
database with pgbench's tables: the schemas, pgbench_accounts' columns, and the = operator.

    .venv/bin/python bench/profile_relay.py [--transactions N] [--profile] [--only SETUP]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from pgguard.audit import records
from pgguard.audit.recorder import SessionRecorder
from pgguard.audit.sessions import SessionLogs
from pgguard.audit.writer import SessionLogWriter
from pgguard.config import Config, load
from pgguard.demo import data
from pgguard.demo.gateway_config import write_config
from pgguard.identity import Identity
from pgguard.masking.session import MaskingConfig
from pgguard.policy.catalog import Catalog
from pgguard.policy.guard import Policy, SessionGuard
from pgguard.relay.protocol import SessionProtocol
from pgguard.wire import backend, frontend
from pgguard.wire.backend import FieldDescription
from pgguard.wire.framing import MessageFramer

SETUPS = ("bare", "log", "analyst")
MODES = ("simple", "prepared")
ACCOUNTS = 1_000_000  # pgbench -i -s 10
ACCOUNTS_OID = 16400  # pgbench_accounts' OID in the snapshot (any will do, as long as both agree)
INT4, BPCHAR = 23, 1042
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
STATEMENT = "P_0"
# Transactions per reactor turn: the writer task gets the loop between turns, as in the gateway.
TURN = 8
# Records queued for the writer beyond which the harness waits for it (statements are refused
# from half its 4096 on).
QUEUE_HIGH = 1024


def catalog() -> Catalog:
    """What the gateway reads from a database holding pgbench's tables, as far as these statements need it."""
    snapshot = Catalog.from_rows([("s", "public", ""), ("s", "pg_catalog", ""), ("s", "information_schema", ""),
                                  ("r", "pg_catalog", "pg_class"), ("o", "pg_catalog", "=")])
    columns = [("aid", INT4), ("bid", INT4), ("abalance", INT4), ("filler", BPCHAR)]
    return snapshot.with_relations([[str(ACCOUNTS_OID), "public", "pgbench_accounts", str(attnum), name, None,
                                     str(oid)] for attnum, (name, oid) in enumerate(columns, 1)])


# -- what pgbench sends and PostgreSQL answers -------------------------------------------

def simple_transaction(aid: int) -> tuple[bytes, bytes]:
    return frontend.Query(SQL.format(aid)).encode(), b"".join(m.encode() for m in (
        backend.RowDescription([FieldDescription("abalance", ACCOUNTS_OID, 3, INT4, 4, -1, 0)]),
        backend.DataRow([str(-aid % 5000).encode()]), backend.CommandComplete("SELECT 1"),
        backend.ReadyForQuery("I")))


def prepared_setup() -> tuple[bytes, bytes]:
    """What pgbench -M prepared sends once per connection, before its first transaction."""
    return (frontend.Parse(STATEMENT, SQL.format("$1"), []).encode() + frontend.Sync().encode(),
            backend.ParseComplete().encode() + backend.ReadyForQuery("I").encode())


def prepared_transaction(aid: int) -> tuple[bytes, bytes]:
    sent = b"".join(m.encode() for m in (
        frontend.Bind("", STATEMENT, [], [str(aid).encode()], []), frontend.Describe("P", ""),
        frontend.Execute("", 0), frontend.Sync()))
    answer = b"".join(m.encode() for m in (
        backend.BindComplete(), backend.RowDescription([FieldDescription("abalance", ACCOUNTS_OID, 3, INT4, 4, -1, 0)]),
        backend.DataRow([str(-aid % 5000).encode()]), backend.CommandComplete("SELECT 1"),
        backend.ReadyForQuery("I")))
    return sent, answer


# -- the setups ----------------------------------------------------------------------------

@dataclass
class Session:
    protocol: SessionProtocol
    writer: SessionLogWriter | None = None
    recorder: SessionRecorder | None = None


def gateway_config(directory: Path) -> Config:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (directory / name).write_text("not read: there are no sockets here\n")
    path = write_config(directory, host="127.0.0.1", port=6432, admin_port=6433, tls_cert=directory / "cert.pem",
                        tls_key=directory / "key.pem", pg_host="127.0.0.1", pg_port=5432, pg_ca=directory / "ca.pem",
                        database=data.DATABASE, login_passwords={login: "x" for login in data.LOGINS})
    return load(path)


async def open_session(setup: str, config: Config, logs: SessionLogs, policy: Policy,
                       masking_config: MaskingConfig, snapshot: Catalog) -> Session:
    guard = masking = writer = recorder = None
    if setup == "analyst":
        role = config.roles["analysts"]
        guard = SessionGuard(policy, [role.name], role.login, lambda: snapshot)
        masking = masking_config.for_session([role], guard, lambda: snapshot)
        assert masking is not None, "the analysts' role masks nothing"
    if setup != "bare":
        now = time.time()
        identity = Identity(provider="pgguard", issuer="pgguard", subject="bench", username="bench",
                            groups=("analysts",), jti="bench", issued_at=now, expires_at=now + 3600,
                            valid_until=now + 3600, roles=("analysts",))
        header = records.header(session_id=f"bench-{setup}-{random.getrandbits(48):012x}", identity=identity,
                                client_address="127.0.0.1:5000", application_name="pgbench",
                                target=data.DATABASE, tls=None)
        writer, recorder = await logs.open(header)
    protocol = SessionProtocol(MessageFramer(), MessageFramer(), guard, "utf-8", masking=masking, recorder=recorder)
    return Session(protocol, writer, recorder)


def exchange(protocol: SessionProtocol, sent: bytes, answer: bytes) -> None:
    out = protocol.client_bytes(sent)
    assert out.to_upstream == sent and out.close is None, (out, protocol.recorder and protocol.recorder.sink.refusal)
    back = protocol.upstream_bytes(answer)
    assert back.to_client == answer, back


async def run(setup: str, mode: str, transactions: int, config: Config, logs: SessionLogs, policy: Policy,
              masking_config: MaskingConfig, snapshot: Catalog, profiler: cProfile.Profile | None) -> float:
    """CPU seconds per transaction, the writer's included."""
    transaction = simple_transaction if mode == "simple" else prepared_transaction
    # Built before the clock starts: pgbench makes these, not the gateway.
    work = [transaction(random.randint(1, ACCOUNTS)) for _ in range(transactions)]
    async with trio.open_nursery() as nursery:
        session = await open_session(setup, config, logs, policy, masking_config, snapshot)
        if session.writer is not None:
            nursery.start_soon(session.writer.run)
        protocol = session.protocol
        if mode == "prepared":
            exchange(protocol, *prepared_setup())
        for sent, answer in work[:TURN * 4]:  # warm the caches, as a running gateway has them
            exchange(protocol, sent, answer)
        await trio.sleep(0)
        if profiler is not None:
            profiler.enable()
        started = time.process_time()
        for index in range(0, transactions, TURN):
            for sent, answer in work[index:index + TURN]:
                exchange(protocol, sent, answer)
            await trio.sleep(0)
            # One session at full speed outruns the disk's fsync at every checkpoint: wait for
            # the writer (idle time, not CPU time) rather than have it refuse statements.
            while session.writer is not None and session.writer.backlog > QUEUE_HIGH:
                await trio.sleep(0.001)
        if session.recorder is not None:
            session.recorder.close("bench done", protocol.bytes_in, protocol.bytes_out)
    # The nursery waited for the writer to write everything: its time is counted.
    spent = time.process_time() - started
    if profiler is not None:
        profiler.disable()
    if session.recorder is not None:
        counts = session.recorder.counts
        assert counts["unrecorded"] == 0, f"{counts['unrecorded']} statements were refused by the log"
        assert session.writer is not None and session.writer.healthy, session.writer.failure
    return spent / transactions


def top(profiler: cProfile.Profile, entries: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(entries)
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return "\n".join(line.replace(str(Path.cwd()) + "/", "") for line in lines[start:] if line.strip())


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="pgguard-profile-") as temp:
        directory = Path(temp)
        config = gateway_config(directory)
        # The demo config's [audit]: a checkpoint per 1000 records, fsync at checkpoints.
        logs = SessionLogs(config)
        policy = Policy(config)
        masking_config = MaskingConfig(config)
        snapshot = catalog()
        print(f"CPU µs per pgbench -S transaction ({args.transactions} each, best of {args.repeat})")
        print(f"{'setup':10} {'simple':>9} {'prepared':>9}")
        for setup in args.only or SETUPS:
            figures = []
            profiles: list[tuple[str, cProfile.Profile]] = []
            for mode in MODES:
                best = min([await run(setup, mode, args.transactions, config, logs, policy, masking_config,
                                      snapshot, None) for _ in range(args.repeat)])
                figures.append(best * 1e6)
                if args.profile:
                    profiler = cProfile.Profile(time.process_time)
                    await run(setup, mode, args.transactions, config, logs, policy, masking_config, snapshot,
                              profiler)
                    profiles.append((mode, profiler))
            print(f"{setup:10} {figures[0]:9.1f} {figures[1]:9.1f}", flush=True)
            for mode, profiler in profiles:
                print(f"\n--- {setup}, {mode}: top {args.entries} by own time (cProfile) ---")
                print(top(profiler, args.entries), flush=True)
                print()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=20_000, help="transactions per run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown (default 3)")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top entries per setup")
    parser.add_argument("--entries", type=int, default=25, help="profile entries shown (default 25)")
    parser.add_argument("--only", action="append", choices=SETUPS, help="this setup only (repeatable)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    trio.run(main, parse_args(sys.argv[1:]))
