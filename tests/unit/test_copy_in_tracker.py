"""CopyInTracker: which client messages the server acts on around COPY FROM STDIN, without I/O."""

from __future__ import annotations

from pgguard.relay.copy_in import DROP, KEEP, KEPT_MAX, PASS, CopyInTracker
from pgguard.wire import frontend
from pgguard.wire.codec import Message
from pgguard.wire.framing import Frame

G, Z, C, E = (ord(c) for c in "GZCE")


def frame(message: Message) -> Frame:
    data = message.encode()
    return Frame(data[0], data)


SYNC, DONE, DATA = frame(frontend.Sync()), frame(frontend.CopyDone()), frame(frontend.CopyData(b"1\n"))
QUERY = frame(frontend.Query("SELECT 1"))


def test_after_a_query_that_may_copy_what_follows_is_kept_until_the_copy_starts() -> None:
    tracker = CopyInTracker()
    tracker.query_may_copy(cycle=3)
    assert tracker.client(SYNC) is KEEP
    tracker.keep([SYNC, QUERY])
    assert tracker.release() == []  # the server has not said yet
    assert tracker.server(G, cycles_done=2) is None
    assert tracker.release() == [SYNC, QUERY]
    # Running: Sync is ignored by the server, copy data goes on, anything else ends the session.
    assert tracker.client(SYNC) is DROP and tracker.client(DATA) is PASS
    assert "during COPY FROM STDIN" in tracker.client(QUERY)
    assert tracker.client(DONE) is PASS
    assert tracker.client(SYNC) is KEEP  # the Query may start another copy
    tracker.server(C, cycles_done=2)
    assert tracker.client(SYNC) is KEEP
    tracker.server(Z, cycles_done=3)
    assert tracker.client(SYNC) is PASS


def test_a_query_whose_copy_does_not_start_lets_what_was_kept_go_at_its_ready_for_query() -> None:
    tracker = CopyInTracker()
    tracker.query_may_copy(cycle=1)
    tracker.keep([QUERY])
    tracker.server(E, cycles_done=0)
    assert tracker.release() == []
    tracker.server(Z, cycles_done=1)
    assert tracker.release() == [QUERY]


def test_an_execute_of_a_copy_portal_is_answered_by_its_batch() -> None:
    tracker = CopyInTracker()
    tracker.portals.add("p")
    tracker.batch_executes = 1
    assert tracker.execute("q", cycle=5) is None and not tracker.waiting  # not a copy
    assert tracker.execute("p", cycle=5) is None and tracker.waiting
    tracker.server(C, cycles_done=3)  # an earlier batch's answer
    assert tracker.waiting
    tracker.server(C, cycles_done=4)  # its own, without a copy
    assert not tracker.waiting


def test_an_execute_of_a_copy_after_another_execute_in_its_batch_ends_the_session() -> None:
    tracker = CopyInTracker()
    tracker.portals.add("p")
    tracker.batch_executes = 2
    assert "after another Execute" in (tracker.execute("p", cycle=1) or "")


def test_a_copy_that_was_not_foreseen_ends_the_session() -> None:
    assert "did not see coming" in (CopyInTracker().server(G, cycles_done=0) or "")


def test_what_is_kept_is_bounded() -> None:
    tracker = CopyInTracker()
    tracker.query_may_copy(cycle=1)
    big = frame(frontend.CopyData(b"x" * (KEPT_MAX // 2)))
    assert tracker.keep([big]) is None
    assert "1 MiB" in (tracker.keep([big, big]) or "")
