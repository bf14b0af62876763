"""Session-log records, format 1: their constructors, their size limits, their encoding.

A record is a plain dict with a `type` and an `at`, so that the relay can build one with a
few dict insertions on its hot path and hand it to the writer; no class instances are
created and none have to be converted. The keyword-only signatures below are the schema;
docs/session-log.md is its public description. `seq` and `prev` are not set here: the chain
(`chain.py`) adds them when it encodes and links the record.

Times are float seconds since the Unix epoch (UTC): `time.time()` costs nothing to take,
msgpack stores a float in 9 bytes, and every reader can turn one into a date. Durations are
float milliseconds.

Everything a client or the database controls is clipped to `Limits`, so that one huge value
cannot make the log the biggest thing on the disk. A clipped value becomes a map
`{"truncated": <its size in bytes>, "head": <its first bytes, or characters>}`: values are
otherwise bytes, strings or nil, so the map cannot be mistaken for one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgpack

import pgguard
from pgguard.identity import Identity

FORMAT_VERSION = 1
# The name of a session's file is its session id followed by this.
SUFFIX = ".pgglog"

Record = dict[str, Any]
Value = bytes | str | None
Protocol = Literal["simple", "extended", "function_call"]
Decision = Literal["allowed", "refused", "held"]
ApprovalEvent = Literal["requested", "approved", "denied", "timed_out", "cancelled", "granted", "expired"]


@dataclass(frozen=True)
class Limits:
    """How much of a session's data its log keeps."""

    # Rows recorded per result; the row count is always exact.
    max_rows: int = 100
    # Bytes of one cell or one parameter value.
    max_cell_bytes: int = 4096
    # Bytes of all the cells of one result, or all the parameters of one statement: a
    # thousand-column row of maximal cells stays bounded too.
    max_values_bytes: int = 256 * 1024
    # Bytes of SQL text, error and notice messages.
    max_text_bytes: int = 64 * 1024


def clip_text(text: str, limit: int) -> str | Record:
    """`text`, or the truncation marker for it when its UTF-8 form is over `limit` bytes."""
    if len(text) * 4 <= limit:  # no UTF-8 character is longer than 4 bytes: no need to encode
        return text
    data = text.encode()
    if len(data) <= limit:
        return text
    return {"truncated": len(data), "head": data[:limit].decode(errors="ignore")}


def _clip_values(values: Sequence[Value], limits: Limits, budget: int) -> tuple[list[Any], int]:
    """`values` clipped to the per-value limit and to `budget` bytes in all; the budget left.

    Once the budget is spent, values become markers with an empty head, so a record still
    shows how many values there were and how big each was.
    """
    clipped: list[Any] = []
    for value in values:
        if value is None:
            clipped.append(None)
            continue
        size = len(value) if isinstance(value, bytes) else len(value.encode())
        room = min(limits.max_cell_bytes, budget)
        if size <= room:
            clipped.append(value)
            budget -= size
            continue
        head: bytes | str = value[:room] if isinstance(value, bytes) else value.encode()[:room].decode(errors="ignore")
        clipped.append({"truncated": size, "head": head})
        budget -= room
    return clipped, budget


class RowCapture:
    """The rows of one result as the client received them, up to the limits, and their count.

    The relay calls `add()` for every DataRow it forwards; rows past the caps are counted, not
    kept, so capturing costs one comparison per row once a result is past them.
    """

    __slots__ = ("_limits", "_budget", "rows", "count", "truncated")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._budget = limits.max_values_bytes
        self.rows: list[list[Any]] = []
        self.count = 0
        self.truncated = False

    def add(self, row: list[bytes | None], size: int = -1) -> None:
        """`row` is kept as it is, or clipped. `size`, if the caller knows it, is the bytes of all
        its values: a row within both limits whole is then kept without a look at each value."""
        self.count += 1
        limits = self._limits
        budget = self._budget
        if len(self.rows) >= limits.max_rows or budget <= 0:
            self.truncated = True
            return
        if 0 <= size <= budget and size <= limits.max_cell_bytes:
            self.rows.append(row)
            self._budget = budget - size
            return
        clipped, self._budget = _clip_values(row, limits, budget)
        self.rows.append(clipped)


def _now(at: float | None) -> float:
    return time.time() if at is None else at


def header(*, session_id: str, identity: Identity, client_address: str, application_name: str | None,
           target: str, tls: tuple[str, str] | None, parameters: Mapping[str, str] | None = None,
           at: float | None = None) -> Record:
    """The first record of every log: who connected, from where, to what. `at` is when the
    session started; `tls` is (protocol version, cipher) or None for a plaintext connection.
    `parameters` are the startup parameters the client had passed upstream (options, search_path,
    DateStyle...): settings that change what its statements mean, made before its first one."""
    return {
        "type": "header",
        "at": _now(at),
        "format": FORMAT_VERSION,
        "session_id": session_id,
        "gateway_version": pgguard.__version__,
        "identity": {
            "provider": identity.provider,
            "issuer": identity.issuer,
            "subject": identity.subject,
            "username": identity.username,
            "groups": list(identity.groups),
            "roles": list(identity.roles),
            "jti": identity.jti,
            "expires_at": identity.expires_at,
        },
        "client_address": client_address,
        "application_name": application_name,
        "target": target,
        "tls": None if tls is None else {"version": tls[0], "cipher": tls[1]},
        "parameters": dict(parameters or {}),
    }


def statement(*, protocol: Protocol, sql: str, decision: Decision, limits: Limits,
              parameters: Sequence[Value] | None = None, rule: str | None = None, reason: str | None = None,
              classes: Sequence[str] = (), at: float | None = None) -> Record:
    """A statement the client sent and what the gateway decided. `parameters` are the values
    of an extended-protocol Bind, already passed through the content detectors by the caller:
    the log stores what it is given."""
    return {
        "type": "statement",
        "at": time.time() if at is None else at,  # _now(), inline: once per statement
        "protocol": protocol,
        "sql": clip_text(sql, limits.max_text_bytes),
        "parameters": None if parameters is None else _clip_values(parameters, limits, limits.max_values_bytes)[0],
        "decision": decision,
        "rule": rule,
        "reason": reason,
        "classes": list(classes),
    }


def approval(*, statement: int, request: str, event: ApprovalEvent, by: str | None = None,
             reason: str | None = None, until: float | None = None, at: float | None = None) -> Record:
    """A step in the life of a held statement; `statement` is the seq of its statement record.
    A `granted` event carries `until`, when the grant it made expires."""
    record = {"type": "approval", "at": _now(at), "statement": statement, "request": request, "event": event,
              "by": by, "reason": reason}
    if until is not None:
        record["until"] = until
    return record


def result(*, statement: int | None, limits: Limits, columns: Sequence[tuple[str, int, int]] = (),
           rows: RowCapture | None = None, command_tag: str | None = None,
           error: tuple[str, str] | None = None, duration_ms: float, at: float | None = None) -> Record:
    """What a statement returned to the client. `statement` is None for an error that answers
    no recorded statement (a Parse or Bind that failed before any Execute). `columns` are
    (name, type OID, format code) from the RowDescription; `error` is (SQLSTATE, message)."""
    return {
        "type": "result",
        "at": time.time() if at is None else at,  # _now(), inline: once per result
        "statement": statement,
        "columns": list(map(list, columns)),
        "row_count": 0 if rows is None else rows.count,
        "rows": [] if rows is None else rows.rows,
        "rows_truncated": False if rows is None else rows.truncated,
        "command_tag": command_tag,
        "error": None if error is None else {"sqlstate": error[0],
                                             "message": clip_text(error[1], limits.max_text_bytes)},
        "duration_ms": duration_ms,
    }


def notice(*, statement: int | None, severity: str, sqlstate: str, message: str, limits: Limits,
           at: float | None = None) -> Record:
    """A NoticeResponse the client received, from the database or from the gateway."""
    return {"type": "notice", "at": _now(at), "statement": statement, "severity": severity,
            "sqlstate": sqlstate, "message": clip_text(message, limits.max_text_bytes)}


def close(*, reason: str, bytes_in: int, bytes_out: int, counts: Mapping[str, int],
          at: float | None = None) -> Record:
    """The last record before the final checkpoint: why and when the session ended."""
    return {"type": "close", "at": _now(at), "reason": reason, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "counts": dict(counts)}


# encode(value): msgpack, with bytes as bin and str as str, so that each reads back as what it
# was. One packer for every record (msgpack.packb would build a new one per call), its method
# called directly (a wrapper would be one more Python call per record). It is not shared
# between threads (records are packed on the relay's thread only).
encode: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True).pack


def decode(payload: bytes | memoryview) -> Record:
    """The record in `payload`; ValueError if it is not one msgpack map with string keys."""
    try:
        record = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as error:  # msgpack raises ValueError, TypeError and its own classes
        raise ValueError(f"not msgpack: {error}") from error
    if not isinstance(record, dict):
        raise ValueError(f"a {type(record).__name__} where a map was expected")
    return record
