"""Writing one session's log beside the relay, failing closed; and pruning old logs.

The relay calls `admit()` and `emit()`. Both are synchronous and never touch the disk: they
encode the record at once, at its seq and at its final size, and queue the bytes. The bytes
are a snapshot of the record, so later changes to the objects the record referred to cannot
alter what is written. `run()`, a trio task beside the session, takes what has gathered in
one batch, links it into the hash chain and frames it in one loop (the SHA-256 of each record
needs the one before it, and nothing else does), and writes the frames with os.write on an
O_APPEND descriptor (to the page cache: no wait on the disk). It runs fsync and space
reservation, which do wait on the disk, in worker threads.

Fail closed, without waiting on the disk: the writer keeps disk space allocated to the file
ahead of what it has accepted (fallocate with FALLOC_FL_KEEP_SIZE: the blocks are the file's,
its size is unchanged). `admit()`, for a statement about to be forwarded, accepts the record
only if its bytes fall inside that space, so writing them cannot fail for lack of space. When
the disk is full, the reservation cannot grow, and statements are refused until it can.
Any write that does fail (EIO, a record that was not admitted running past the reservation)
flips the writer to failed, for good: every later statement is refused.
docs/session-log.md has the whole argument and its limits.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from pgguard.audit.chain import FRAME, Chain, CheckpointAt, Signer, unlinked
from pgguard.audit.records import SUFFIX, Record

log = logging.getLogger("pgguard.audit")

Fsync = Literal["never", "checkpoint", "always"]


@dataclass(frozen=True)
class LogOptions:
    """How a session log is written."""

    # "never" leaves durability to the kernel (a gateway crash loses nothing written, a
    # machine crash may); "checkpoint" fsyncs after each checkpoint and at close; "always"
    # after every batch of records the writer takes from its queue.
    fsync: Fsync = "checkpoint"
    # A signed checkpoint after this many records, or this many seconds, whichever is first.
    checkpoint_records: int = 1000
    checkpoint_seconds: float = 10.0
    # Records the queue holds. Statements are admitted only while it is less than half full,
    # which leaves the other half to the results and notices of statements already admitted.
    queue_records: int = 4096
    # Disk space kept allocated ahead of the accepted records.
    reserve_bytes: int = 1 << 20
    # Once a record is queued, the writer lets more gather for this long before it writes:
    # a busy session then costs one wake-up and one write per interval, not per record. A
    # gateway killed outright loses at most this much of the end of its logs.
    gather_seconds: float = 0.005

    def __post_init__(self) -> None:
        if self.fsync not in ("never", "checkpoint", "always"):
            raise ValueError(f"fsync must be never, checkpoint or always, not {self.fsync!r}")
        if self.checkpoint_records < 1 or self.checkpoint_seconds <= 0:
            raise ValueError("checkpoints must come after at least one record and a positive time")
        if self.queue_records < 2 or self.reserve_bytes < 2:
            raise ValueError("the queue and the reservation must hold something")


class _Mark(enum.Enum):
    """Queued beside frames, so that the writer sees them in order."""

    SYNC = "fsync once what came before is written"
    WAKE = "the relay is waiting for more disk space to be reserved"


# A record's payload from `unlinked()`, a checkpoint, or a mark.
_Item = bytes | CheckpointAt | _Mark


_FALLOC_FL_KEEP_SIZE = 1


def _load_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_FALLOCATE = _load_fallocate()


def reserve_space(fd: int, offset: int, length: int) -> bool:
    """Allocates bytes [offset, offset + length) to the file without changing its size, so
    that O_APPEND writes still land at its end and cannot fail for lack of space there.
    False where the platform or the filesystem cannot; OSError (ENOSPC, EDQUOT...) when
    there is no space."""
    if _FALLOCATE is None:
        return False
    while _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        number = ctypes.get_errno()
        if number in (errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        if number != errno.EINTR:
            raise OSError(number, os.strerror(number))
    return True


@functools.cache
def _warn_unreserved(directory: Path) -> None:
    """Once per directory: the guarantee is weaker there, and the operator should know."""
    log.warning("%s: this filesystem cannot reserve space ahead (fallocate): a full disk is noticed "
                "only when a write fails, after the statement it records may have run", directory)


def _create(path: Path) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "still being written", for prune()
    except OSError:
        os.close(fd)
        raise
    return fd


class SessionLogWriter:
    """One session's log: the synchronous side the relay calls, and the task that writes.

        writer = await SessionLogWriter.open(directory, records.header(...), signer)
        nursery.start_soon(writer.run)
        seq = writer.admit(records.statement(...))   # None: refuse the statement
        writer.emit(records.result(statement=seq, ...))
        writer.close(records.close(...))             # run() returns once all is written
    """

    def __init__(self, path: Path, fd: int, session_id: str, signer: Signer, options: LogOptions) -> None:
        self.path = path
        self._fd = fd
        self._signer = signer
        self._options = options
        # The writer's side: links what it takes from the queue.
        self._chain = Chain(session_id)
        # The relay's side: what is queued, the seq of the next record it accepts, and the
        # writer task when it waits for the queue.
        self._queue: deque[_Item] = deque()
        self._seq = 0
        self._waiting = trio.lowlevel.ParkingLot()
        self._parked = False  # the writer task waits in `_waiting` (a ParkingLot's own test is a call)
        # Why the log cannot be written any more; set once, never cleared.
        self.failure: str | None = None
        # Why the last admit() or emit() returned None.
        self.refusal = ""
        self._closing = False
        # File offsets: where the next accepted frame will start; how far space is allocated
        # (infinite where it cannot be); how far the relay has asked for.
        self._accepted = 0
        self._reserved: float = 0
        self._wanted = 0
        self._space_error: str | None = None
        self._since_checkpoint = 0
        self._checkpoint_at = trio.current_time()

    @classmethod
    async def open(cls, directory: Path, header: Record, signer: Signer,
                   options: LogOptions | None = None) -> SessionLogWriter:
        """Creates `<session_id>.pgglog` in `directory` and queues `header`. OSError when the
        file cannot be created: the session must then not start."""
        session_id = header["session_id"]
        path = directory / f"{session_id}{SUFFIX}"
        fd = await trio.to_thread.run_sync(_create, path)
        writer = cls(path, fd, session_id, signer, options or LogOptions())
        try:
            await writer._reserve()
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        writer.emit(header)
        return writer

    @property
    def healthy(self) -> bool:
        return self.failure is None

    @property
    def backlog(self) -> int:
        """Records (and checkpoints) queued, not yet taken by the writer."""
        return len(self._queue)

    @property
    def out_of_space(self) -> bool:
        """The disk had no room for the space this log reserves ahead."""
        return self._space_error is not None

    def admit(self, record: Record) -> int | None:
        """Queues the record of an action that must not happen unless its record is written:
        a statement about to be forwarded, an approval that releases one. Returns its seq;
        None (compare with None: the header is seq 0) when the log has failed or is closed,
        when the queue is half full, or when the record does not fit in the disk space
        reserved. `refusal` then says why, and the caller must not act. Nothing is lost by a
        refusal, so the log stays usable."""
        if self.failure is not None or self._closing:
            self._unusable()
            return None
        if len(self._queue) >= self._options.queue_records // 2:
            self.refusal = "the session log is behind (its disk is slow); try again"
            return None
        payload = unlinked(record, self._seq)
        size = FRAME.size + len(payload)
        if self._accepted + size > self._reserved:
            self._wanted = self._accepted + size
            self.refusal = self._space_error or "the session log is reserving disk space; try again"
            self._enqueue(_Mark.WAKE, 0)
            return None
        return self._accept(payload, size)

    def emit(self, record: Record) -> int | None:
        """Queues the record of something that has already happened: a result, a notice, a
        refusal. Returns its seq, or None when the log has failed or is closed. A record that
        does not fit in the queue is lost, so the log fails, and later admits are refused."""
        if self.failure is not None or self._closing:
            self._unusable()
            return None
        payload = unlinked(record, self._seq)
        return self._accept(payload, FRAME.size + len(payload))

    def close(self, record: Record) -> None:
        """Ends the log with `record` (a close record) and a final checkpoint; `run()` returns
        once everything queued is written. Only the first call counts."""
        if self._closing:
            return
        if self.emit(record) is not None and self._since_checkpoint:
            self._checkpoint()
        self._closing = True
        self._waiting.unpark_all()

    def _unusable(self) -> None:
        """Says why the log takes no more records."""
        self.refusal = (f"the session log failed: {self.failure}" if self.failure is not None
                        else "the session log is closed")

    def _accept(self, payload: bytes, size: int) -> int | None:
        # `_enqueue` inlined: this runs for every record, on the relay's path.
        queue = self._queue
        if len(queue) >= self._options.queue_records:
            self._fail("its queue overflowed and a record was lost")
            return None
        queue.append(payload)
        self._accepted += size
        if self._parked:
            self._waiting.unpark_all()
        seq = self._seq
        self._seq = seq + 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= self._options.checkpoint_records:
            self._checkpoint()  # the time-based ones are run()'s
        return seq

    def _checkpoint(self) -> None:
        at = time.time()
        if self._enqueue(CheckpointAt(at), self._signer.checkpoint_size(self._seq, at)):
            self._seq += 1
            if self._options.fsync == "checkpoint":
                self._enqueue(_Mark.SYNC, 0)
        self._since_checkpoint = 0
        self._checkpoint_at = trio.current_time()

    def _enqueue(self, item: _Item, size: int) -> bool:
        """Queues `item`, whose frame will be `size` bytes; False when the queue is full."""
        if len(self._queue) >= self._options.queue_records:
            self._fail("its queue overflowed and a record was lost")
            return False
        self._queue.append(item)
        self._accepted += size
        if self._parked:
            self._waiting.unpark_all()
        return True

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("session log %s: %s; the session's statements are refused from now on", self.path, reason)

    async def run(self) -> None:
        """The writer task: writes what is queued until `close()`, or until writing fails.
        It never raises for a failed write: it records the failure for the relay to see."""
        try:
            while (batch := await self._next_batch()) is not None:
                if batch:
                    await self._flush(batch)
                elif self._since_checkpoint and self.failure is None and not self._closing:
                    self._checkpoint()  # a quiet session: its last records wait no longer than T
                else:
                    self._checkpoint_at = trio.current_time()
        except OSError as error:
            self._fail(f"cannot write: {error.strerror or error}")
        finally:
            self._finish()

    async def _next_batch(self) -> list[_Item] | None:
        """Everything queued, waiting for something; [] when a checkpoint is due first; None
        once the log is closed and all of it was taken."""
        if not self._queue:
            if self._closing:
                return None
            with trio.move_on_at(self._checkpoint_at + self._options.checkpoint_seconds):
                self._parked = True
                try:
                    await self._waiting.park()
                finally:
                    self._parked = False
            if not self._queue:
                return None if self._closing else []
        if self._options.gather_seconds and not self._closing:
            await trio.sleep(self._options.gather_seconds)  # if cancelled, _finish writes what is queued
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def _flush(self, batch: list[_Item]) -> None:
        data = self._write(batch)
        if (self._since_checkpoint and not self._closing
                and trio.current_time() - self._checkpoint_at >= self._options.checkpoint_seconds):
            self._checkpoint()  # a busy session: the records of T seconds are signed now
        await self._reserve()
        if _Mark.SYNC in batch or (data and self._options.fsync == "always"):
            await trio.to_thread.run_sync(os.fsync, self._fd)

    def _write(self, batch: list[_Item]) -> int:
        """Links the records in `batch` into the chain and writes their frames with as few
        system calls as it takes; their size."""
        view = memoryview(self._chain.link_all(batch, self._signer))
        size = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        return size

    async def _reserve(self) -> None:
        """Keeps at least half of `reserve_bytes` allocated beyond the accepted bytes, and as
        much as the relay last asked for."""
        chunk = self._options.reserve_bytes
        if self._reserved - self._accepted >= chunk // 2 and self._reserved >= self._wanted:
            return
        start = int(self._reserved)
        end = max(self._accepted, self._wanted) + chunk
        try:
            reserved = await trio.to_thread.run_sync(reserve_space, self._fd, start, end - start)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            if self._space_error is None:
                log.warning("session log %s: cannot reserve disk space (%s): statements are refused until "
                            "there is space", self.path, error.strerror)
            self._space_error = f"no disk space for the session log ({error.strerror})"
            return
        self._space_error = None
        self._reserved = end if reserved else math.inf
        if not reserved:
            _warn_unreserved(self.path.parent)

    def _finish(self) -> None:
        """Closes the file. If the task was cancelled (the gateway stopping), first writes what
        is still queued, synchronously: nothing is left to wait for. Gives back the space
        reserved past the file's end."""
        try:
            if self.failure is None:
                rest = list(self._queue)
                self._queue.clear()
                if self._write(rest) and self._options.fsync != "never":
                    os.fsync(self._fd)
            os.ftruncate(self._fd, os.fstat(self._fd).st_size)
        except OSError as error:
            self._fail(f"cannot write: {error.strerror or error}")
        finally:
            if not self._closing:
                self._fail("the writer stopped before the session closed its log")
            os.close(self._fd)


def prune(directory: Path, older_than_seconds: float, now: float | None = None) -> list[Path]:
    """Removes the session logs in `directory` last written more than `older_than_seconds`
    ago whose sessions are over, and returns them.

    A gateway holds an exclusive flock on the log of every session it runs, and the kernel
    drops it when the gateway exits, however it exits. So a log that can be locked is closed
    or was left by a crash, and one that cannot is still being written, however quiet its
    session has been."""
    cutoff = (time.time() if now is None else now) - older_than_seconds
    removed = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # pruned by someone else meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue
        else:
            path.unlink(missing_ok=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed
