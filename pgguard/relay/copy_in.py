"""Which of the client's messages the server will act on around COPY FROM STDIN, sans I/O.

The gateway counts the client's requests to pair each server answer with the request it
answers: result masking, the session log and the policy's view of prepared names all line
up on that count. While a COPY FROM STDIN runs, PostgreSQL reads the client's messages as
copy data: it ignores Sync and Flush (libpq sends a Sync right after the Execute that starts
a copy), and any other message ends the copy with an error. A Sync the gateway counted but
the server ignored had the next statement's rows masked with the plan of the one before.

So what the client sends after a request that may start a copy (a Query with a COPY FROM,
an Execute of a portal bound to one) is kept until the server has said whether it started
(after an Execute, the gateway sends a Flush so that it says so at once): CopyInResponse
(then Sync and Flush are dropped, as the server ignores them, and anything but copy data
ends the session), or the request's answer without one (then what was kept goes on as
usual). A copy the gateway did not see coming ends the session.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgguard.wire.framing import Frame

_SYNC, _FLUSH = ord("S"), ord("H")
_COPY_DATA, _COPY_DONE, _COPY_FAIL = (ord(c) for c in "dcf")
# From the server: CopyInResponse; an Execute's answer; ErrorResponse; ReadyForQuery.
_COPY_IN_RESPONSE, _ERROR, _READY = ord("G"), ord("E"), ord("Z")
_EXECUTE_DONE = frozenset(ord(c) for c in "CsI")  # CommandComplete, PortalSuspended, EmptyQueryResponse
# What a client may send before the server answers whether a copy started.
KEPT_MAX = 1 << 20

PASS, DROP, KEEP = "pass", "drop", "keep"


@dataclass
class _Copy:
    cycle: int  # the ReadyForQuery (by count) that ends the request that may start it
    by_query: bool  # a Query's (it may run several); else an Execute's
    running: bool = False


class CopyInTracker:
    def __init__(self) -> None:
        # The copy that may be starting or runs; the caller asks client() and server() only while there is
        # one (and server() for a CopyInResponse), and counts Execute messages since the last Sync.
        self.copy: _Copy | None = None
        self.kept: list[Frame] = []
        self._kept_bytes = 0
        self.batch_executes = 0
        # Prepared statements and portals (by name) that are a COPY FROM, as last made.
        self.statements: set[str] = set()
        self.portals: set[str] = set()

    def client(self, frame: Frame) -> str:
        """While a copy may be starting or runs: PASS, DROP (the server would ignore it), KEEP (it and what
        follows) or why the session ends."""
        tag = frame.tag
        copy = self.copy
        if copy is None:
            return PASS
        if not copy.running:
            return KEEP
        if tag == _SYNC or tag == _FLUSH:
            return DROP
        if tag == _COPY_DONE or tag == _COPY_FAIL:
            # A Query may start another; an Execute's copy is over, and what follows runs as usual.
            copy.running = False
            if not copy.by_query:
                self.copy = None
        elif tag != _COPY_DATA:
            return "a message other than CopyData, CopyDone or CopyFail during COPY FROM STDIN"
        return PASS

    def keep(self, frames: list[Frame]) -> str | None:
        """Keep `frames` until the server answers; why the session ends if that is too much."""
        self.kept.extend(frames)
        self._kept_bytes += sum(len(frame.data) for frame in frames)
        if self._kept_bytes > KEPT_MAX:
            return "more than 1 MiB sent before the server answered a COPY FROM STDIN"
        return None

    def query_may_copy(self, cycle: int) -> None:
        """A Query with a COPY FROM was sent, in the `cycle`-th request."""
        self.copy = _Copy(cycle, True)

    @property
    def waiting(self) -> bool:
        """A copy may be starting: what the client sends now is kept."""
        return self.copy is not None and not self.copy.running

    def execute(self, portal: str, cycle: int) -> str | None:
        """An Execute was sent, in the batch its Sync will make the `cycle`-th request; why the session
        ends if pgguard cannot tell its answer from an earlier Execute's.

        When it may start a copy, the caller sends a Flush after it: the server sends an Execute's
        answer when it reaches a Flush or Sync, and the client's Sync is kept until that answer."""
        if portal not in self.portals:
            return None
        if self.batch_executes > 1:
            return "an Execute of a COPY FROM STDIN after another Execute in the same batch (send Sync first)"
        self.copy = _Copy(cycle, False)
        return None

    def server(self, tag: int, cycles_done: int) -> str | None:
        """Follow the server's answer (`cycles_done` counts this one if it is a ReadyForQuery)."""
        copy = self.copy
        if tag == _COPY_IN_RESPONSE:
            if copy is None:
                return "the target started a COPY FROM STDIN that pgguard did not see coming"
            copy.running = True
        elif copy is None:
            return None
        elif tag == _READY:
            if cycles_done >= copy.cycle:
                self.copy = None
        elif copy.by_query:
            if tag == _ERROR and copy.running:
                self.copy = None  # the rest of the Query is skipped; its ReadyForQuery comes next
        elif (tag == _ERROR or tag in _EXECUTE_DONE) and cycles_done == copy.cycle - 1:
            self.copy = None  # the Execute was answered, or skipped after an error: no copy runs now
        return None

    def release(self) -> list[Frame]:
        """What was kept, once the server has said whether a copy runs; else nothing."""
        if not self.kept or (self.copy is not None and not self.copy.running):
            return []
        frames, self.kept, self._kept_bytes = self.kept, [], 0
        return frames
