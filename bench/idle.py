"""Memory per idle connection: N clients log in through a target, stay idle, and what that
costs is read from /proc.

- A proxy (PgBouncer, pgguard): its VmRSS after the N logins minus before, over N. The
  gateway's figure holds each session's state: the client and upstream sockets and buffers,
  the policy's and masking's per-session state and the session log's writer.
- direct: PostgreSQL forks a backend per connection; the figure is the mean RssAnon (private
  resident memory) of the N backends, which leaves out the shared buffers each maps.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from connect import login
from procs import process_memory_kib
from targets import DIRECT, PGBOUNCER, PGGUARD_NOLOG, PGGUARD_POLICY, Environment

# One gateway process serves `pgguard` and `pgguard+policy`, and memory Python has freed stays
# in its arenas: of that process, only the target with every guard on is measured, first.
IDLE_TARGETS = (DIRECT, PGBOUNCER, PGGUARD_NOLOG, PGGUARD_POLICY)
IDLE_CLIENTS = 500
SETTLE_SECONDS = 0.5  # after the last login, before memory is read: sessions' first tasks run


@dataclass(frozen=True)
class IdleMemory:
    target: str
    clients: int
    what: str  # which figure: the proxy's VmRSS growth, or the backends' RssAnon
    before_kib: int | None  # the proxy's VmRSS before the logins; None when direct
    after_kib: int  # the proxy's VmRSS with every client idle, or the backends' RssAnon summed

    @property
    def kib_per_connection(self) -> float:
        return (self.after_kib - (self.before_kib or 0)) / self.clients

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"kib_per_connection": self.kib_per_connection}


def measure_idle(env: Environment, name: str, clients: int) -> IdleMemory:
    target = env.targets[name]
    before = None if target.pid is None else process_memory_kib(target.pid)["VmRSS"]
    with contextlib.ExitStack() as stack:
        conns = []
        for _ in range(clients):
            conns.append(conn := login(target))
            stack.callback(conn.finish)
        time.sleep(SETTLE_SECONDS)
        if target.pid is None:
            after = sum(process_memory_kib(conn.backend_pid)["RssAnon"] for conn in conns)
            return IdleMemory(name, clients, "backends' RssAnon", None, after)
        return IdleMemory(name, clients, "VmRSS growth", before, process_memory_kib(target.pid)["VmRSS"])


def idle_memory(env: Environment, clients: int, log: Callable[[str], None] = print) -> list[IdleMemory]:
    """Every target of IDLE_TARGETS in turn, `clients` idle connections at a time."""
    results = []
    for name in IDLE_TARGETS:
        result = measure_idle(env, name, clients)
        log(f"idle {name:<14} {clients} clients: {result.kib_per_connection:.1f} KiB per connection "
            f"({result.what})")
        results.append(result)
    return results


IDLE_COLUMNS = ("target", "idle clients", "measured", "before KiB", "after KiB", "KiB per connection")


def idle_table_rows(results: Sequence[IdleMemory]) -> list[list[str]]:
    return [[r.target, str(r.clients), r.what, "-" if r.before_kib is None else str(r.before_kib), str(r.after_kib),
             f"{r.kib_per_connection:.1f}"] for r in results]
