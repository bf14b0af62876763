"""Following a session's requests and responses, to mask each result with its plan.

Sans I/O, like the rest of the relay's processing. The client's messages
say what results will come back and in which order: a simple Query's
statements one after the other; in the extended protocol, each Parse, Bind,
Describe, Execute, Close and Sync gets its answer in turn, and after an
error the server skips everything up to Sync. The server's messages are
matched against that queue, so each DataRow is masked with the plan of the
statement that produced it, with the types and formats its RowDescription
and Bind fixed. Names carry plans across messages: prepared statements
(Parse, PREPARE; EXECUTE), portals and cursors (Bind, DECLARE; FETCH).

A name takes its new meaning only when the server confirms it
(ParseComplete, BindComplete, CloseComplete, or the CommandComplete of a
PREPARE or DECLARE), and a name is looked up only when the server starts
answering the request that uses it. A Parse or PREPARE the server rejects
(the name is taken; an earlier error made it skip the batch) therefore
leaves the statement the server still has with its own plan.

Free text gets the session's content detectors wherever it goes out:
rows, COPY data, notices, errors and notifications.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pgguard.masking.copy import CopyMasker, copy_masker, copy_plan
from pgguard.masking.detectors import Scrubber
from pgguard.masking.encodings import lossless
from pgguard.masking.functions import MaskSpec, ValueMask
from pgguard.masking.lineage import Lineage, SourceColumn
from pgguard.masking.plan import (EVERY_DETECTOR, NULLIFY, Clearance, MaskingRefused, ResultPlan, RowMasker,
                                  detector_mask, plan, row_masker)
from pgguard.masking.values import TEXT
from pgguard.policy.catalog import Catalog
from pgguard.wire import backend
from pgguard.wire.backend import FieldDescription
from pgguard.wire.codec import Repeated

# A result whose lineage is lost (EXECUTE or FETCH of a name never seen):
# every column hidden, whatever its shape.
HIDE_ALL = ResultPlan(None, hide_all=True, reads_hidden=True)
_NO_ROWS = ResultPlan(())
# What a plan is made under (ResultMasking.under()).
Under = tuple[int, int, float, bool]
# Names a plan may be found under, followed no further than this.
_MAX_INDIRECTION = 4
# Result plans (by lineage) and row maskers a session keeps; all are dropped when there are more.
_PLANS_KEPT = 256

# Errors and notices of a statement that reads hidden columns: every detector
# over the message and hint, whose quoted parts (where PostgreSQL quotes values)
# are redacted, whose text after the first ": " is redacted (where PostgreSQL
# prints values unquoted: `cross-database references are not implemented:
# ben.obrien1@example.net` from a regclass or regoper cast, make_time's `time
# field value out of range: 444:07:2101`), and whose digits are masked; and no
# detail, context or internal query (`Key (email)=(…)`, `JSON data, line 1: …`,
# dynamic SQL built from a value). What code in a procedural language raised
# (PL/pgSQL's RAISE, which prints values where it likes) is redacted whole.
_QUOTED = re.compile(r'"[\s\S]*"')
_DIGIT = re.compile(r"[0-9]")
_VALUE_FIELDS = ("D", "W", "q", "p")
_TEXT_FIELDS = ("M", "H")
# Said where that changed the message, so that `relation "[redacted]" does not exist` of a
# misspelt name does not leave its reader guessing.
_REDACTED_HINT = ("pgguard hid the quoted parts and digits of this message: the statement reads columns masked"
                  " for you, or a relation pgguard's catalog does not know (a misspelt name is one)")


@dataclass(frozen=True)
class _Use:
    """Rows that come from a name: EXECUTE of a prepared statement ("S"), FETCH from a cursor ("P")."""

    namespace: str
    name: str


@dataclass(frozen=True)
class _Define:
    """What a PREPARE ("S") or DECLARE ("P") creates once it completes."""

    namespace: str
    name: str
    plan: ResultPlan
    holdable: bool = False  # DECLARE ... WITH HOLD
    # Where it was planned from, to plan it again after a reload or a change of search path: the
    # text, the statement's place in it, and what it was planned under (ResultMasking.under()).
    sql: str | None = None
    index: int = 0
    under: Under = (0, 0, 0.0, False)


@dataclass(eq=False)
class _Prepared:
    """A prepared statement as one Parse or PREPARE made it (a later one of the name makes another)."""

    plan: ResultPlan | _Use
    fields: list[FieldDescription] | None = None  # from a Describe of the statement
    defines: _Define | None = None  # the statement is itself a PREPARE or DECLARE
    # Its text, to plan again what the catalog did not know at Parse, or after a reload: the
    # statement at `index` in it; its plan is that of the PREPARE or DECLARE there if `defined`.
    sql: str | None = None
    index: int = 0
    defined: bool = False
    under: Under = (0, 0, 0.0, False)  # what it was planned under (ResultMasking.under())


@dataclass(eq=False)
class _Portal:
    """A portal as one Bind or DECLARE made it."""

    prepared: _Prepared
    formats: list[int]
    fields: list[FieldDescription] | None = None  # from a Describe of the portal
    holdable: bool = False  # outlives its transaction (a cursor WITH HOLD)


@dataclass(eq=False)
class _Step:
    """One statement of a simple Query."""

    plan: ResultPlan | _Use
    defines: _Define | None = None


@dataclass(eq=False)
class _Unit:
    """One request whose answer has not fully arrived.

    What a request names is looked up when the server answers it, so that it
    finds what the server will use: the requests before it have been answered.
    """

    kind: str  # query, parse, bind, describe, execute, close, sync, call
    steps: list[_Step] = field(default_factory=list)  # query: one per statement
    name: str = ""  # parse: statement; bind, execute: portal; describe, close: their target
    target: str = ""  # describe, close: "S" or "P"
    statement: str = ""  # bind: the statement bound
    formats: list[int] = field(default_factory=list)  # bind: result formats
    prepared: _Prepared | None = None  # parse: the statement it makes
    portal: _Portal | None = None  # execute: the portal, once its answer begins
    started: bool = False  # execute: its portal has been looked up


class ResultMasking:
    def __init__(self, clearance: Clearance, analyse: Callable[[str], list[Lineage]],
                 catalog: Callable[[], Catalog], paths: Callable[[], int]) -> None:
        self.clearance = clearance
        self._analyse = analyse
        # How many search paths the session has had: a prepared statement is planned again by the
        # server at a Bind under a changed search_path, so its masking is planned again too.
        self._paths = paths
        # The target's current snapshot: which table column a RowDescription's (table OID, attnum) is,
        # and a table column's type OID for COPY, which has no RowDescription.
        self._catalog = catalog
        self._units: deque[_Unit] = deque()
        # Names as the server has them: prepared statements, portals and cursors.
        self._statements: dict[str, _Prepared] = {}
        self._portals: dict[str, _Portal] = {}
        self._masker: RowMasker | None = None
        self._executing: _Unit | None = None
        self._copy: CopyMasker | None = None
        # For COPY's text and CSV formats: client_encoding as the server last
        # reported it (None: not yet), and whether a statement ran earlier in
        # this cycle (it may have changed client_encoding, reported only at
        # ReadyForQuery).
        self._client_encoding: str | None = None
        self._server_encoding: str | None = None
        self._ran_in_cycle = False
        # Rows in which a value was masked, for the gateway's metrics.
        self.masked_rows = 0
        # One more per reload: what was planned in an earlier one is planned again before use.
        self.generation = 0
        self._fields = Repeated(lambda message: backend.RowDescription.decode(message[5:]).fields)
        self._plans: dict[int, tuple[Lineage, Clearance, ResultPlan]] = {}
        self._maskers: dict[tuple[int, int, tuple[int, ...]],
                            tuple[ResultPlan, list[FieldDescription], Catalog, Clearance, RowMasker | None]] = {}

    # -- what the client asks ---------------------------------------------------

    def steps(self, sql: str) -> list[_Step]:
        """One step per statement; raises MaskingRefused for a statement that cannot be masked."""
        steps = []
        for index, found in enumerate(self._analyse(sql)):
            if found.uses is not None:
                steps.append(_Step(_Use(found.namespace, found.uses)))
                continue
            if found.stores is not None:
                stored = self._statements.get(found.stores)
                stored_plan = self._resolve(stored.plan) if stored is not None else HIDE_ALL
                if stored_plan.reads_hidden or stored_plan.unresolved:
                    raise MaskingRefused(f"CREATE TABLE AS EXECUTE {found.stores} would store values this session"
                                         " may not see where they could be read back unmasked")
            result = self._plan(found)
            if self.clearance.strict:
                self._refuse_encoding_oracle(found, result)
            if found.copy is not None:
                result = copy_plan(found, result, self._column_type, self._client_encoding)
            if found.defines is not None:
                # DECLARE and PREPARE return no rows now; FETCH and EXECUTE will.
                steps.append(_Step(_NO_ROWS, _Define(found.namespace, found.defines, result, found.holdable, sql,
                                                     index, self.under())))
            else:
                steps.append(_Step(result))
        return steps

    def _refuse_encoding_oracle(self, found: Lineage, result: ResultPlan) -> None:
        """A strict session may not read hidden columns in a client encoding that cannot represent every
        character, nor set one: the server fails to send a value that holds such a character
        (masking/encodings.py)."""
        for encoding in found.client_encodings:
            if encoding is None or not lossless(encoding, self._server_encoding):
                raise MaskingRefused(f"a strict role may not set client_encoding to {encoding or 'a computed value'}: "
                                     "the server fails to send a hidden value holding a character that encoding "
                                     "cannot represent, which tells that it does; use UTF8")
        current = self._client_encoding
        if result.reads_hidden and current is not None and not lossless(current, self._server_encoding):
            raise MaskingRefused(f"the statement reads hidden columns in client_encoding {current}, in which the "
                                 "server fails to send a value holding a character it cannot represent, which "
                                 "tells that it does; a strict role reads them in UTF8")

    def _plan(self, found: Lineage) -> ResultPlan:
        """plan(), made once per lineage (a session traces a text, or a shape, once) and clearance."""
        kept = self._plans.get(id(found))
        if kept is not None and kept[0] is found and kept[1] is self.clearance:
            return kept[2]
        result = plan(found, self.clearance)  # a refusal raises, and is made again each time
        if len(self._plans) >= _PLANS_KEPT:
            self._plans.clear()
        self._plans[id(found)] = (found, self.clearance, result)
        return result

    def query(self, sql: str) -> None:
        self._units.append(_Unit("query", self.steps(sql)))

    def parse(self, name: str, sql: str) -> None:
        steps = self.steps(sql)
        prepared = _Prepared(steps[0].plan, defines=steps[0].defines, sql=sql, under=self.under()) \
            if len(steps) == 1 else _Prepared(HIDE_ALL)
        self._units.append(_Unit("parse", name=name, prepared=prepared))

    def bind(self, portal: str, statement: str, formats: list[int]) -> None:
        self._units.append(_Unit("bind", name=portal, statement=statement, formats=formats))

    def describe(self, target: str, name: str) -> None:
        self._units.append(_Unit("describe", name=name, target=target))

    def execute(self, portal: str) -> None:
        self._units.append(_Unit("execute", name=portal))

    def close(self, target: str, name: str) -> None:
        self._units.append(_Unit("close", name=name, target=target))

    def sync(self) -> None:
        self._units.append(_Unit("sync"))

    def function_call(self) -> None:
        self._units.append(_Unit("call"))

    def adopt(self, other: ResultMasking) -> None:
        """Mask from now on as `other` would (a reloaded config).

        Statements and cursors planned already are planned again from their
        text before their next rows (`_plan_of`).
        """
        self.clearance = other.clearance
        self._analyse = other._analyse
        self.generation += 1

    def under(self) -> Under:
        """What a plan is made under: the masking rules' generation, the session's search paths and the
        catalog snapshot (when it was read, and whether DDL has run since)."""
        catalog = self._catalog()
        return self.generation, self._paths(), catalog.loaded_at, catalog.behind

    # -- what the server answers --------------------------------------------------

    def server(self, tag: int, message: bytes) -> bytes:
        """`message` as the client may see it."""
        if tag == 0x44:  # D DataRow
            head = self._head()
            if head is not None and head.kind == "execute" and head is not self._executing:
                self._executing = head
                self._start_execute(head)
            if self._masker is None:
                if head is None or (head.kind != "query" and head.kind != "execute"):
                    return _UNPAIRED.mask(message)  # a row the gateway cannot pair with its request: NULL
                return message
            masked = self._masker.mask(message)
            if masked is not message:
                self.masked_rows += 1
            return masked
        if tag == 0x54:  # T RowDescription
            self._row_description(self._fields(message))
        elif tag in (0x43, 0x49, 0x73):  # C CommandComplete, I EmptyQuery, s PortalSuspended
            self._result_done(tag == 0x43)
        elif tag == 0x64 and self._copy is not None:  # d CopyData
            return self._copy.copy_data(message)
        elif tag == 0x48:  # H CopyOutResponse
            self._copy_out(backend.CopyOutResponse.decode(message[5:]))
        elif tag == 0x63 and self._copy is not None:  # c CopyDone
            self._copy.done()
            self._copy = None
        elif tag == 0x53:  # S ParameterStatus
            self._parameter_status(backend.ParameterStatus.decode(message[5:]))
        elif tag in (0x31, 0x32, 0x33, 0x6E):  # ParseComplete, BindComplete, CloseComplete, NoData
            self._confirm()
        elif tag == 0x45:  # E ErrorResponse
            hidden = self._reads_hidden()
            self._error()
            return self._scrub_notice(backend.ErrorResponse, message, hidden)
        elif tag == 0x4E:  # N NoticeResponse
            return self._scrub_notice(backend.NoticeResponse, message, self._reads_hidden())
        elif tag == 0x41:  # A NotificationResponse
            return self._scrub_notification(message)
        elif tag == 0x5A:  # Z ReadyForQuery
            self._ready(message[5:6])
        return message

    def _head(self) -> _Unit | None:
        return self._units[0] if self._units else None

    def _resolve(self, planned: ResultPlan | _Use) -> ResultPlan:
        """The plan of rows that come from a name, as the server has the name now."""
        for _ in range(_MAX_INDIRECTION):
            if isinstance(planned, ResultPlan):
                return planned
            found = (self._statements if planned.namespace == "S" else self._portals).get(planned.name)
            if found is None:
                return HIDE_ALL
            planned = self._plan_of(found if isinstance(found, _Prepared) else found.prepared)
        return planned if isinstance(planned, ResultPlan) else HIDE_ALL

    def _planned(self, prepared: _Prepared) -> ResultPlan:
        return self._resolve(self._plan_of(prepared))

    def _plan_of(self, prepared: _Prepared) -> ResultPlan | _Use:
        """A prepared statement's or cursor's plan; planned again if the masking rules were reloaded
        or the search path changed since, or if it read a relation the catalog did not know then.

        A cursor's own plan does not change with the search path, but planning it again under
        every path the session has had is the safe side (what may be either of two relations,
        one of them sensitive, is NULL).

        Clients keep prepared statements for the whole session (asyncpg
        caches every query): a plan made under the rules before a reload, or
        before the catalog knew a new view, would keep masking its rows the
        old way. Rows are on their way when this runs, so what cannot be
        masked now is NULL.
        """
        planned = prepared.plan
        now = self.under()
        stale = prepared.under != now
        if not stale and not (isinstance(planned, ResultPlan) and planned.unresolved):
            return planned
        if prepared.sql is None:
            return HIDE_ALL if stale else planned
        try:
            step = self.steps(prepared.sql)[prepared.index]
            fresh = step.plan if not prepared.defined else step.defines.plan if step.defines else HIDE_ALL
        except Exception:  # MaskingRefused, or a statement it cannot analyse now: fail closed
            if now[3]:  # DDL ran since the snapshot was read: NULL until it is read again, then planned again
                return HIDE_ALL
            fresh = HIDE_ALL
        if prepared.under[:2] == now[:2] and isinstance(planned, ResultPlan) and not planned.unresolved:
            # Only the catalog changed: a view may read other columns now. The server plans a prepared
            # statement again, but an open cursor's rows still come from the old definition, and rows
            # may be on their way from either: mask what either plan masks.
            fresh = _stricter(planned, fresh) if isinstance(fresh, ResultPlan) else HIDE_ALL
        if stale or fresh is HIDE_ALL or (isinstance(fresh, ResultPlan) and not fresh.unresolved):
            prepared.plan, prepared.under = fresh, now
        return prepared.plan

    def _portal_of(self, head: _Unit) -> _Portal | None:
        """An Execute's portal, looked up once, when the server starts answering it."""
        if not head.started:
            head.started = True
            head.portal = self._portals.get(head.name)
        return head.portal

    def _current(self) -> ResultPlan | None:
        """The plan of the statement being answered (HIDE_ALL for a portal never bound); None for other requests."""
        head = self._head()
        if head is None:
            return None
        if head.kind == "query":
            return self._resolve(head.steps[0].plan) if head.steps else None
        if head.kind == "execute":
            portal = self._portal_of(head)
            return HIDE_ALL if portal is None else self._planned(portal.prepared)
        return None

    def _reads_hidden(self) -> bool:
        """Whether the statement being answered reads a column the session may not see."""
        current = self._current()
        return current is not None and (current.reads_hidden or current.unresolved)

    def _row_description(self, fields: list[FieldDescription]) -> None:
        head = self._head()
        if head is None or head.kind not in ("describe", "query"):
            # Rows the gateway cannot pair with a request it saw (it lost count): every value NULL.
            self._masker = _UNPAIRED
        elif head.kind == "describe":
            self._units.popleft()
            described = (self._statements if head.target == "S" else self._portals).get(head.name)
            if described is not None:
                described.fields = fields
        elif head.kind == "query":
            current = self._resolve(head.steps[0].plan) if head.steps else HIDE_ALL
            self._masker = self._bind_masker(current, fields, None)

    def _bind_masker(self, result: ResultPlan, fields: list[FieldDescription],
                     formats: list[int] | None) -> RowMasker | None:
        """The masker of a result; made once per plan, RowDescription (the very objects), result formats,
        catalog snapshot and clearance. A RowMasker holds nothing of the rows it masked."""
        key = (id(result), id(fields), tuple(formats) if formats else ())
        catalog = self._catalog()
        kept = self._maskers.get(key)
        if kept is not None and kept[0] is result and kept[1] is fields and kept[2] is catalog \
                and kept[3] is self.clearance:
            return kept[4]
        planned = ResultPlan(tuple(NULLIFY for _ in fields)) if result.hide_all else result
        # A text-like type of an extension (citext) is masked as text: its values are text's on the wire.
        described = [replace(each, type_oid=TEXT) if each.type_oid in catalog.text_types else each for each in fields]
        masker = row_masker(planned, described, formats, self.clearance, self._table_column)
        if len(self._maskers) >= _PLANS_KEPT:
            self._maskers.clear()
        self._maskers[key] = (result, fields, catalog, self.clearance, masker)
        return masker

    def _table_column(self, oid: int, attnum: int) -> SourceColumn | None:
        found = self._catalog().attributes.get((oid, attnum))
        return SourceColumn(*found) if found else None

    def _column_type(self, column: SourceColumn) -> int | None:
        return self._catalog().column_types.get((column.relation, column.column)) or None

    def _start_execute(self, head: _Unit) -> None:
        portal = self._portal_of(head)
        if portal is None:
            self._masker = _NullEverything()  # rows of a portal pgguard never saw bound
            return
        result = self._planned(portal.prepared)
        fields = portal.fields or portal.prepared.fields
        if fields is not None:
            self._masker = self._bind_masker(result, fields, portal.formats)
        elif result.hide_all or (result.columns is None and result.hides_anything):
            self._masker = _NullEverything()
        else:
            # No RowDescription seen: types unknown, so hidden columns become
            # NULL, which every type admits, as does any value a detector
            # finds something in.
            self._masker = _Describeless(result.columns, portal.formats, result.scrubber(self.clearance))

    def _result_done(self, completed: bool) -> None:
        self._masker = None
        self._copy = None
        self._ran_in_cycle = True
        head = self._head()
        if head is None:
            return
        if head.kind == "query":
            if head.steps:
                step = head.steps.pop(0)
                if completed and step.defines is not None:
                    self._define(step.defines)
        elif head.kind == "execute":
            portal = self._portal_of(head)
            self._units.popleft()
            self._executing = None
            if completed and portal is not None and portal.prepared.defines is not None:
                self._define(portal.prepared.defines)

    def _define(self, defines: _Define) -> None:
        """A PREPARE or DECLARE completed: the name now has its plan."""
        prepared = _Prepared(defines.plan, sql=defines.sql, index=defines.index, defined=True,
                             under=defines.under)
        if defines.namespace == "S":
            self._statements[defines.name] = prepared
        else:
            self._portals[defines.name] = _Portal(prepared, [], holdable=defines.holdable)

    def _copy_out(self, response: backend.CopyOutResponse) -> None:
        current = self._current()
        encoding = None if self._ran_in_cycle else self._client_encoding
        self._copy = copy_masker(current if current is not None else HIDE_ALL, response, self.clearance, encoding)

    def _parameter_status(self, status: backend.ParameterStatus) -> None:
        if status.name == "client_encoding":
            self._client_encoding = status.value
        elif status.name == "server_encoding":
            self._server_encoding = status.value

    def _confirm(self) -> None:
        """ParseComplete, BindComplete, CloseComplete or NoData: the request at the head succeeded."""
        if not self._units:
            return
        head = self._units.popleft()
        if head.kind == "parse" and head.prepared is not None:
            self._statements[head.name] = head.prepared
        elif head.kind == "bind":
            prepared = self._statements.get(head.statement) or _Prepared(HIDE_ALL)
            self._portals[head.name] = _Portal(prepared, head.formats)
        elif head.kind == "close":
            (self._statements if head.target == "S" else self._portals).pop(head.name, None)
        elif head.kind == "describe":  # NoData
            self._masker = None

    def _error(self) -> None:
        """The current request failed; in the extended protocol the server skips to Sync."""
        self._masker = None
        self._copy = None
        self._executing = None
        while self._units and self._units[0].kind not in ("query", "sync", "call"):
            self._units.popleft()
        if self._units and self._units[0].kind == "query":
            self._units[0].steps.clear()

    def _ready(self, status: bytes) -> None:
        self._ran_in_cycle = False
        while self._units:
            unit = self._units.popleft()
            if unit.kind in ("query", "sync", "call"):
                break
        if status == b"I":
            # Out of any transaction: its portals are gone, but cursors WITH HOLD.
            self._portals = {name: portal for name, portal in self._portals.items() if portal.holdable}

    def _scrub_notice(self, kind: type[backend.ErrorResponse] | type[backend.NoticeResponse],
                      message: bytes, reads_hidden: bool) -> bytes:
        scrubber = self.clearance.scrubber
        if scrubber is None and not reads_hidden:
            return message
        notice = kind.decode(message[5:])
        fields = dict(notice.fields)
        if reads_hidden:
            # Raised by code in a procedural language (PL/pgSQL's RAISE): text the function wrote, anywhere in it.
            written = fields.get("R") == "exec_stmt_raise" or "PL/" in fields.get("W", "")
            for code in _VALUE_FIELDS:
                fields.pop(code, None)
            for code in _TEXT_FIELDS:
                if code in fields:
                    fields[code] = "[redacted]" if written else _redacted(fields[code])
            if not written and fields.get("M") != notice.fields.get("M"):
                fields["H"] = "\n".join(filter(None, (fields.get("H"), _REDACTED_HINT)))
        if scrubber is not None:
            fields = {code: scrubber.scrub(text) for code, text in fields.items()}
        return message if fields == notice.fields else kind(fields).encode()

    def _scrub_notification(self, message: bytes) -> bytes:
        scrubber = self.clearance.scrubber
        if scrubber is None:
            return message
        note = backend.NotificationResponse.decode(message[5:])
        payload = scrubber.scrub(note.payload)
        return message if payload is note.payload else \
            backend.NotificationResponse(note.process_id, note.channel, payload).encode()


def _redacted(text: str) -> str:
    """An error's or notice's text without the values PostgreSQL may have printed in it."""
    text = _QUOTED.sub('"[redacted]"', text)
    head, colon, rest = text.partition(": ")
    if colon and rest != '"[redacted]"':
        text = head + colon + ('"[redacted]"' if rest.startswith('"') else "[redacted]")
    return EVERY_DETECTOR.scrub(_DIGIT.sub("*", text))


def _null(value: bytes) -> None:
    return None


class _Describeless(RowMasker):
    """Rows of an Execute whose types no Describe gave: masks built from the first row's width."""

    def __init__(self, planned: tuple[MaskSpec | None, ...] | None, formats: list[int],
                 scrubber: Scrubber | None) -> None:
        super().__init__([])
        self.planned = planned
        self.formats = formats
        self.scrubber = scrubber
        self.width: int | None = None
        self.idle = False

    def mask(self, message: bytes) -> bytes:
        count = int.from_bytes(message[5:7], "big")
        if count != self.width:
            self.width = count
            planned, formats = self.planned, self.formats
            misaligned = planned is not None and len(planned) != count
            masks: list[ValueMask | None] = []
            for index in range(count):
                fmt = formats[0] if len(formats) == 1 else formats[index] if index < len(formats) else 0
                if misaligned or (planned is not None and planned[index] is not None):
                    masks.append(_null)
                elif self.scrubber is not None:
                    masks.append(detector_mask(self.scrubber, None, fmt))
                else:
                    masks.append(None)
            self.masks = masks
            self.idle = not any(mask is not None for mask in masks)
        return message if self.idle else super().mask(message)


class _NullEverything(RowMasker):
    """Every column NULL, however many there are."""

    def __init__(self) -> None:
        super().__init__([])

    def mask(self, message: bytes) -> bytes:
        count = int.from_bytes(message[5:7], "big")
        body = message[5:7] + b"\xff\xff\xff\xff" * count
        return b"D" + (len(body) + 4).to_bytes(4, "big") + body


_UNPAIRED = _NullEverything()


def _stricter(old: ResultPlan, new: ResultPlan) -> ResultPlan:
    """A plan that masks every column either plan masks (NULL where they mask it differently)."""
    if old.hide_all or new.hide_all:
        return HIDE_ALL
    if old.columns is None:  # nothing hidden in it
        return new
    if new.columns is None:
        return old
    if len(old.columns) != len(new.columns):
        return HIDE_ALL
    columns = tuple(a if a == b or b is None else b if a is None else NULLIFY for a, b in zip(old.columns, new.columns))
    return ResultPlan(columns, reads_hidden=old.reads_hidden or new.reads_hidden, unresolved=new.unresolved)
