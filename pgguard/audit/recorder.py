"""A session's traffic turned into session-log records as it passes, sans I/O.

The relay tells the recorder what it forwards: each request as it decides on
it, and each server message as the client receives it (after masking). The
recorder pairs answers with the statements that asked for them the way the
server answers them: in order, each Query's results until its ReadyForQuery,
each Execute's until its CommandComplete, and after an error in the extended
protocol nothing until Sync.

A statement about to be forwarded is admitted (`SessionLogWriter.admit`)
before it goes: when the log cannot take its record, the recorder says so
and the relay refuses the statement instead. Records of what already
happened (refusals, results, notices) are emitted.

One statement record is made per request that runs SQL: a Query message
(which may hold several statements, each with its own result record), an
Execute (its SQL from the Parse, its parameters from the Bind) or a
FunctionCall. An admitted statement the server then skipped (an earlier
error in its batch) has no result record.

The recorder keeps the text of the last _MAX_NAMES prepared statements and
portals the client used; a portal only until its transaction ends, as the
server does. An Execute of a portal whose statement it does not hold
(prepared before them, with SQL PREPARE, or a DECLAREd cursor) would have a
record without its SQL, or with another's: `untold()` says so, and the relay
refuses it.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol as Interface, TypeVar

from pgguard.audit import records
from pgguard.audit.records import Limits, Record, RowCapture, Value
from pgguard.masking.detectors import Scrubber
from pgguard.policy.guard import Decision
from pgguard.wire import backend
from pgguard.wire.codec import Repeated, read_done, read_nullables
from pgguard.wire.framing import Frame

log = logging.getLogger("pgguard.audit")

_DATA_ROW, _COPY_DATA, _ROW_DESCRIPTION, _FUNCTION_RESULT = 0x44, 0x64, 0x54, 0x56
_COMMAND_COMPLETE, _EMPTY_QUERY, _PORTAL_SUSPENDED = 0x43, 0x49, 0x73
_ERROR, _NOTICE, _READY = 0x45, 0x4E, 0x5A
# The server's messages the recorder reads besides DataRow; it passes over the others.
_READ = frozenset((_COPY_DATA, _ROW_DESCRIPTION, _FUNCTION_RESULT, _COMMAND_COMPLETE, _EMPTY_QUERY, _PORTAL_SUSPENDED,
                   _ERROR, _NOTICE, _READY))
# Prepared statements and portals remembered at most; the oldest go first.
_MAX_NAMES = 1000
# What a name may hold: each statement's text and classes.
Held = tuple[tuple[str, tuple[str, ...]], ...]


class LogSink(Interface):
    """What the recorder needs of a SessionLogWriter."""

    refusal: str

    @property
    def out_of_space(self) -> bool: ...

    def admit(self, record: Record) -> int | None: ...

    def emit(self, record: Record) -> int | None: ...

    def close(self, record: Record) -> None: ...


@dataclass(eq=False, slots=True)
class _Pending:
    """A request whose answer is still to come."""

    seq: int | None  # its statement record; None for a Sync, or a request not recorded
    until_ready: bool  # answered until ReadyForQuery (Query, Sync, FunctionCall), else until its result
    started: float
    recorded: bool = True  # False: refused because its record could not be written; nothing to add


@dataclass(frozen=True, slots=True)
class _Prepared:
    sql: str
    classes: tuple[str, ...]


class SessionRecorder:
    def __init__(self, sink: LogSink, limits: Limits, parameter_scrubber: Scrubber | None) -> None:
        self.sink = sink
        self.limits = limits
        self._scrubber = parameter_scrubber
        self._pending: deque[_Pending] = deque()
        self._statements: dict[str, _Prepared] = {}
        # Each portal's statement (None: one the recorder does not hold, by its name), parameters, and
        # the request (counted as below) that bound it: the portal ends with the transaction it is in.
        self._portals: dict[str, tuple[_Prepared | None, str, list[Value], int]] = {}
        # Requests sent that end in ReadyForQuery (Query, Sync, FunctionCall), and those answered.
        self._requests = 0
        self._answered = 0
        # Client side: a refusal earlier in this extended-protocol batch, whose
        # Executes the server will skip up to Sync.
        self._skipping = False
        # Server side: the result being received.
        self._columns: list[tuple[str, int, int]] = []
        self._rows: RowCapture | None = None
        self._describe = Repeated(_columns)
        self.counts: Counter[str] = Counter()
        self._last_refusal = ""

    # -- what the client sends ----------------------------------------------------

    @property
    def refusal_sqlstate(self) -> str:
        """The SQLSTATE for a statement refused because its record could not be written."""
        return "53100" if self.sink.out_of_space else "53000"

    def query(self, sql: str, classes: tuple[str, ...], refused: Decision | None, runs: bool) -> bool:
        """A Query about to be forwarded; `runs` is False when a refusal's stand-in is all that goes.
        False: its record could not be written, and it must be refused instead."""
        return self._statement("simple", sql, classes, refused, runs, None, until_ready=True)

    def parse(self, name: str, sql: str, classes: tuple[str, ...], refused: Decision | None) -> None:
        self._statements.pop(name, None)
        if refused is None:
            _remember(self._statements, name, _Prepared(sql, classes))
            return
        self.refused(sql, classes, refused)

    def refused(self, sql: str, classes: tuple[str, ...], refused: Decision) -> None:
        """An extended-protocol message refused (a Parse, or a Bind decided again after a reload):
        recorded as refused, and the server skips the rest of its batch."""
        self._statement("extended", sql, classes, refused, False, None, until_ready=False)
        self._skipping = True

    def bind(self, portal: str, statement: str, formats: list[int], values: list[bytes | None],
             encoding: str, held: Held | None = None) -> None:
        """A Bind of `statement` to `portal`. `held`: every statement (text and classes) the server may
        hold under the name, as the policy guard follows Parse, PREPARE, Close and DEALLOCATE and what
        became of them (a Parse of a name the server holds fails, and the name keeps its statement);
        without it, the recorder's own memory of Parses is taken."""
        if self._skipping:
            return
        parameters = self._parameters(formats, values, encoding)
        prepared = self._statements.get(statement)
        if held is not None:
            prepared = _one_of(f"prepared statement {statement!r}", held)
        elif prepared is not None:  # kept as the most recently used
            _remember(self._statements, statement, self._statements.pop(statement))
        _remember(self._portals, portal, (prepared, statement, parameters, self._requests + 1))

    def execute(self, portal: str, refused: Decision | None = None, cursor: Held | None = None) -> bool:
        """An Execute about to be forwarded, or refused in favour of a stand-in; `cursor`: what a
        portal the client did not bind (a DECLAREd cursor) may run, as the guard follows it.
        False: refuse it, its record could not be written."""
        if self._skipping:
            return True  # the server skips it: nothing runs, nothing to record
        bound = self._portals.get(portal)
        if bound is not None:  # a portal run again (PortalSuspended) stays
            _remember(self._portals, portal, self._portals.pop(portal))
        elif cursor:
            _remember(self._portals, portal, (_one_of(f"portal {portal!r}", cursor), None, [], self._requests + 1))
        sql, classes, parameters = self._portal(portal)
        if self._statement("extended", sql, classes, refused, refused is None, parameters, until_ready=False):
            self._skipping = refused is not None
            return True
        self._skipping = True
        return False

    def untold(self, portal: str) -> str | None:
        """Why an Execute of `portal` must not run, when its record could not say what it runs: the
        recorder does not hold its statement's text. None when it does, or when the server skips
        the Execute anyway (an earlier error in its batch)."""
        if self._skipping:
            return None
        prepared, statement, _, _ = self._portals.get(portal, (None, None, [], 0))
        if prepared is not None:
            return None
        if statement is None:
            return (f"the session log does not hold the text of portal {portal!r}: not one bound in this "
                    "transaction (a DECLAREd cursor?), so it cannot record what it runs")
        return (f"the session log does not hold the text of prepared statement {statement!r} (pgguard keeps "
                f"the last {_MAX_NAMES} the session used), so it cannot record what it runs")

    def _portal(self, portal: str) -> tuple[str, tuple[str, ...], list[Value]]:
        prepared, statement, parameters, _ = self._portals.get(portal, (None, None, [], 0))
        if prepared is not None:
            return prepared.sql, prepared.classes, parameters
        what = f"portal {portal!r}" if statement is None else f"prepared statement {statement!r}"
        return f"-- Execute of {what}, whose text the session log does not hold", (), parameters

    # -- held statements (docs/approvals.md) ---------------------------------------

    def hold_query(self, sql: str, classes: tuple[str, ...], rule: str, reason: str) -> int | None:
        """A Query held for approval: its record, admitted before the request is known. None: not written."""
        return self.sink.admit(records.statement(protocol="simple", sql=sql, decision="held", limits=self.limits,
                                                 rule=rule, reason=reason, classes=classes))

    def hold_execute(self, portal: str, sql: str, rule: str, reason: str) -> int | None:
        """An Execute held for approval, with its Bind's parameters; `sql` is its text as the guard read it."""
        _, classes, parameters = self._portal(portal)
        return self.sink.admit(records.statement(protocol="extended", sql=sql, decision="held", limits=self.limits,
                                                 parameters=parameters, rule=rule, reason=reason, classes=classes))

    def approval(self, statement: int, request: str, event: records.ApprovalEvent, by: str | None = None,
                 reason: str | None = None, until: float | None = None) -> bool:
        """A step of a held statement's request. An approval that releases it is admitted, so nothing
        runs unrecorded; False when it could not be written."""
        record = records.approval(statement=statement, request=request, event=event, by=by, reason=reason,
                                  until=until)
        return (self.sink.admit(record) if event == "approved" else self.sink.emit(record)) is not None

    def release(self, statement: int, simple: bool, runs: bool) -> None:
        """A held statement leaves the gateway: itself (`runs`) or the stand-in of its refusal.
        Its answer is the held statement's result."""
        self.counts["statements"] += 1
        if not runs:
            self.counts["refused"] += 1
            self._skipping = not simple
        self._expect(_Pending(statement, simple, time.monotonic()))

    def function_call(self, oid: int, formats: list[int], args: list[bytes | None], encoding: str,
                      refused: Decision | None) -> bool:
        parameters = self._parameters(formats, args, encoding)
        return self._statement("function_call", f"-- FunctionCall of function OID {oid}", (), refused,
                               refused is None, parameters, until_ready=True)

    def _parameters(self, formats: list[int], values: list[bytes | None], encoding: str) -> list[Value]:
        """The parameters as recorded: text-format values as text where they decode, binary ones
        as bytes; either way through the detectors first, so the log does not keep what they find.
        One loop, no call per value: this runs for every Execute."""
        scrubber = self._scrubber
        each = len(formats) > 1  # else none (all text) or one for all
        every = formats[0] if len(formats) == 1 else 0
        recorded: list[Value] = []
        for index, value in enumerate(values):
            if value is not None:
                if scrubber is not None:
                    value = scrubber.scrub_bytes(value)
                if (formats[index] if each else every) == 0:
                    try:
                        recorded.append(value.decode(encoding))
                        continue
                    except (UnicodeDecodeError, LookupError):
                        pass
            recorded.append(value)
        return recorded

    def sync(self) -> None:
        self._skipping = False
        self._expect(_Pending(None, True, time.monotonic()))

    def forget(self, kind: str, name: str) -> None:
        """A Close of a prepared statement ("S") or portal ("P")."""
        (self._statements if kind == "S" else self._portals).pop(name, None)

    def _statement(self, protocol: records.Protocol, sql: str, classes: tuple[str, ...],
                   refused: Decision | None, runs: bool, parameters: list[Value] | None, *,
                   until_ready: bool) -> bool:
        record = records.statement(
            protocol=protocol, sql=sql, decision="allowed" if refused is None else "refused", limits=self.limits,
            parameters=parameters, rule=refused.rule if refused is not None else None,
            reason=refused.reason if refused is not None else None, classes=classes)
        seq = self.sink.admit(record) if runs else self.sink.emit(record)
        started = time.monotonic()
        if seq is None and runs:
            self._note_refusal()
            self.counts["unrecorded"] += 1
            self._expect(_Pending(None, until_ready, started, recorded=False))
            return False
        self.counts["statements"] += 1
        if refused is not None:
            self.counts["refused"] += 1
        self._expect(_Pending(seq, until_ready, started))
        return True

    def _expect(self, pending: _Pending) -> None:
        """A request forwarded, whose answer is to come."""
        self._pending.append(pending)
        self._requests += pending.until_ready

    def _note_refusal(self) -> None:
        """Tell the operator why statements are refused, once per reason."""
        reason = self.sink.refusal
        if reason != self._last_refusal:
            self._last_refusal = reason
            log.warning("session log: refusing statements: %s", reason)

    # -- what the client receives -------------------------------------------------

    def server(self, tag: int, message: bytes) -> None:
        """One message the client receives (when the relay changed it, as it was sent)."""
        self.server_frames((Frame(tag, message),))

    def server_frames(self, frames: Iterable[Frame]) -> None:
        """The messages the client receives, in order: one call per read from the server."""
        for frame in frames:
            tag = frame.tag
            if tag == _DATA_ROW:
                rows = self._rows
                if rows is None:
                    rows = self._rows = RowCapture(self.limits)
                if rows.truncated:
                    rows.count += 1  # past the caps: counted without decoding
                else:
                    message = frame.data
                    values, end = read_nullables(message, 5)  # DataRow's body, read in place
                    if end != len(message):
                        read_done(message, end)  # raises
                    rows.add(values, end - 7 - 4 * len(values))  # its values' bytes: less the counts and lengths
            elif tag not in _READ:
                continue  # BindComplete, ParseComplete, ParameterStatus...: nothing to record
            elif tag == _COMMAND_COMPLETE:
                self._result(frame.data[5:-1].decode("utf-8", "replace"), None)
            elif tag == _READY:
                self._ready(frame.data[5:6])
            elif tag == _ROW_DESCRIPTION:
                self._columns = self._describe(frame.data)
            elif tag == _COPY_DATA:
                message = frame.data
                (self._rows or self._new_rows()).add([message[5:]], len(message) - 5)
            elif tag == _EMPTY_QUERY or tag == _PORTAL_SUSPENDED:
                self._result(None, None)
            elif tag == _FUNCTION_RESULT:
                (self._rows or self._new_rows()).add([backend.FunctionCallResponse.decode(frame.body).value])
                self._result(None, None)
            elif tag == _ERROR:
                fields = dict(backend.ErrorResponse.decode(frame.body).fields)
                self._result(None, (fields.get("C", ""), fields.get("M", "")))
            else:
                self._notice(dict(backend.NoticeResponse.decode(frame.body).fields))

    def _new_rows(self) -> RowCapture:
        self._rows = RowCapture(self.limits)
        return self._rows

    def _result(self, command_tag: str | None, error: tuple[str, str] | None) -> None:
        head = self._pending[0] if self._pending else None
        if error is not None:
            self.counts["errors"] += 1
        if head is None or head.recorded:
            seq = head.seq if head is not None else None
            if seq is not None or error is not None:  # an error answering a Parse, Bind or Sync: no statement
                duration = (time.monotonic() - head.started) * 1000 if head is not None else 0.0
                self.sink.emit(records.result(statement=seq, limits=self.limits, columns=self._columns,
                                              rows=self._rows, command_tag=command_tag, error=error,
                                              duration_ms=duration))
        self._columns = []
        self._rows = None
        if head is None or head.until_ready:
            return
        self._pending.popleft()
        if error is not None:
            # The server skips the rest of the batch: its Executes get no answer.
            while self._pending and not self._pending[0].until_ready:
                self._pending.popleft()

    def _notice(self, fields: dict[str, str]) -> None:
        head = self._pending[0] if self._pending else None
        self.sink.emit(records.notice(statement=head.seq if head is not None else None,
                                      severity=fields.get("V", fields.get("S", "")), sqlstate=fields.get("C", ""),
                                      message=fields.get("M", ""), limits=self.limits))

    def _ready(self, status: bytes) -> None:
        while self._pending:
            if self._pending.popleft().until_ready:
                break
        self._columns = []
        self._rows = None
        self._answered += 1
        if status == b"I" and self._portals:  # out of any transaction: the portals bound until now are gone
            answered = self._answered
            self._portals = {name: held for name, held in self._portals.items() if held[3] > answered}

    # -- the end --------------------------------------------------------------------

    def close(self, reason: str, bytes_in: int, bytes_out: int) -> None:
        self.sink.close(records.close(reason=reason, bytes_in=bytes_in, bytes_out=bytes_out, counts=self.counts))


def _one_of(what: str, held: Held) -> _Prepared | None:
    """The statement of a name that holds one of `held`: itself, or all of them, said so; None for none."""
    if len(held) <= 1:
        return _Prepared(*held[0]) if held else None
    texts = "\n".join(f"-- or:\n{sql}" if index else sql for index, (sql, _) in enumerate(held))
    return _Prepared(f"-- {what} holds one of these (a Parse of it failed, or may have):\n{texts}",
                     tuple(sorted({each for _, classes in held for each in classes})))


_Named = TypeVar("_Named")


def _remember(names: dict[str, _Named], name: str, value: _Named) -> None:
    names[name] = value
    if len(names) > _MAX_NAMES:
        del names[next(iter(names))]


def _columns(message: bytes) -> list[tuple[str, int, int]]:
    """A RowDescription's columns as a result record keeps them: name, type OID, format."""
    return [(f.name, f.type_oid, f.format) for f in backend.RowDescription.decode(message[5:]).fields]
