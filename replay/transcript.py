"""A session log turned into what a responder reads: the session, its statements, and what
happened to each, in the order it happened.

`load()` reads a log without verifying it (`verify` is a separate question, with its own
command), and without failing on what a live or crashed session leaves: a torn tail ends the
transcript quietly and is noted, and damage ends it with the damage noted, so that a responder
still sees everything before it. Records of types this reader does not know are skipped, as
the format asks (docs/session-log.md, "Compatibility").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgguard.audit.verify import Entry, LogCorrupt, read_records

Record = dict[str, Any]


def text_of(value: Any) -> str:
    """A recorded string, or the head of a clipped one with how much was cut."""
    if isinstance(value, dict) and "truncated" in value:
        head = value.get("head")
        head = head.decode(errors="replace") if isinstance(head, bytes) else str(head or "")
        return f"{head}… [{value['truncated']} bytes in all]"
    return "" if value is None else str(value)


@dataclass
class Approval:
    at: float
    request: str
    event: str  # requested, approved, denied, timed_out, cancelled
    by: str | None
    reason: str | None


@dataclass
class Notice:
    at: float
    severity: str
    sqlstate: str
    message: str


@dataclass
class Result:
    at: float
    columns: list[tuple[str, int, int]]
    row_count: int
    rows: list[list[Any]]
    rows_truncated: bool
    command_tag: str | None
    error: tuple[str, str] | None
    duration_ms: float


@dataclass
class Statement:
    seq: int
    at: float
    protocol: str
    sql: str
    parameters: list[Any] | None
    decision: str  # allowed, refused, held
    rule: str | None
    reason: str | None
    classes: list[str]
    results: list[Result] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    approvals: list[Approval] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """The decision, and for a held statement what became of it."""
        if self.decision != "held":
            return self.decision
        return f"held, {self.approvals[-1].event.replace('_', ' ')}" if self.approvals else "held"


# One step of the timeline: the record's time, and what it was about.
Event = tuple[float, Statement | Result | Notice | Approval, Statement | None]


@dataclass
class Session:
    path: Path
    id: str
    started: float
    user: str
    roles: list[str]
    groups: list[str]
    identity: dict[str, Any]
    client: str
    application: str | None
    target: str
    tls: dict[str, Any] | None
    gateway_version: str
    # The startup parameters the client set (options, search_path...); empty in logs from before them.
    parameters: dict[str, Any] = field(default_factory=dict)
    statements: list[Statement] = field(default_factory=list)
    # Every statement, result, notice and approval in the order recorded, each with its statement.
    timeline: list[Event] = field(default_factory=list)
    close: Record | None = None
    last_at: float = 0.0
    # Why the transcript ends before the file does: a torn tail, or damage.
    torn: str | None = None
    damage: str | None = None

    @property
    def duration(self) -> float:
        return max(0.0, self.last_at - self.started)

    @property
    def state(self) -> str:
        if self.damage:
            return "damaged"
        return "closed" if self.close is not None else "open"


def tally(statements: Iterable[Statement]) -> dict[str, int]:
    """Statements, refusals, holds and errors, counted from the records (not the close record's
    counts, which a crashed session never wrote)."""
    counts = {"statements": 0, "refused": 0, "held": 0, "errors": 0}
    for statement in statements:
        counts["statements"] += 1
        if statement.decision in ("refused", "held"):
            counts[statement.decision] += 1
        counts["errors"] += sum(1 for result in statement.results if result.error)
    return counts


class NotASessionLog(ValueError):
    """The file does not start with a session header."""


def _entries(path: Path) -> tuple[list[Entry], str | None, str | None]:
    """The complete records, and why they stop early: (records, torn, damage)."""
    entries: list[Entry] = []
    damage = None
    try:
        for entry in read_records(path):
            entries.append(entry)
    except LogCorrupt as error:
        damage = f"record {len(entries)} at byte {error.offset}: {error.detail}"
    size = path.stat().st_size
    end = entries[-1].end if entries else 0
    torn = f"{size - end} bytes of an unfinished record at byte {end}" if damage is None and end < size else None
    return entries, torn, damage


def load(path: Path) -> Session:
    entries, torn, damage = _entries(Path(path))
    if not entries or entries[0].record.get("type") != "header":
        raise NotASessionLog(f"{path}: not a session log (no header record)")
    head = entries[0].record
    identity = head.get("identity") or {}
    session = Session(
        path=Path(path), id=str(head.get("session_id")), started=float(head.get("at", 0.0)),
        user=str(identity.get("username", "")), roles=list(identity.get("roles", [])),
        groups=list(identity.get("groups", [])), identity=identity, client=str(head.get("client_address", "")),
        application=head.get("application_name"), target=str(head.get("target", "")), tls=head.get("tls"),
        gateway_version=str(head.get("gateway_version", "")), parameters=dict(head.get("parameters") or {}),
        torn=torn, damage=damage)
    session.last_at = session.started
    by_seq: dict[int, Statement] = {}
    for _, _, record in entries[1:]:
        _add(session, by_seq, record)
    return session


def _add(session: Session, by_seq: dict[int, Statement], record: Record) -> None:
    kind = record["type"]
    if kind == "checkpoint":  # the writer's, not the session's
        return
    at = float(record.get("at", session.last_at))
    session.last_at = max(session.last_at, at)
    owner = by_seq.get(record.get("statement"))  # type: ignore[arg-type]
    if kind == "statement":
        statement = Statement(
            seq=record["seq"], at=at, protocol=str(record.get("protocol", "")), sql=text_of(record.get("sql")),
            parameters=record.get("parameters"), decision=str(record.get("decision", "")), rule=record.get("rule"),
            reason=record.get("reason"), classes=list(record.get("classes") or []))
        by_seq[statement.seq] = statement
        session.statements.append(statement)
        session.timeline.append((at, statement, statement))
    elif kind == "result":
        error = record.get("error")
        result = Result(
            at=at, columns=[tuple(column) for column in record.get("columns") or []],  # type: ignore[misc]
            row_count=int(record.get("row_count", 0)), rows=list(record.get("rows") or []),
            rows_truncated=bool(record.get("rows_truncated")), command_tag=record.get("command_tag"),
            error=None if not error else (str(error.get("sqlstate", "")), text_of(error.get("message"))),
            duration_ms=float(record.get("duration_ms", 0.0)))
        if owner is not None:
            owner.results.append(result)
        session.timeline.append((at, result, owner))
    elif kind == "notice":
        notice = Notice(at, str(record.get("severity", "")), str(record.get("sqlstate", "")),
                        text_of(record.get("message")))
        if owner is not None:
            owner.notices.append(notice)
        session.timeline.append((at, notice, owner))
    elif kind == "approval":
        approval = Approval(at, str(record.get("request", "")), str(record.get("event", "")), record.get("by"),
                            record.get("reason"))
        if owner is not None:
            owner.approvals.append(approval)
        session.timeline.append((at, approval, owner))
    elif kind == "close":
        session.close = record
