"""The reactor: one trio task that moves bytes for every established session.

A trio task per direction per session costs a scheduler round trip for each
message, and that round trip, not the relaying, dominated the gateway's CPU
time (`bench/RESULTS.md`). Here the sockets of all established sessions sit
in one epoll set; the reactor task waits for that set to become readable,
then serves every ready socket without yielding in between. Each session
still lives in its own task and nursery: it attaches its pipe, waits for
`finished`, and on the way out (normal end, error or cancellation) detaches
and closes its sockets.

Back-pressure: when a socket cannot take all that is sent to it, the rest is
kept and the reactor stops reading from the other side until it drains.

Holds: while a statement waits for approval the client is not read (only
its hang-up is watched for), and the upstream goes on; the session's task
hands the outcome back with `resume()`.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
from collections.abc import Callable
from typing import Any

import trio

from pgguard.relay.protocol import Output, SessionProtocol
from pgguard.relay.socket_stream import RECEIVE_SIZE
from pgguard.wire import backend

log = logging.getLogger("pgguard.reactor")

_INTERNAL_ERROR = backend.ErrorResponse.build(
    "FATAL", "XX000", "pgguard: internal error; the session was closed and its last message not forwarded").encode()
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_HANGUP = select.EPOLLHUP | select.EPOLLERR
_RDHUP = select.EPOLLRDHUP
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
# Events taken per poll, and polls served back to back before other tasks get
# a turn: serving what is ready without a trip through trio's scheduler is
# where the reactor's speed comes from.
_BATCH = 128
_BATCHES_PER_YIELD = 8


class _End:
    """One side of a pipe: a socket, what is waiting to be sent to it, and whether it is read."""

    __slots__ = ("pipe", "sock", "fd", "peer", "pending", "reading", "paused", "mask", "receive")

    def __init__(self, pipe: Pipe, sock: socket.socket,
                 receive: Callable[[bytes], Output]) -> None:
        sock.setblocking(False)
        self.pipe = pipe
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: _End = self
        self.pending = bytearray()
        self.reading = True
        # A statement of this client waits for approval: read nothing until it is decided.
        self.paused = False
        self.mask = 0
        self.receive = receive


class Pipe:
    """An established session as the reactor sees it."""

    def __init__(self, client: socket.socket, upstream: socket.socket, protocol: SessionProtocol) -> None:
        self.protocol = protocol
        self.client = _End(self, client, protocol.client_bytes)
        self.upstream = _End(self, upstream, protocol.upstream_bytes)
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.finished = trio.Event()
        self.end_reason = "closed"
        # For the log lines the reactor writes about this pipe (its task is no session's).
        self.session_id: str | None = None
        # Told when the protocol holds a statement (with its request); the session waits for the outcome.
        self.on_hold: Callable[[Any], None] = lambda request: None

    def closed_output(self, end: _End) -> Output:
        if end is self.client:
            return self.protocol.client_closed()
        return self.protocol.upstream_closed()


class Reactor:
    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._ends: dict[int, _End] = {}

    def attach(self, pipe: Pipe) -> None:
        for end in (pipe.client, pipe.upstream):
            self._ends[end.fd] = end
            end.mask = _IN
            self._epoll.register(end.fd, _IN)
        for end in (pipe.client, pipe.upstream):
            # TLS may hold decrypted bytes that epoll cannot see.
            if isinstance(end.sock, ssl.SSLSocket) and end.sock.pending() and not pipe.finished.is_set():
                self._read(end)

    def detach(self, pipe: Pipe) -> None:
        for end in (pipe.client, pipe.upstream):
            if self._ends.pop(end.fd, None) is end:
                self._epoll.unregister(end.fd)

    async def run(self) -> None:
        served_without_yield = 0
        try:
            while True:
                events = self._epoll.poll(0, _BATCH)
                if not events:
                    served_without_yield = 0
                    await trio.lowlevel.wait_readable(self._epoll)
                    continue
                for fd, mask in events:
                    end = self._ends.get(fd)
                    if end is None:
                        continue  # its pipe finished earlier in this batch
                    if mask & _OUT:
                        self._flush(end)
                    if mask & (_IN | _HANGUP | _RDHUP) and not end.pipe.finished.is_set():
                        self._read(end)
                served_without_yield += 1
                if served_without_yield >= _BATCHES_PER_YIELD:
                    # Busy for a while: let handshakes and other tasks run.
                    served_without_yield = 0
                    await trio.lowlevel.checkpoint()
        finally:
            self._epoll.close()

    def _read(self, end: _End, gone: bool = False) -> None:
        """Read what `end` sent and deliver it; `gone`: its connection failed, so nothing more is coming."""
        try:
            data = end.sock.recv(RECEIVE_SIZE)
            if data and isinstance(end.sock, ssl.SSLSocket):
                while end.sock.pending():
                    data += end.sock.recv(RECEIVE_SIZE)
        except _WOULD_BLOCK:
            if not gone:
                return
            data = b""
        except (ssl.SSLZeroReturnError, OSError):
            data = b""  # closed, or reset: the other side is told as for a close
        pipe = end.pipe
        try:
            output = end.receive(data) if data else pipe.closed_output(end)
        except Exception:
            # A bug in one session's processing ends that session, closed:
            # nothing of what it was given is forwarded.
            log.exception("session failed while processing a message", extra={"session_id": pipe.session_id})
            output = Output(to_client=_INTERNAL_ERROR, close="internal error")
        self._deliver(pipe, output)

    def _deliver(self, pipe: Pipe, output: Output) -> None:
        if output.to_upstream:
            self._send(pipe.upstream, output.to_upstream)
        if output.to_client:
            self._send(pipe.client, output.to_client)
        if output.close is not None:
            self._finish(pipe, output.close)
        elif output.hold is not None and not pipe.finished.is_set():
            pipe.client.paused = True
            self._update(pipe.client)
            pipe.on_hold(output.hold)

    def resume(self, pipe: Pipe, decided: Callable[[], Output]) -> None:
        """A held statement was decided: send what the protocol makes of it, and read the client again."""
        if pipe.finished.is_set():
            return
        pipe.client.paused = False
        self._update(pipe.client)
        try:
            output = decided()
        except Exception:
            log.exception("session failed while resuming a held statement", extra={"session_id": pipe.session_id})
            output = Output(to_client=_INTERNAL_ERROR, close="internal error")
        self._deliver(pipe, output)
        client = pipe.client
        if not client.paused and isinstance(client.sock, ssl.SSLSocket) and client.sock.pending() \
                and not pipe.finished.is_set():
            self._read(client)  # decrypted bytes that epoll cannot see

    def _send(self, end: _End, data: bytes) -> None:
        if end.pending:
            end.pending += data
            return
        try:
            sent = end.sock.send(data)
        except _WOULD_BLOCK:
            sent = 0
        except OSError:
            self._lost(end)
            return
        if sent < len(data):
            end.pending += memoryview(data)[sent:]
            end.peer.reading = False
            self._update(end.peer)
            self._update(end)

    def _flush(self, end: _End) -> None:
        try:
            sent = end.sock.send(end.pending)
        except _WOULD_BLOCK:
            return
        except OSError:
            self._lost(end)
            return
        del end.pending[:sent]
        if not end.pending:
            end.peer.reading = True
            self._update(end.peer)
            self._update(end)

    def _lost(self, end: _End) -> None:
        """Sending to `end` failed: it is gone. The target may have said why before it went (a FATAL from
        an administrator, while the client was sending COPY data): that still reaches the client, and
        the pipe ends as for the target's close."""
        pipe = end.pipe
        if end is pipe.upstream:
            end.pending.clear()
            while not pipe.finished.is_set():
                self._read(end, gone=True)
        self._finish(pipe, "connection lost")

    def _update(self, end: _End) -> None:
        mask = (_RDHUP if end.paused else _IN if end.reading else 0) | (_OUT if end.pending else 0)
        if mask != end.mask and self._ends.get(end.fd) is end:
            end.mask = mask
            self._epoll.modify(end.fd, mask)

    def _finish(self, pipe: Pipe, reason: str) -> None:
        """End the pipe: bytes already queued get one last chance to go out."""
        if pipe.finished.is_set():
            return
        pipe.end_reason = reason
        for end in (pipe.client, pipe.upstream):
            if end.pending:
                try:
                    end.sock.send(end.pending)
                except (OSError, ValueError):
                    pass
        self.detach(pipe)
        pipe.finished.set()
