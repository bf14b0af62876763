"""The gateway's counters, and their Prometheus text exposition at /metrics.

Counting sits on the relay's hot path, so it is plain integer attributes
incremented in place: no labels looked up, no lock (the gateway is one
trio thread). Everything else -- per-session byte counts, gauges, label
sets -- is gathered only when /metrics is scraped. The text format
(version 0.0.4) is small and stable, so it is written here rather than
through prometheus_client, whose metric objects take a lock and a label
lookup on every increment.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator

# Seconds from a request (Query, Sync, FunctionCall) sent while idle to the
# ReadyForQuery that ends it: from a cached SELECT to an hour-long report.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# Why a connection did not become a session, as the `outcome` label of pgguard_logins_total.
LOGIN_OUTCOMES = ("ok", "refused", "timeout", "protocol_violation", "throttled", "too_many_connections",
                  "shutting_down", "disconnected")


class Histogram:
    """Cumulative buckets, a sum and a count; `observe` is a bisect and three increments."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> Iterator[tuple[str, int]]:
        total = 0
        for bound, count in zip((*map(_number, self.bounds), "+Inf"), self.counts):
            total += count
            yield bound, total


class Metrics:
    """Counters shared by every session of one gateway."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.logins = dict.fromkeys(LOGIN_OUTCOMES, 0)
        # Statement messages (Query, Parse, FunctionCall) seen in guarded sessions and relayed
        # ones, and those refused (by policy, masking, or because the session log could not
        # take their record); the rest were forwarded as sent.
        self.statements = 0
        self.statements_refused = 0
        self.latency = Histogram(LATENCY_BUCKETS)
        # Of sessions that have ended; live ones are added at scrape time.
        self.bytes_in = 0
        self.bytes_out = 0
        self.masked_rows = 0
        self.reloads = {"ok": 0, "rejected": 0}


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}.0"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, int]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines.extend(f"{name}{labels} {value}" for labels, value in samples)
    return lines


def render(metrics: Metrics, *, connections: int, sessions: int, live_bytes_in: int, live_bytes_out: int,
           live_masked_rows: int, max_connections: int, held_requests: int) -> str:
    """The exposition text; live values are passed in by the gateway, which knows its sessions."""
    lines: list[str] = []
    lines += _family("pgguard_connections", "gauge", "Client connections open now, logging in or in a session.",
                     [("", connections)])
    lines += _family("pgguard_connections_max", "gauge", "[gateway] max_connections.", [("", max_connections)])
    lines += _family("pgguard_sessions", "gauge", "Sessions open now (logged in).", [("", sessions)])
    lines += _family("pgguard_connections_total", "counter", "Client connections accepted.",
                     [("", metrics.connections_total)])
    lines += _family("pgguard_logins_total", "counter", "Connections by how their login ended.",
                     [(f'{{outcome="{outcome}"}}', count) for outcome, count in metrics.logins.items()])
    allowed = metrics.statements - metrics.statements_refused
    lines += _family("pgguard_statements_total", "counter",
                     "Statement messages (Query, Parse, FunctionCall), by decision.",
                     [('{decision="allowed"}', allowed), ('{decision="refused"}', metrics.statements_refused)])
    latency = metrics.latency
    lines += [
        "# HELP pgguard_request_duration_seconds From a request sent by an idle session to its ReadyForQuery.",
        "# TYPE pgguard_request_duration_seconds histogram",
        *(f'pgguard_request_duration_seconds_bucket{{le="{bound}"}} {count}' for bound, count in latency.cumulative()),
        f"pgguard_request_duration_seconds_sum {latency.sum:g}",
        f"pgguard_request_duration_seconds_count {latency.count}",
    ]
    lines += _family("pgguard_client_bytes_received_total", "counter", "Bytes received from clients.",
                     [("", metrics.bytes_in + live_bytes_in)])
    lines += _family("pgguard_client_bytes_sent_total", "counter", "Bytes sent to clients.",
                     [("", metrics.bytes_out + live_bytes_out)])
    lines += _family("pgguard_masked_rows_total", "counter", "Result rows in which at least one value was masked.",
                     [("", metrics.masked_rows + live_masked_rows)])
    lines += _family("pgguard_held_requests", "gauge", "Statements held for approval now.",
                     [("", held_requests)])
    lines += _family("pgguard_config_reloads_total", "counter", "Configuration reloads, by result.",
                     [(f'{{result="{result}"}}', count) for result, count in metrics.reloads.items()])
    return "\n".join(lines) + "\n"
