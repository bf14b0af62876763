"""Following a session's requests and responses, to mask each result with its plan.

Sans I/O, like the rest of the relay's processing. The client's messages
say what results will come back and in which order: a simple Query's
statements one after the other; in the extended protocol, each Parse, Bind,
Describe, Execute, Close and Sync gets its answer in turn, and after an
error the server skips everything up to Sync. The server's messages are
matched against that queue, so each DataRow is masked with the plan of the
statement that produced it, with the types and formats its RowDescription
and Bind fixed. Names carry plans across messages: prepared statements
(Parse, PREPARE), portals (Bind), cursors (DECLARE/FETCH).

Free text gets the session's content detectors wherever it goes out:
rows, COPY data, notices, errors and notifications.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pgguard.masking.lineage import Lineage, SourceColumn
from pgguard.masking.plan import NULLIFY, Clearance, MaskingRefused, ResultPlan, RowMasker, plan, row_masker
from pgguard.wire import backend
from pgguard.wire.backend import FieldDescription

# A result whose lineage is lost (EXECUTE or FETCH of a name never seen):
# every column hidden, whatever its shape.
HIDE_ALL = ResultPlan(None, hide_all=True)
_NO_ROWS = ResultPlan(())


@dataclass(eq=False)
class _Prepared:
    """A prepared statement as one Parse made it (a later Parse of the name makes another)."""

    plan: ResultPlan
    fields: list[FieldDescription] | None = None  # from a Describe of the statement


@dataclass(eq=False)
class _Portal:
    """A portal as one Bind made it."""

    prepared: _Prepared
    formats: list[int]
    fields: list[FieldDescription] | None = None  # from a Describe of the portal


@dataclass(eq=False)
class _Unit:
    """One request whose answer has not fully arrived.

    Requests hold the very statement or portal they name, as it was when they
    were sent: the unnamed ones are replaced by the next Parse or Bind long
    before a pipelined Execute's rows come back.
    """

    kind: str  # query, parse, bind, describe, execute, close, sync, call
    plans: list[ResultPlan] = field(default_factory=list)  # query: one per statement
    prepared: _Prepared | None = None  # describe of a statement
    portal: _Portal | None = None  # describe of a portal, execute


class ResultMasking:
    def __init__(self, clearance: Clearance, analyse: Callable[[str], list[Lineage]],
                 table_column: Callable[[int, int], SourceColumn | None]) -> None:
        self.clearance = clearance
        self._analyse = analyse
        self._table_column = table_column
        self._units: deque[_Unit] = deque()
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        # Plans by the name a later FETCH or EXECUTE (SQL) uses.
        self._named: dict[str, ResultPlan] = {}
        self._masker: RowMasker | None = None
        self._executing: _Unit | None = None
        self._scrub_copy = False

    # -- what the client asks ---------------------------------------------------

    def plans(self, sql: str) -> list[ResultPlan]:
        """One plan per statement; raises MaskingRefused for a statement that cannot be masked."""
        plans = []
        for found in self._analyse(sql):
            if found.uses is not None:
                prepared = self._statements.get(found.uses)
                plans.append(self._named.get(found.uses) or (prepared.plan if prepared else HIDE_ALL))
                continue
            result = plan(found, self.clearance)
            if found.copy and result.hides_anything:
                raise MaskingRefused("COPY of a column this session may not see unmasked is not supported;"
                                     " SELECT it instead, where it is masked")
            if found.defines is not None:
                # DECLARE and PREPARE return no rows now; FETCH and EXECUTE will.
                self._named[found.defines] = result
                result = _NO_ROWS
            plans.append(result)
        return plans

    def query(self, sql: str) -> None:
        self._units.append(_Unit("query", self.plans(sql)))

    def parse(self, name: str, sql: str) -> None:
        plans = self.plans(sql)
        self._statements[name] = _Prepared(plans[0] if len(plans) == 1 else HIDE_ALL)
        self._units.append(_Unit("parse"))

    def bind(self, portal: str, statement: str, formats: list[int]) -> None:
        self._portals[portal] = _Portal(self._statements.get(statement) or _Prepared(HIDE_ALL), formats)
        self._units.append(_Unit("bind"))

    def describe(self, target: str, name: str) -> None:
        if target == "S":
            self._units.append(_Unit("describe", prepared=self._statements.get(name)))
        else:
            self._units.append(_Unit("describe", portal=self._portals.get(name)))

    def execute(self, portal: str) -> None:
        self._units.append(_Unit("execute", portal=self._portals.get(portal)))

    def close(self, target: str, name: str) -> None:
        (self._statements if target == "S" else self._portals).pop(name, None)
        self._units.append(_Unit("close"))

    def sync(self) -> None:
        self._units.append(_Unit("sync"))

    def function_call(self) -> None:
        self._units.append(_Unit("call"))

    # -- what the server answers --------------------------------------------------

    def server(self, tag: int, message: bytes) -> bytes:
        """`message` as the client may see it."""
        if tag == 0x44:  # D DataRow
            head = self._head()
            if head is not None and head.kind == "execute" and head is not self._executing:
                self._executing = head
                self._start_execute(head)
            return self._masker.mask(message) if self._masker is not None else message
        if tag == 0x54:  # T RowDescription
            self._row_description(backend.RowDescription.decode(message[5:]).fields)
        elif tag in (0x43, 0x49, 0x73):  # C CommandComplete, I EmptyQuery, s PortalSuspended
            self._result_done()
        elif tag == 0x64 and self._scrub_copy and self.clearance.scrubber is not None:  # d CopyData
            return b"d" + message[1:5] + self.clearance.scrubber.scrub_bytes(message[5:])
        elif tag == 0x48:  # H CopyOutResponse
            self._copy_out()
        elif tag in (0x31, 0x32, 0x33, 0x6E):  # ParseComplete, BindComplete, CloseComplete, NoData
            self._pop(tag)
        elif tag == 0x45:  # E ErrorResponse
            self._error()
            return self._scrub_notice(backend.ErrorResponse, message)
        elif tag == 0x4E:  # N NoticeResponse
            return self._scrub_notice(backend.NoticeResponse, message)
        elif tag == 0x41:  # A NotificationResponse
            return self._scrub_notification(message)
        elif tag == 0x5A:  # Z ReadyForQuery
            self._ready()
        return message

    def _head(self) -> _Unit | None:
        return self._units[0] if self._units else None

    def _row_description(self, fields: list[FieldDescription]) -> None:
        head = self._head()
        if head is None:
            return
        if head.kind == "describe":
            self._units.popleft()
            described = head.prepared or head.portal
            if described is not None:
                described.fields = fields
        elif head.kind == "query":
            current = head.plans[0] if head.plans else HIDE_ALL
            self._masker = self._bind_masker(current, fields, None)

    def _bind_masker(self, result: ResultPlan, fields: list[FieldDescription],
                     formats: list[int] | None) -> RowMasker | None:
        if result.hide_all:
            result = ResultPlan(tuple(NULLIFY for _ in fields))
        return row_masker(result, fields, formats, self.clearance, self._table_column)

    def _start_execute(self, head: _Unit) -> None:
        portal = head.portal
        if portal is None:
            self._masker = _NullEverything()  # rows of a portal pgguard never saw bound
            return
        result = portal.prepared.plan
        fields = portal.fields or portal.prepared.fields
        if fields is not None:
            self._masker = self._bind_masker(result, fields, portal.formats)
        elif result.hides_anything:
            # No RowDescription seen: types unknown, so hidden columns become
            # NULL, which every type admits; and with no shape, all of them.
            planned = result.columns
            self._masker = _NullEverything() if result.hide_all or planned is None else \
                RowMasker([None if spec is None else _null for spec in planned])
        else:
            self._masker = None

    def _result_done(self) -> None:
        self._masker = None
        self._scrub_copy = False
        head = self._head()
        if head is None:
            return
        if head.kind == "query":
            if head.plans:
                head.plans.pop(0)
        elif head.kind == "execute":
            self._units.popleft()
            self._executing = None

    def _copy_out(self) -> None:
        # COPY of hidden columns was refused before it ran (plans()); what
        # remains is free text for the detectors.
        self._scrub_copy = True

    def _pop(self, tag: int) -> None:
        if self._units:
            self._units.popleft()
        if tag == 0x6E:  # NoData
            self._masker = None

    def _error(self) -> None:
        """The current request failed; in the extended protocol the server skips to Sync."""
        self._masker = None
        self._scrub_copy = False
        self._executing = None
        while self._units and self._units[0].kind not in ("query", "sync", "call"):
            self._units.popleft()
        if self._units and self._units[0].kind == "query":
            self._units[0].plans.clear()

    def _ready(self) -> None:
        while self._units:
            unit = self._units.popleft()
            if unit.kind in ("query", "sync", "call"):
                break

    def _scrub_notice(self, kind: type[backend.ErrorResponse] | type[backend.NoticeResponse],
                      message: bytes) -> bytes:
        scrubber = self.clearance.scrubber
        if scrubber is None:
            return message
        notice = kind.decode(message[5:])
        fields = {code: scrubber.scrub(text) for code, text in notice.fields.items()}
        return message if fields == notice.fields else kind(fields).encode()

    def _scrub_notification(self, message: bytes) -> bytes:
        scrubber = self.clearance.scrubber
        if scrubber is None:
            return message
        note = backend.NotificationResponse.decode(message[5:])
        payload = scrubber.scrub(note.payload)
        return message if payload is note.payload else \
            backend.NotificationResponse(note.process_id, note.channel, payload).encode()


def _null(value: bytes) -> None:
    return None


class _NullEverything(RowMasker):
    """Every column NULL, however many there are."""

    def __init__(self) -> None:
        super().__init__([])

    def mask(self, message: bytes) -> bytes:
        count = int.from_bytes(message[5:7], "big")
        body = message[5:7] + b"\xff\xff\xff\xff" * count
        return b"D" + (len(body) + 4).to_bytes(4, "big") + body
