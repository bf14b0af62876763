"""What the gateway does with the messages of an established session, sans I/O.

The reactor feeds bytes in as they arrive from either side and sends out what
comes back; nothing here touches a socket, so every decision can be tested
with plain bytes. Messages are framed on the way through, and a batch that
needs no change is forwarded as the very bytes that arrived.

A statement an approval rule holds (docs/approvals.md) stops the client's
stream at its message: that message and every later one are kept, the client
gets a notice, and the output says `hold`. The I/O layer stops reading the
client (the upstream still flows), waits for the decision and hands it to
`resume()`, which lets the held message go, or its refusal's stand-in, and
carries on with what was kept.

Refusals keep PostgreSQL's own semantics by letting PostgreSQL produce them:
a refused statement is replaced, upstream, by one that fails harmlessly at
parse time (`SELECT 'pgguard-refusal:ID'::pg_catalog.int4`). The server then
does what it always does after an error (fails the transaction block, skips
the rest of an extended-protocol batch up to Sync, commits nothing of it)
and its error, recognised by the ID on the way back, is replaced by
pgguard's own 42501.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from pgguard.admin.metrics import Metrics
from pgguard.approvals.rules import ApprovalRule
from pgguard.approvals.service import ApprovalError, SessionApprovals
from pgguard.approvals.store import Request
from pgguard.audit.recorder import Held, SessionRecorder
from pgguard.masking.results import ResultMasking
from pgguard.masking.session import masking_refusal
from pgguard.policy.classify import PROCEDURAL, Statement
from pgguard.policy.guard import Decision, SessionGuard
from pgguard.policy.names import Named
from pgguard.relay.copy_in import DROP, KEEP, PASS, CopyInTracker
from pgguard.wire import backend, frontend
from pgguard.wire.codec import message
from pgguard.wire.framing import Frame, MessageFramer, ProtocolViolation

log = logging.getLogger("pgguard.session")

_QUERY, _PARSE, _BIND, _FUNCTION_CALL, _SYNC, _CLOSE, _TERMINATE = (ord(c) for c in "QPBFSCX")
_DESCRIBE, _EXECUTE = ord("D"), ord("E")
_READY, _ERROR, _PARAMETER_STATUS = ord("Z"), ord("E"), ord("S")
# Server messages that tell whether a COPY FROM STDIN runs (copy_in.py).
_COPY_ANSWERS, _COPY_IN_RESPONSE = frozenset(ord(c) for c in "GEZCsI"), ord("G")
_TERMINATE_MESSAGE = frontend.Terminate().encode()
_FLUSH_MESSAGE = frontend.Flush().encode()
_SYNC_MESSAGE = frontend.Sync().encode()
# Extended-protocol messages that open a batch, which only a Sync closes.
_BATCH = frozenset(ord(c) for c in "PBDEC")
_MARKER = "pgguard-refusal:"
# Prepared statements whose texts for the log are kept between Binds; all are dropped when there are more.
_BOUND_TEXTS_KEPT = 1000


class Output(NamedTuple):
    """Bytes to send each way, and why the session ends after them (None: it goes on).

    `hold`: a statement waits for approval; read nothing more from the client
    until `resume()` is given the request's outcome.
    """

    to_upstream: bytes = b""
    to_client: bytes = b""
    close: str | None = None
    hold: Request | None = None


_NOTHING = Output()


# PostgreSQL's client_encoding names, as Python's codecs know them.
_CODECS = {"UTF8": "utf-8", "SQL_ASCII": "ascii", "LATIN1": "latin-1", "LATIN9": "iso8859-15",
           "WIN1252": "cp1252", "WIN1251": "cp1251", "EUC_JP": "euc_jp", "SJIS": "shift_jis",
           "GBK": "gbk", "BIG5": "big5", "EUC_KR": "euc_kr", "KOI8R": "koi8-r"}


def python_codec(client_encoding: str) -> str:
    """The codec for a client_encoding; one pgguard does not know decodes nothing (fail closed)."""
    return _CODECS.get(client_encoding.upper(), f"unknown {client_encoding}")


def _fatal(message: str, sqlstate: str = "08P01") -> bytes:
    return backend.ErrorResponse.build("FATAL", sqlstate, f"pgguard: {message}").encode()


def _unguardable(problem: str) -> Output:
    """The end of a session pgguard could no longer guard (a setting it cannot follow, a COPY it did not see
    coming): a FATAL 42501 that says why."""
    return Output(to_client=_fatal(problem, "42501"), close=problem)


def _client_violation(problem: str) -> Output:
    """The end of a session whose client broke the protocol: a FATAL 08P01, and nothing forwarded."""
    return Output(to_client=_fatal(f"protocol violation: {problem}"), close=f"client protocol violation: {problem}")


def server_setting_problem(name: str, value: str, guarded: bool, read_only: bool) -> str | None:
    """Why a session cannot go on under this server setting, if it cannot.

    The guard reads SQL as PostgreSQL does with standard_conforming_strings
    on (with it off, a backslash in a string hides the rest of a statement
    from the parser); and a read-only login's sessions must stay read-only,
    whatever code in the database did.
    """
    if guarded and name == "standard_conforming_strings" and value.lower() != "on":
        return "the target turned standard_conforming_strings off, which pgguard cannot analyse safely"
    if read_only and name == "default_transaction_read_only" and value.lower() != "on":
        return "the session of a read-only login became writable upstream"
    return None


def _failing_parse(stand_in: str, kind: str = "refused") -> bytes:
    """A Parse of `stand_in`, in place of a message of an extended-protocol batch.

    It fails at once, so the server skips the rest of the batch up to Sync as
    after any error; a name of its own leaves the client's unnamed statement alone.
    """
    return frontend.Parse(f"pgguard_{kind}_{secrets.token_hex(8)}", stand_in, []).encode()


def _copies_in(statement: Statement | None) -> bool:
    """A COPY FROM: the server may read the client's next messages as its data."""
    return statement is not None and any("copy" in kinds for kinds in statement.writes.values())


def _held_of(candidates: tuple[Named, ...]) -> Held:
    """The statements (text, classes) a name may hold, as the guard follows them (its `candidates`), for
    the session log: a Parse's text, or the PREPARE or DECLARE that made it. Empty if it may hold one the
    guard cannot tell."""
    held = []
    for each in candidates:
        text = each.text
        if text is None:
            return ()
        held.append((text, tuple(sorted(each.statement.classes)) if each.statement is not None else ()))
    return tuple(dict.fromkeys(held))


def _parse_fields(data: bytes) -> tuple[str, bytes]:
    """A Parse message's statement name, and its query as sent (in the session's client_encoding)."""
    body = data[5:]
    start = body.index(b"\0") + 1
    return body[:start - 1].decode("utf-8", "surrogateescape"), body[start:body.index(b"\0", start)]


# A Bind's portal, statement, parameter formats, parameters and result formats (`frontend.Bind.read`).
_BindFields = tuple[str, str, list[int], list[bytes | None], list[int]]


@dataclass
class _Ask:
    """What the guard found needs approval in the frame being handled."""

    rule: ApprovalRule
    sql: str
    parameters: tuple[str | None, ...] | None  # an Execute's, from its Bind; None for a Query


@dataclass
class _Held:
    request: Request
    seq: int | None  # the held statement's record
    # The held message first, then every later one the client sent.
    frames: list[Frame]
    # The configuration generation it was decided under: a reload meanwhile may refuse it now.
    generation: int


# Binary parameters approvers see as values: integers (int2, int4, int8, oid) and booleans.
_BINARY_INTEGERS = {21: 2, 23: 4, 20: 8, 26: 4}
_BOOL, _TEXT_TYPES = 16, (25, 1043, 1042, 19)


def _shown(value: bytes | None, fmt: int, type_oid: int, encoding: str) -> str | None:
    """A parameter as approvers see it: text where it decodes, a few binary types as values, else hex."""
    if value is None:
        return None
    if fmt == 1 and len(value) == _BINARY_INTEGERS.get(type_oid, -1):
        return str(int.from_bytes(value, "big", signed=type_oid != 26))
    if fmt == 1 and type_oid == _BOOL and len(value) == 1:
        return "true" if value[0] else "false"
    if fmt == 0 or type_oid in _TEXT_TYPES:
        try:
            return value.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            pass
    return "\\x" + value.hex()


@dataclass
class _Refusal:
    sqlstate: str
    message: str
    hint: str | None
    # The ReadyForQuery count after which the refusal's cycle is over.
    cycle: int


class SessionProtocol:
    def __init__(self, client_framer: MessageFramer, upstream_framer: MessageFramer,
                 guard: SessionGuard | None = None, encoding: str = "utf-8", *, read_only: bool = False,
                 masking: ResultMasking | None = None, recorder: SessionRecorder | None = None,
                 metrics: Metrics | None = None, approvals: SessionApprovals | None = None) -> None:
        self._client = client_framer
        self._upstream = upstream_framer
        self.guard = guard
        self.masking = masking
        self.recorder = recorder
        self.bytes_in = 0
        self.bytes_out = 0
        # The gateway's counters (admin/metrics.py), and when the request being answered was sent.
        self.metrics = metrics if metrics is not None else Metrics()
        self._busy_since = 0.0
        # The server's last message when it was an ErrorResponse: if it then closes, that FATAL told the client why.
        self._last_error: Frame | None = None
        # Set by end_when_idle(): the FATAL to send, and why, once no request is running.
        self._drain: tuple[bytes, str] | None = None
        # What the guard made of the frame being handled, for the session log:
        # the statement classes, and the refusal whose stand-in replaces it.
        self._classes: tuple[str, ...] = ()
        self._refused: Decision | None = None
        self._prefix_runs = False
        self.encoding = encoding
        # The session's login is marked read-only: it must stay so upstream.
        self.read_only = read_only
        self._refusals: dict[str, _Refusal] = {}
        # Messages sent upstream that end in ReadyForQuery, and those seen back.
        self._cycles_sent = 0
        self._cycles_done = 0
        # Until this many cycles are done, a statement sent may be changing
        # client_encoding, so pgguard cannot know how the server will read
        # text that is not ASCII. And the prepared statements (by name, ""
        # for the unnamed one) that change it when a Bind runs them.
        self._encoding_settles = 0
        self._encoding_statements: set[str] = set()
        # The last Bind read, with its frame: masking and the log both read it.
        self._last_bind: tuple[Frame | None, _BindFields | None] = (None, None)
        # For the log, by prepared statement: what the guard followed under the name when last bound
        # (the very tuple, unchanged while nothing changes the name), and the texts it may hold.
        self._bound_texts: dict[str, tuple[tuple[Named, ...], Held]] = {}
        self.approvals = approvals
        # Prepared statements (by name) and portals that need approval to run, with their SQL and
        # a portal's parameters; what the frame being handled needs; the statement being held.
        self._held_statements: dict[str, tuple[tuple[ApprovalRule, ...], str, list[int]]] = {}
        self._held_portals: dict[str, tuple[tuple[ApprovalRule, ...], str, tuple[str | None, ...]]] = {}
        self._ask: _Ask | None = None
        # The unnamed portal's hold that a Bind needing none replaced, and the batch (Syncs sent before
        # it) of that Bind: until the Bind is answered without an error, the held portal may be there
        # still (a failed Bind leaves it, and a rollback to a savepoint lets it run).
        self._unbound: tuple[tuple[tuple[ApprovalRule, ...], str, tuple[str | None, ...]], int] | None = None
        self._held: _Held | None = None
        # Grants made by approvals of this session's requests: request id -> its statement record.
        self._grants: dict[str, int] = {}
        # Which client messages the server will act on, around COPY FROM STDIN and batches.
        self._copy_in = CopyInTracker()
        # Extended-protocol messages sent since the last Sync; and for each Sync pgguard sent before a
        # Query or FunctionCall among them, how many ReadyForQuery come before its own, which the
        # client never sees.
        self._batch_open = False
        self._syncs_sent: list[int] = []

    # -- from the client -----------------------------------------------------

    def client_bytes(self, data: bytes) -> Output:
        self.bytes_in += len(data)
        try:
            raw, frames = self._client.feed(data)
            if not frames:
                return _NOTHING
            if self._held is not None:
                self._held.frames.extend(frames)  # read before the hold took effect: kept with it
                return _NOTHING
            return self._frames(frames, raw)
        except ProtocolViolation as exc:
            # A message framed right whose body is not what its type says (a Bind cut short, a
            # Describe of neither S nor P): PostgreSQL ends the session too, and nothing of this
            # read goes upstream.
            return _client_violation(str(exc))

    def _frames(self, frames: list[Frame], raw: bytes | None) -> Output:
        """What goes upstream for `frames` (`raw`: their bytes, if they came in together)."""
        parts: list[bytes] | None = None
        copy_in = self._copy_in
        for index, frame in enumerate(frames):
            tag = frame.tag
            replacement: bytes | None = None
            if copy_in.copy is not None:
                verdict = copy_in.client(frame)
                if verdict is not PASS:
                    if parts is None:
                        parts = [f.data for f in frames[:index]]
                    if verdict is DROP:
                        continue  # the server ignores it: neither forwarded nor counted
                    problem = copy_in.keep(frames[index:]) if verdict is KEEP else verdict
                    if problem is None:
                        return Output(b"".join(parts))
                    return _client_violation(problem)
            flush = False  # a Flush goes after it (an Execute that may start a COPY FROM STDIN)
            if tag in _BATCH:
                self._batch_open = True
                if tag == _EXECUTE:
                    copy_in.batch_executes += 1
            elif tag == _SYNC:
                self._batch_open = False
                copy_in.batch_executes = 0
            elif (tag == _QUERY or tag == _FUNCTION_CALL) and self._batch_open:
                # The server skips a Query inside a batch after an error in it, which pgguard may not
                # have seen yet: a Sync of its own ends the batch first, so the Query always runs.
                self._batch_open = False
                if parts is None:
                    parts = [f.data for f in frames[:index]]
                parts.append(_SYNC_MESSAGE)
                self._syncs_sent.append(self._cycles_sent)
            if tag == _QUERY or tag == _SYNC or tag == _FUNCTION_CALL:
                if self._cycles_sent == self._cycles_done:
                    self._busy_since = time.monotonic()
                self._cycles_sent += 1
            if tag == _QUERY or tag == _PARSE or tag == _FUNCTION_CALL:
                self.metrics.statements += 1
            if tag == _EXECUTE and copy_in.portals:
                problem = copy_in.execute(frontend.Execute.portal_of(frame.data, 5), self._cycles_sent + 1)
                if problem is not None:
                    return _client_violation(problem)
                flush = copy_in.waiting
            if self.guard is None and (tag == _QUERY or tag == _PARSE or tag == _BIND and copy_in.statements):
                self._copy_by_word(frame)
            if self.guard is not None:
                if tag == _QUERY:
                    replacement = self._guard_query(frame)
                    self.guard.request_sent()
                elif tag == _PARSE:
                    replacement = self._guard_parse(frame)
                elif tag == _BIND:
                    replacement = self._bind(frame)
                elif tag == _EXECUTE:
                    if self.guard.generation:  # after a reload: a portal opened before it is decided again
                        replacement = self._refused_message(
                            self.guard.check_portal(frontend.Execute.decode(frame.body).portal))
                    if replacement is None and (self._held_portals or self._approving):
                        self._guard_execute(frame)
                elif tag == _SYNC:
                    self.guard.request_sent()
                elif tag == _DESCRIBE:
                    if self.guard.replanning and frame.body[:1] == b"S":  # as its Bind would be
                        replacement = self._check_again(frame.body[1:-1].decode("utf-8", "surrogateescape"))
                elif tag == _FUNCTION_CALL:
                    replacement = self._guard_function_call()
                    self.guard.request_sent()
                elif tag == _CLOSE:
                    self._forget(frame)
            if self.masking is not None:
                replacement = self._track(frame, replacement)
            if self._ask is not None:
                # Named only when nothing refuses it first (masking may have).
                if replacement is not None:
                    self._ask = None
                else:
                    replacement, notice = self._hold(frame, frames[index:])
                    if self._held is not None:
                        kept = parts if parts is not None else [f.data for f in frames[:index]]
                        return Output(b"".join(kept), notice, hold=self._held.request)
            if self.recorder is not None:
                replacement = self._record(frame, replacement)
            if tag == _BIND:
                self._last_bind = (None, None)  # a large Bind is not kept past its turn
            if tag == _TERMINATE:
                # Anything after Terminate is not the protocol; drop it.
                kept = parts if parts is not None else [f.data for f in frames[:index]]
                return Output(to_upstream=b"".join(kept) + frame.data, close="client terminated")
            if replacement is not None and parts is None:
                parts = [f.data for f in frames[:index]]
            if flush and parts is None:
                parts = [f.data for f in frames[:index]]
            if parts is not None:
                parts.append(replacement if replacement is not None else frame.data)
                if flush:
                    parts.append(_FLUSH_MESSAGE)
        if parts is not None:
            return Output(b"".join(parts))
        return Output(raw if raw is not None else b"".join(f.data for f in frames))

    # -- holding a statement for approval -------------------------------------------

    def _hold(self, frame: Frame, frames: list[Frame]) -> tuple[bytes | None, bytes]:
        """Open the request for what `_ask` says needs approval, and keep `frames`.

        Returns the frame's replacement when it is refused instead (no request
        could be opened, or its record could not be written), and the notice.
        """
        ask, self._ask = self._ask, None
        assert ask is not None
        simple = frame.tag == _QUERY
        if self.approvals is None:
            return self._refused_frame(frame, Decision(False, None, ask.rule.label, "the statement needs approval,"
                                                       " and approvals are not served here")), b""
        try:
            request = self.approvals.open("simple" if simple else "extended", ask.sql, ask.parameters or (), ask.rule)
        except ApprovalError as exc:
            decision = Decision(False, None, ask.rule.label, f"the statement needs approval, but {exc.message}")
            return self._refused_frame(frame, decision), b""
        seq = None
        if self.recorder is not None:
            reason = f"needs approval ({ask.rule}); request {request.id}"
            seq = (self.recorder.hold_query(self._log_text(frame.data[5:-1]), self._classes, ask.rule.label, reason)
                   if simple else self.recorder.hold_execute(frontend.Execute.decode(frame.body).portal,
                                                             ask.sql, ask.rule.label, reason))
            self._classes = ()
            if seq is None:
                self.approvals.withdraw(request.id, "its session-log record could not be written")
                return self._refused_frame(frame, None), b""
            self.recorder.approval(seq, request.id, "requested")
        assert self.guard is not None
        self._held = _Held(request, seq, frames, self.guard.generation)
        notice = backend.NoticeResponse.build("NOTICE", "01000", self.approvals.notice(request))
        return None, notice.encode()

    def _refused_frame(self, frame: Frame, decision: Decision | None) -> bytes:
        """The stand-in for a Query or Execute refused at the hold (None: its record could not be written)."""
        before_sync = frame.tag != _QUERY
        if decision is not None:
            return self._stand_in_frame(frame, self._refuse(decision, before_sync))
        text = self._unrecorded(before_sync)
        self._refused = Decision(False, None, "", "its session-log record could not be written")
        return self._stand_in_frame(frame, text)

    @staticmethod
    def _stand_in_frame(frame: Frame, stand_in: str) -> bytes:
        if frame.tag == _QUERY:
            return frontend.Query(stand_in).encode()
        return _failing_parse(stand_in)

    def resume(self, request: Request) -> Output:
        """The held statement's outcome: it goes, or fails as denied, timed out or cancelled."""
        held, self._held = self._held, None
        assert held is not None
        frame, rest = held.frames[0], held.frames[1:]
        simple = frame.tag == _QUERY
        recorder = self.recorder
        replacement: bytes | None = None
        if request.status == "approved" and self.guard is not None and self.guard.generation != held.generation:
            # Decided under a configuration since reloaded: not run, rather than run unchecked.
            replacement = self._refused_frame(frame, Decision(
                False, None, "", f"the configuration was reloaded while the statement waited for approval "
                f"(request {request.id})", "run it again, to have it decided under the new configuration"))
        elif request.status == "approved":
            if recorder is not None and held.seq is not None:
                if not recorder.approval(held.seq, request.id, "approved", request.decided_by):
                    replacement = self._refused_frame(frame, None)
                elif request.grant_seconds is not None and request.decided_at is not None:
                    self._grants[request.id] = held.seq
                    recorder.approval(held.seq, request.id, "granted", request.decided_by, request.rule,
                                      until=request.decided_at + request.grant_seconds)
        else:
            if recorder is not None and held.seq is not None:
                event = "cancelled" if request.status == "pending" else request.status
                recorder.approval(held.seq, request.id, event, request.decided_by, request.reason)
            replacement = self._outcome_stand_in(frame, request)
        # Recorded with the held statement's record, not as a refusal of its own.
        self._refused = None
        if recorder is not None and held.seq is not None:
            recorder.release(held.seq, simple, runs=replacement is None)
        # Result masking tracked the statement before it was held: a stand-in's error ends its results.
        first = replacement if replacement is not None else frame.data
        if replacement is None and frame.tag == _EXECUTE and self._copy_in.waiting:
            first += _FLUSH_MESSAGE  # as _frames would have sent it (copy_in.py)
        after = self._frames(rest, None) if rest else _NOTHING
        return Output(first + after.to_upstream, after.to_client, after.close, after.hold)

    def _outcome_stand_in(self, frame: Frame, request: Request) -> bytes:
        if request.status == "denied":
            text = f"pgguard: statement denied by {request.decided_by}" + \
                (f": {request.reason}" if request.reason else "") + f" (request {request.id}, rule {request.rule})"
            sqlstate, hint = "42501", None
        elif request.status == "timed_out":
            text = f"pgguard: approval request {request.id} timed out: {request.reason} (rule {request.rule})"
            sqlstate, hint = "42501", "ask an approver to watch for requests, then run the statement again"
        else:
            text = f"pgguard: canceling statement: approval request {request.id} withdrawn ({request.reason})"
            sqlstate, hint = "57014", None
        return self._stand_in_frame(frame, self._stand_in(sqlstate, text, hint, frame.tag != _QUERY))

    def abandon(self, request: Request) -> None:
        """The session ends while its statement is held: nothing is sent, the request's end is recorded."""
        held, self._held = self._held, None
        if held is not None and held.seq is not None and self.recorder is not None:
            self.recorder.approval(held.seq, request.id, "cancelled", None, request.reason)

    def grant_expired(self, request: Request) -> None:
        """The grant that came with `request`'s approval is over."""
        seq = self._grants.pop(request.id, None)
        if seq is not None and self.recorder is not None:
            self.recorder.approval(seq, request.id, "expired", request.decided_by)

    @property
    def holding(self) -> Request | None:
        """The request the session waits for, if it waits."""
        return self._held.request if self._held is not None else None

    @property
    def idle(self) -> bool:
        """No request is waiting for its ReadyForQuery, nor held for approval."""
        return self._held is None and self._cycles_sent == self._cycles_done and not self._copy_in.kept

    @property
    def draining(self) -> bool:
        return self._drain is not None

    def end_when_idle(self, error: bytes, reason: str) -> None:
        """End the session right after the ReadyForQuery that answers its last request (a shutdown)."""
        self._drain = (error, reason)

    def client_closed(self) -> Output:
        # Let the backend end cleanly rather than log an unexpected EOF.
        return Output(to_upstream=_TERMINATE_MESSAGE, close="client disconnected")

    def _text(self, data: bytes) -> str | None:
        try:
            return data.decode(self.encoding)
        except (UnicodeDecodeError, LookupError):
            return None

    def _refuse(self, decision: Decision, before_sync: bool = False) -> str:
        """Register a refusal; returns the statement that stands in for it upstream.

        A Parse is answered within the cycle that its Sync, still to come, ends.
        """
        self._refused = decision
        return self._stand_in("42501", decision.message, decision.hint, before_sync)

    def _stand_in(self, sqlstate: str, text: str, hint: str | None, before_sync: bool) -> str:
        self.metrics.statements_refused += 1
        token = secrets.token_hex(8)
        self._refusals[token] = _Refusal(sqlstate, text, hint, self._cycles_sent + before_sync)
        return f"SELECT '{_MARKER}{token}'::pg_catalog.int4"

    def _encoding_unsure(self, text: bytes) -> bool:
        """True when `text` is not ASCII and client_encoding may be changing under it."""
        return self._cycles_done < self._encoding_settles and not text.isascii()

    def _changes_encoding(self, statement: Statement | None) -> bool:
        assert self.guard is not None
        if statement is None:
            return False
        if statement.executes is not None:
            return any(self._changes_encoding(held) for held in self.guard.prepared_statements(statement.executes)
                       if held.executes is None)
        return PROCEDURAL in statement.classes or any(
            name in ("client_encoding", "all") for name, _ in statement.settings)

    def _guard_query(self, frame: Frame) -> bytes | None:
        assert self.guard is not None
        body = frame.data[5:-1]  # the query string without its NUL
        if self._encoding_unsure(body):
            return self._refused_query(b"", self.guard.encoding_changing())
        sql = self._text(body)
        if sql is None:
            return self._refused_query(b"", self.guard.undecodable(self.encoding))
        decisions = self.guard.check_query(sql)
        if self.recorder is not None:
            self._classes = tuple(sorted({c for d in decisions if d.statement for c in d.statement.classes}))
        if any(self._changes_encoding(d.statement) for d in decisions if d.allowed):
            self._encoding_settles = max(self._encoding_settles, self._cycles_sent)
        if any(_copies_in(d.statement) for d in decisions if d.allowed):
            self._copy_in.query_may_copy(self._cycles_sent)
        refused = decisions[-1] if decisions and not decisions[-1].allowed else None
        held = self._needs_approval([rule for d in decisions if d.allowed for rule in d.approvals])
        if refused is None:
            if held is not None:
                self._ask = _Ask(held, sql, None)
            return None
        # Statements before the refused one still run, as PostgreSQL would
        # have run them before failing on it: the very bytes the client sent.
        # Unless one of them needs approval: then none of them runs.
        location = refused.statement.location if refused.statement is not None else 0
        kept = sql.encode()[:location].decode()
        prefix = kept.encode(self.encoding)
        if not body.startswith(prefix) or held is not None:
            prefix = b""  # the text does not survive a round trip: run none of it
        return self._refused_query(prefix, refused)

    def _needs_approval(self, rules: list[ApprovalRule]) -> ApprovalRule | None:
        """The rule that holds a statement, of those that matched it and no grant covers."""
        if not rules:
            return None
        if self.approvals is None:
            # Nowhere to ask (approvals are not served): such a statement cannot be held, so it is refused.
            return rules[0]
        uncovered = [rule for rule in rules if not self.approvals.covered(rule)]
        return max(uncovered, key=lambda rule: rule.approvers) if uncovered else None

    def _refused_query(self, prefix: bytes, decision: Decision) -> bytes:
        # Built as bytes: the prefix is in the session's client_encoding, not UTF-8.
        self._prefix_runs = bool(prefix)
        stand_in = self._refuse(decision).encode()
        return message(b"Q", prefix + stand_in + b"\0")

    def _guard_parse(self, frame: Frame) -> bytes | None:
        assert self.guard is not None
        parse = frontend.Parse.decode(frame.body)
        # The query as the server will read it: in the session's client_encoding.
        _, body = _parse_fields(frame.data)
        if self._encoding_unsure(body):
            decision = self.guard.encoding_changing()
        else:
            sql = self._text(body)
            decision = (self.guard.undecodable(self.encoding) if sql is None
                        else self.guard.check_parse(parse.name, sql))
        self._encoding_statements.discard(parse.name)
        self._held_statements.pop(parse.name, None)
        if decision.statement is not None:
            self._classes = tuple(sorted(decision.statement.classes))
        if decision.allowed and decision.approvals:
            self._held_statements[parse.name] = (decision.approvals, self._log_text(body), parse.param_types)
        if decision.allowed and _copies_in(decision.statement):
            self._copy_in.statements.add(parse.name)
        else:
            self._copy_in.statements.discard(parse.name)
        if decision.allowed:
            if self._changes_encoding(decision.statement):
                self._encoding_statements.add(parse.name)
                self._encoding_settles = max(self._encoding_settles, self._cycles_sent + 1)
            return None
        return frontend.Parse(parse.name, self._refuse(decision, before_sync=True), []).encode()

    def _bind(self, frame: Frame) -> bytes | None:
        """A Bind of a statement that changes client_encoding (unsure until its Sync is answered), or that
        needs approval. After a reload or a change of search path, a refusal's stand-in if what it binds
        is refused now (`_check_again`)."""
        body = frame.body
        start = body.find(b"\0") + 1  # after the portal name
        name = body[start:body.find(b"\0", start)].decode("utf-8", "surrogateescape")
        if name in self._encoding_statements:
            self._encoding_settles = max(self._encoding_settles, self._cycles_sent + 1)
        assert self.guard is not None
        portal = body[:start - 1].decode("utf-8", "surrogateescape")
        if name in self._copy_in.statements:
            self._copy_in.portals.add(portal)
        else:
            self._copy_in.portals.discard(portal)
        if start > 1 or self.guard.generation:  # a named portal, or any after a reload
            self.guard.bound(portal, name)
        if self.guard.replanning:
            refused = self._check_again(name)
            if refused is not None:
                return refused
        if self._held_statements or self._held_portals or self._approving:
            self._bind_held(body, portal, name, body[start:body.find(b"\0", start)])
        return None

    def _bind_held(self, body: bytes, portal: str, name: str, raw_name: bytes) -> None:
        """A portal of a statement that needs approval: its parameters, as approvers will see them.

        The server reads the name in the client's encoding, as it read a SQL PREPARE's; pgguard keeps
        a Parse's name as UTF-8. Either may be the statement it binds.

        A named portal's entry stays when the new Bind needs no approval: a Bind of a name the server
        holds fails, and the guard's portals tell which may be there (`_guard_execute`)."""
        if not portal:
            replaced = self._held_portals.pop(portal, None)
            if replaced is not None and self._unbound is None:
                self._unbound = (replaced, self._cycles_sent)
        held = self._held_statements.get(name) or self._prepared_held(name)
        in_encoding = self._text(raw_name) if not raw_name.isascii() else None
        if held is None and in_encoding is not None:
            held = self._held_statements.get(in_encoding) or self._prepared_held(in_encoding)
        if held is not None:
            bind = frontend.Bind.decode(body)
            types = held[2]
            shown = tuple(_shown(value, bind.param_format(index),
                                 types[index] if index < len(types) else 0, self.encoding)
                          for index, value in enumerate(bind.params))
            self._held_portals[portal] = (held[0], held[1], shown)
            if not portal:
                self._unbound = None

    def _prepared_held(self, name: str) -> tuple[tuple[ApprovalRule, ...], str, list[int]] | None:
        """The rules that hold what prepared statement `name` may hold, as the guard follows it: what a
        SQL PREPARE made (a Bind runs it too), or a Parse's statement that a later Parse of the name,
        which failed, did not replace. Each is decided under the current configuration."""
        assert self.guard is not None
        rules, sql = self._approvals_of(self.guard.prepared.candidates(name))
        return (rules, sql, []) if rules else None

    def _approvals_of(self, held: Iterable[Named]) -> tuple[tuple[ApprovalRule, ...], str]:
        """The approval rules that hold any of `held` (each decided under the current configuration),
        and the text of the first they hold."""
        guard = self.guard
        assert guard is not None
        rules: tuple[ApprovalRule, ...] = ()
        sql = ""
        for each in held:
            if each.statement is not None:
                found = guard.decide(each.statement).approvals
                if found:
                    rules += found
                    sql = sql or each.text or ""
        return rules, sql

    @property
    def _approving(self) -> bool:
        """The session's roles have approval rules."""
        return self.guard is not None and bool(self.guard.approval_rules)

    def _guard_execute(self, frame: Frame) -> None:
        """An Execute of a portal whose statement needs approval is held, unless a grant covers it.

        A named portal holds what the guard says it may hold: a later Bind of its name that failed
        (say, in a savepoint since rolled back to) left the earlier statement there."""
        portal = frontend.Execute.decode(frame.body).portal
        held = self._held_portals.get(portal)
        if not portal and held is None and self._unbound is not None and self._unbound[1] != self._cycles_sent:
            held = self._unbound[0]  # a later batch than the Bind that replaced it, which may have failed
        if portal and self.guard is not None:
            candidates = self.guard.portals.candidates(portal)
            # A DECLARE was decided when it ran; a FETCH from its cursor is decided as the FETCH.
            rules, sql = self._approvals_of(each for each in candidates
                                            if each.statement is None or each.statement.declares is None)
            if held is None and rules:
                held = (rules, sql, ())
            if held is not None and (rules or not all(c.known for c in candidates)):  # not known: as its Bind said
                held = (rules or held[0], held[1], held[2])
            else:
                held = None
        rule = self._needs_approval(list(held[0])) if held is not None else None
        if held is not None and rule is not None:
            self._ask = _Ask(rule, held[1], held[2])

    def _check_again(self, name: str) -> bytes | None:
        """A prepared statement decided before a reload or a change of search path is decided, and its
        masking planned, again.

        What is refused now is replaced by a stand-in that fails at Parse
        (under a name of its own), so the server skips the rest of the batch
        up to Sync as after any error.
        """
        guard = self.guard
        assert guard is not None
        decision = guard.check_again(name)
        if decision is None and self.masking is not None:
            for held in guard.prepared.candidates(name):
                if guard.stale(held) and held.sql is not None:
                    try:
                        self.masking.steps(held.sql)
                    except Exception as exc:
                        decision = masking_refusal(exc)
                        break
        if decision is None:
            guard.renew(name)
            return None
        self._classes = tuple(sorted(decision.statement.classes)) if decision.statement is not None else ()
        return self._refused_message(decision)

    def _refused_message(self, decision: Decision | None) -> bytes | None:
        """The stand-in for a Bind, Describe or Execute refused: a Parse that fails, under a name of its own."""
        if decision is None:
            return None
        return _failing_parse(self._refuse(decision, before_sync=True))

    def _bind_of(self, frame: Frame) -> _BindFields:
        """The fields of the Bind in `frame`, read once however many parts of the session read them."""
        read, bind = self._last_bind
        if read is not frame or bind is None:
            bind = frontend.Bind.read(frame.data, 5)
            self._last_bind = (frame, bind)
        return bind

    def _guard_function_call(self) -> bytes | None:
        assert self.guard is not None
        # The FunctionCall message names a function by OID only; pgguard
        # allows it to roles that may run anything. Its result has no lineage
        # to mask (query_to_xml runs any query), so only where nothing is masked.
        if self.guard.unrestricted and self.masking is None:
            return None
        decision = self.guard.refuse_function_call() if not self.guard.unrestricted else Decision(
            False, None, "masking", "the FunctionCall message's result cannot be masked, and this session may not"
            " see every column unmasked", "call the function from a SELECT instead")
        return frontend.Query(self._refuse(decision)).encode()

    def _track(self, frame: Frame, replacement: bytes | None) -> bytes | None:
        """Tell result masking what goes upstream; a refusal if a result could not be masked."""
        masking = self.masking
        assert masking is not None
        tag = frame.tag
        try:
            # Tracked as forwarded: with a refusal's stand-in, and whatever of a
            # refused query still runs before it.
            sent = replacement if replacement is not None else frame.data
            if tag == _QUERY:
                masking.query(self._text(sent[5:-1]) or "")
            elif tag == _PARSE:
                name, query = _parse_fields(sent)
                masking.parse(name, self._text(query) or "")
            elif tag == _BIND:
                portal, statement, _, _, result_formats = self._bind_of(frame)
                masking.bind(portal, statement, result_formats)
            elif tag == _DESCRIBE or tag == _CLOSE:
                target = frontend.Describe.decode(frame.body)
                (masking.describe if tag == _DESCRIBE else masking.close)(target.kind, target.name)
            elif tag == _EXECUTE:
                masking.execute(frontend.Execute.portal_of(frame.data, 5))
            elif tag == _SYNC:
                masking.sync()
            elif tag == _FUNCTION_CALL:
                masking.function_call()
        except ProtocolViolation:
            raise  # a malformed message, which ends the session (client_bytes)
        except Exception as exc:
            # What cannot be masked is refused, never forwarded (fail closed).
            decision = masking_refusal(exc)
            if tag == _PARSE:
                name = frontend.Parse.decode(frame.body).name
                masking.parse(name, "")
                return frontend.Parse(name, self._refuse(decision, before_sync=True), []).encode()
            masking.query("")
            return self._refused_query(b"", decision)
        return replacement

    def _record(self, frame: Frame, replacement: bytes | None) -> bytes | None:
        """Record what goes upstream; a refusal instead of what cannot be recorded (fail closed)."""
        recorder = self.recorder
        assert recorder is not None
        tag = frame.tag
        refused, classes, prefix_runs = self._refused, self._classes, self._prefix_runs
        self._refused, self._classes, self._prefix_runs = None, (), False
        if tag == _QUERY:
            sql = self._log_text(frame.data[5:-1])
            if not recorder.query(sql, classes, refused, runs=refused is None or prefix_runs):
                return frontend.Query(self._unrecorded(before_sync=False)).encode()
        elif tag == _PARSE:
            name, query = _parse_fields(frame.data)
            recorder.parse(name, self._log_text(query), classes, refused)
        elif refused is not None and (tag == _BIND or tag == _DESCRIBE or tag == _EXECUTE):
            # Decided again after a reload, and refused.
            recorder.refused(refused.statement.text if refused.statement is not None else "", classes, refused)
        elif tag == _BIND:
            portal, statement, formats, values, _ = self._bind_of(frame)
            recorder.bind(portal, statement, formats, values, self.encoding,
                          None if self.guard is None else self._prepared_texts(statement))
        elif tag == _EXECUTE:
            portal = frontend.Execute.portal_of(frame.data, 5)
            untold = None if refused is not None else recorder.untold(portal)
            cursor = None if untold is None or self.guard is None else _held_of(self.guard.portals.candidates(portal))
            if untold is not None and not cursor:  # it would run with a record that cannot say what it runs
                refused = Decision(False, None, "", untold, "Parse the statement again")
                replacement = _failing_parse(self._stand_in("42501", refused.message, refused.hint, True))
            if not recorder.execute(portal, refused, cursor):
                return _failing_parse(self._unrecorded(before_sync=True), "unrecorded")
        elif tag == _SYNC:
            recorder.sync()
        elif tag == _FUNCTION_CALL:
            call = frontend.FunctionCall.decode(frame.body)
            if not recorder.function_call(call.function_oid, call.arg_formats, call.args, self.encoding, refused):
                return frontend.Query(self._unrecorded(before_sync=False)).encode()
        elif tag == _CLOSE:
            close = frontend.Close.decode(frame.body)
            recorder.forget(close.kind, close.name)
        return replacement

    def _prepared_texts(self, name: str) -> Held:
        """_held_of the prepared statement `name`, made again only when what the guard follows under it
        changed: a Bind comes with nearly every statement of the extended protocol."""
        assert self.guard is not None
        candidates = self.guard.prepared.candidates(name)
        kept = self._bound_texts.get(name)
        if kept is not None and kept[0] is candidates:
            return kept[1]
        texts = _held_of(candidates)
        if len(self._bound_texts) >= _BOUND_TEXTS_KEPT:
            self._bound_texts.clear()
        self._bound_texts[name] = (candidates, texts)
        return texts

    def _log_text(self, data: bytes) -> str:
        """Text as the session log keeps it: what cannot be decoded is replaced, never dropped."""
        try:
            return data.decode(self.encoding)
        except (UnicodeDecodeError, LookupError):  # as `_text` does, in one call: once per statement
            return data.decode("utf-8", "replace")

    def _unrecorded(self, before_sync: bool) -> str:
        """The stand-in for a statement whose session-log record could not be written."""
        assert self.recorder is not None
        return self._stand_in(self.recorder.refusal_sqlstate,
                              f"pgguard: statement not run: {self.recorder.sink.refusal}",
                              "the gateway's log says why the session log cannot be written", before_sync)

    def _forget(self, frame: Frame) -> None:
        assert self.guard is not None
        close = frontend.Close.decode(frame.body)
        if close.kind == "S":
            self.guard.forget(close.name)
            self._encoding_statements.discard(close.name)
            self._held_statements.pop(close.name, None)
        else:
            self._held_portals.pop(close.name, None)

    # -- from the upstream ----------------------------------------------------

    def upstream_bytes(self, data: bytes) -> Output:
        try:
            raw: bytes | None
            raw, frames = self._upstream.feed(data)
            return self._server_frames(raw, frames) if frames else _NOTHING
        except ProtocolViolation as exc:
            # Framed wrong, or a message whose body is not what its type says: the client gets
            # nothing of this read but the FATAL.
            return Output(to_client=_fatal("the target database sent an invalid message"),
                          close=f"target protocol violation: {exc}")

    def _server_frames(self, raw: bytes | None, frames: list[Frame]) -> Output:
        if self._syncs_sent:
            frames, raw = self._unseen_ready(frames), None
            if not frames:
                return _NOTHING
        self._last_error = frames[-1] if frames[-1].tag == _ERROR else None
        recorder = self.recorder
        copy_in = self._copy_in
        if not self._refusals and self.masking is None:
            # Nothing to change: the very bytes go on, and the log reads them as they pass.
            for frame in frames:
                tag = frame.tag
                if tag == _READY:
                    self._ready(frame)
                elif tag == _ERROR:
                    self._error()
                elif tag == _PARAMETER_STATUS:
                    problem = self._parameter(frame)
                    if problem:
                        if recorder is not None:  # what the client received before it
                            recorder.server_frames(frames[:frames.index(frame)])
                        return _unguardable(problem)
                if (tag == _COPY_IN_RESPONSE or copy_in.copy is not None) and tag in _COPY_ANSWERS:
                    problem = copy_in.server(tag, self._cycles_done)
                    if problem:
                        return _unguardable(problem)
            if recorder is not None:
                recorder.server_frames(frames)
            out = self._to_client(raw if raw is not None else b"".join(f.data for f in frames))
            return self._released(out) if self._copy_in.kept else out
        parts = []
        changed = False
        masking = self.masking
        for frame in frames:
            tag = frame.tag
            data = frame.data
            if tag == _ERROR:
                self._error()
                if self._refusals:
                    data = self._rewrite_error(frame)
            elif tag == _READY:
                self._ready(frame)
                if self._refusals:
                    self._expire()
            elif tag == _PARAMETER_STATUS:
                problem = self._parameter(frame)
                if problem:
                    return _unguardable(problem)
            if (tag == _COPY_IN_RESPONSE or copy_in.copy is not None) and tag in _COPY_ANSWERS:
                problem = copy_in.server(tag, self._cycles_done)
                if problem:
                    return _unguardable(problem)
            if masking is not None:
                data = masking.server(tag, data)
            if recorder is not None:
                recorder.server(tag, data)
            changed = changed or data is not frame.data
            parts.append(data)
        out = self._to_client(b"".join(parts) if changed or raw is None else raw)
        return self._released(out) if self._copy_in.kept else out

    def _copy_by_word(self, frame: Frame) -> None:
        """Without a guard, nothing is parsed: a Query, or a Parse's statement, may start a COPY FROM STDIN
        when its text has the word COPY in it (copy_in.py). A Bind of such a statement makes such a portal."""
        copy_in = self._copy_in
        tag = frame.tag
        if tag == _QUERY:
            if b"copy" in frame.data.lower():
                copy_in.query_may_copy(self._cycles_sent)
        elif tag == _PARSE:
            name, query = _parse_fields(frame.data)
            if b"copy" in query.lower():
                copy_in.statements.add(name)
            else:
                copy_in.statements.discard(name)
        else:  # a Bind, once a statement may be a COPY
            portal, statement, *_ = self._bind_of(frame)
            if statement in copy_in.statements:
                copy_in.portals.add(portal)
            else:
                copy_in.portals.discard(portal)

    def _unseen_ready(self, frames: list[Frame]) -> list[Frame]:
        """`frames` without the ReadyForQuery that answers a Sync pgguard sent on its own."""
        done = self._cycles_done
        kept = []
        for frame in frames:
            if frame.tag == _READY:
                if self._syncs_sent and self._syncs_sent[0] == done:
                    self._syncs_sent.pop(0)
                    continue
                done += 1
            kept.append(frame)
        return kept

    def _released(self, output: Output) -> Output:
        """`output`, then what the client sent while a COPY FROM STDIN might have been starting, once
        the server has said whether it did (copy_in.py)."""
        kept = self._copy_in.release()
        if not kept or output.close is not None:
            return output
        after = self._frames(kept, None)
        return Output(output.to_upstream + after.to_upstream, output.to_client + after.to_client,
                      after.close, after.hold)

    def _to_client(self, out: bytes) -> Output:
        """The server's messages for the client; and, when draining, the FATAL right after the last answer."""
        self.bytes_out += len(out)
        if self._drain is None or self._cycles_done != self._cycles_sent:
            return Output(b"", out)
        error, reason = self._drain
        return Output(_TERMINATE_MESSAGE, out + error, close=reason)

    def _error(self) -> None:
        if self.guard is not None:
            self.guard.answered_error()
        if self._unbound is not None:
            # Perhaps the Bind that replaced the held unnamed portal: it counts as there again.
            self._held_portals.setdefault("", self._unbound[0])
            self._unbound = None

    def _ready(self, frame: Frame) -> None:
        if len(frame.data) != 6:
            raise ProtocolViolation(f"ReadyForQuery of {len(frame.data) - 5} bytes")
        if self.guard is not None:
            self.guard.answered_ready(idle=frame.data[5] == 0x49)  # I: out of any transaction
        self._cycles_done += 1
        if self._unbound is not None and self._cycles_done > self._unbound[1]:
            self._unbound = None  # the replacing Bind's batch is answered, without an error
        if self._cycles_done == self._cycles_sent:
            self.metrics.latency.observe(time.monotonic() - self._busy_since)

    def _parameter(self, frame: Frame) -> str | None:
        """Follow a server setting; a reason to end the session if the change defeats pgguard."""
        status = backend.ParameterStatus.decode(frame.body)
        problem = server_setting_problem(status.name, status.value, self.guard is not None, self.read_only)
        if problem:
            return problem
        if status.name == "client_encoding":
            self.encoding = python_codec(status.value)

    def _rewrite_error(self, frame: Frame) -> bytes:
        error = backend.ErrorResponse.decode(frame.body)
        start = error.message.find(_MARKER)
        if start < 0:
            return frame.data
        token = error.message[start + len(_MARKER):start + len(_MARKER) + 16]
        refusal = self._refusals.pop(token, None)
        if refusal is None:
            return frame.data
        return backend.ErrorResponse.build("ERROR", refusal.sqlstate, refusal.message, hint=refusal.hint).encode()

    def _expire(self) -> None:
        """Forget refusals whose cycle ended without their error (e.g. in a failed transaction)."""
        for token, refusal in list(self._refusals.items()):
            if refusal.cycle <= self._cycles_done:
                del self._refusals[token]

    def upstream_closed(self) -> Output:
        if self._last_error is not None:
            # An administrator, a restart or an idle timeout: the log keeps which, as the client was told.
            error = backend.ErrorResponse.decode(self._last_error.body)
            return Output(close=f"target ended the session: {error.severity} {error.code} {error.message}")
        return Output(to_client=_fatal("the target database closed the connection unexpectedly", "08006"),
                      close="target closed the connection unexpectedly")
