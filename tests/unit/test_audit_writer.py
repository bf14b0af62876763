"""The writer under trio: records in order, checkpoints, fsync policy, and failing closed."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.audit import records, writer as writer_module
from pgguard.audit.chain import Signer
from pgguard.audit.records import Limits
from pgguard.audit.verify import read_records, verify
from pgguard.audit.writer import LogOptions, SessionLogWriter, prune
from pgguard.identity import Identity

KEY = Ed25519PrivateKey.generate()
SIGNER = Signer("k1", KEY)
KEYS = {"k1": KEY.public_key()}
LIMITS = Limits()


def header(session_id: str = "s-1") -> records.Record:
    identity = Identity(provider="pgguard", issuer="pgguard-test", subject="bob", username="bob", groups=("support",),
                        jti=None, issued_at=1.0, expires_at=2.0, valid_until=3.0, roles=("support",))
    return records.header(session_id=session_id, identity=identity, client_address="127.0.0.1:5000",
                          application_name="test", target="demo", tls=None)


def statement(sql: str = "select 1") -> records.Record:
    return records.statement(protocol="simple", sql=sql, decision="allowed", limits=LIMITS)


def result(seq: int) -> records.Record:
    return records.result(statement=seq, command_tag="SELECT 1", duration_ms=0.1, limits=LIMITS)


def closing() -> records.Record:
    return records.close(reason="client closed", bytes_in=1, bytes_out=2, counts={"statements": 1})


async def settle() -> None:
    """Until the writer is idle: waiting for a worker thread counts as blocked, hence the cushion."""
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)


def types(path: Path) -> list[str]:
    return [entry.record["type"] for entry in read_records(path)]


@pytest.mark.parametrize("policy", ["never", "checkpoint", "always"])
async def test_a_session_is_written_in_order_signed_and_synced_by_policy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_size), real_fsync(fd)))
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER, LogOptions(fsync=policy, checkpoint_records=3))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for _ in range(3):
            seq = writer.admit(statement())
            assert seq is not None
            result_seq = writer.emit(result(seq))
            assert result_seq is not None and result_seq > seq
            await trio.sleep(0)
        writer.close(closing())
    path = tmp_path / "s-1.pgglog"
    assert types(path) == ["header", "statement", "result", "checkpoint", "statement", "result", "statement",
                           "checkpoint", "result", "close", "checkpoint"]
    report = verify(path, KEYS)
    assert report.ok, report.problems
    if policy == "never":
        assert synced == []
    else:  # synced at least at the end, after the final checkpoint was written
        assert synced and synced[-1] == path.stat().st_size
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_session_id_is_never_reused(tmp_path: Path) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER)
    with pytest.raises(FileExistsError):
        await SessionLogWriter.open(tmp_path, header(), SIGNER)
    writer.close(closing())
    await writer.run()


async def test_a_full_queue_refuses_statements_and_a_lost_record_fails_the_log(tmp_path: Path) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER, LogOptions(queue_records=4))
    # The writer task has not run: the header waits in the queue.
    first = writer.admit(statement())
    assert first == 1
    assert writer.admit(statement()) is None  # half full: kept for what admitted statements produce
    assert "behind" in writer.refusal and writer.healthy
    assert writer.emit(result(first)) == 2
    assert writer.emit(records.notice(statement=first, severity="NOTICE", sqlstate="00000", message="m",
                                      limits=LIMITS)) == 3
    assert writer.emit(result(first)) is None  # no room: the record is lost, so the log has failed
    assert not writer.healthy and "overflowed" in (writer.failure or "")
    assert writer.admit(statement()) is None and writer.refusal.startswith("the session log failed")
    writer.close(closing())
    await writer.run()
    # What was accepted before the loss is written, and verifies; the end shows the session never closed.
    report = verify(tmp_path / "s-1.pgglog", KEYS)
    assert report.error is None and report.records == 4 and not report.closed


async def test_a_failed_write_fails_the_log_and_refuses_later_statements(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # No gathering: the write fails as soon as the writer runs.
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER, LogOptions(gather_seconds=0))
    real_write = os.write
    log_fd = os.open(tmp_path / "s-1.pgglog", os.O_RDONLY)
    log_inode = os.fstat(log_fd).st_ino
    os.close(log_fd)

    def write(fd: int, data: bytes) -> int:
        if os.fstat(fd).st_ino == log_inode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        assert writer.admit(statement()) == 1
        await trio.testing.wait_all_tasks_blocked()
        assert not writer.healthy
        assert writer.admit(statement()) is None
        assert "No space left on device" in writer.refusal
        assert writer.emit(result(1)) is None
        writer.close(closing())
    assert "No space left on device" in caplog.text and "s-1.pgglog" in caplog.text


async def test_statements_wait_for_reserved_space_and_are_refused_on_a_full_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER, LogOptions(reserve_bytes=1024))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        large = statement("select '" + "x" * 3000 + "'")
        assert writer.admit(dict(large)) is None  # bigger than what is reserved
        assert "reserving disk space" in writer.refusal
        await settle()  # the writer reserves what was asked
        assert writer.admit(dict(large)) == 1

        def full(fd: int, offset: int, length: int) -> bool:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(writer_module, "reserve_space", full)
        refused = 0
        for _ in range(20):
            if writer.admit(statement("select '" + "y" * 200 + "'")) is None:
                refused += 1
                assert "no disk space for the session log (No space left on device)" in writer.refusal
            await settle()
        assert refused and writer.healthy  # refused, and nothing lost: results still go in
        assert writer.emit(result(1)) is not None
        monkeypatch.undo()
        assert writer.admit(statement()) is None  # asks for space...
        await settle()
        assert writer.admit(statement()) is not None  # ...and gets it
        writer.close(closing())
    assert verify(tmp_path / "s-1.pgglog", KEYS).ok


async def test_on_a_full_disk_every_admitted_statement_is_on_disk(small_disk: Path) -> None:
    writer = await SessionLogWriter.open(small_disk, header(), SIGNER, LogOptions(reserve_bytes=16 * 1024))
    admitted: list[int] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        while len(admitted) < 1000:
            seq = writer.admit(statement("select '" + "z" * 1000 + "'"))
            if seq is None:
                if "space" in writer.refusal and "reserving" not in writer.refusal:
                    break
            else:
                admitted.append(seq)
                writer.emit(result(seq))
            await trio.sleep(0.001)
        writer.close(closing())
    assert 100 < len(admitted) < 1000, writer.refusal
    written = {entry.record["seq"] for entry in read_records(small_disk / "s-1.pgglog")}
    assert set(admitted) <= written
    assert verify(small_disk / "s-1.pgglog", KEYS).error is None


async def test_a_quiet_session_is_signed_after_the_checkpoint_interval(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER, LogOptions(checkpoint_seconds=10))
    path = tmp_path / "s-1.pgglog"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        writer.emit(records.notice(statement=None, severity="NOTICE", sqlstate="00000", message="hello",
                                   limits=LIMITS))
        await trio.sleep(5)
        assert types(path) == ["header", "notice"]
        await trio.sleep(6)
        assert types(path) == ["header", "notice", "checkpoint"]
        await trio.sleep(100)  # nothing new to sign: no more checkpoints
        assert types(path) == ["header", "notice", "checkpoint"]
        writer.close(closing())
    assert verify(path, KEYS).ok


async def test_a_cancelled_writer_writes_what_was_queued_and_refuses_more(tmp_path: Path) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        seq = writer.admit(statement())
        assert seq is not None and writer.emit(result(seq)) is not None
        nursery.cancel_scope.cancel()
    assert types(tmp_path / "s-1.pgglog") == ["header", "statement", "result"]
    assert not writer.healthy and writer.admit(statement()) is None
    report = verify(tmp_path / "s-1.pgglog", KEYS)
    assert report.error is None and not report.closed


async def test_a_log_closed_as_the_gateway_stops_is_still_complete(tmp_path: Path) -> None:
    writer = await SessionLogWriter.open(tmp_path, header(), SIGNER)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        await trio.testing.wait_all_tasks_blocked()
        writer.close(closing())  # the session's last word, then the gateway's shutdown cancels everything
        nursery.cancel_scope.cancel()
    assert types(tmp_path / "s-1.pgglog") == ["header", "close", "checkpoint"]
    assert writer.healthy and verify(tmp_path / "s-1.pgglog", KEYS).ok


async def test_prune_removes_only_old_logs_of_sessions_that_are_over(tmp_path: Path) -> None:
    old = time.time() - 10 * 86400
    ended = tmp_path / "ended.pgglog"
    ended.write_bytes(b"x")  # a closed or crashed session: nobody holds it
    recent = tmp_path / "recent.pgglog"
    recent.write_bytes(b"x")
    other = tmp_path / "notes.txt"
    other.write_bytes(b"x")
    live = await SessionLogWriter.open(tmp_path, header("live"), SIGNER)  # quiet for days, still open
    for path in (ended, other, tmp_path / "live.pgglog"):
        os.utime(path, (old, old))
    assert prune(tmp_path, 7 * 86400) == [ended]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["live.pgglog", "notes.txt", "recent.pgglog"]
    live.close(closing())
    await live.run()
    os.utime(tmp_path / "live.pgglog", (old, old))
    assert prune(tmp_path, 7 * 86400) == [tmp_path / "live.pgglog"]
    assert prune(tmp_path, 0, now=time.time() + 1) == [recent]
