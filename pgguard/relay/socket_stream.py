"""A TCP stream for the relay's hot path.

trio's own SocketStream yields to the scheduler after every successful
send and receive. On a relay that turns one query round trip into a dozen
task switches; this stream yields only when the socket would block, and every
few dozen operations otherwise, so a busy session still cannot starve the
others and cancellation still gets through.
"""

from __future__ import annotations

import socket

import trio

# Operations allowed in a row without a yield to the scheduler.
_YIELD_EVERY = 32
_DEFAULT_RECEIVE = 256 * 1024


class SocketStream(trio.abc.HalfCloseableStream):
    __slots__ = ("socket", "_since_yield", "_sending", "_closed")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._since_yield = 0
        self._sending = False
        self._closed = False

    @classmethod
    def adopt(cls, stream: trio.SocketStream) -> SocketStream:
        """Take over the socket of a trio SocketStream (which is left detached)."""
        return cls(socket.socket(fileno=stream.socket.detach()))

    async def _tick(self) -> None:
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = max_bytes or _DEFAULT_RECEIVE
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            try:
                data = self.socket.recv(size)
            except BlockingIOError:
                self._since_yield = 0
                await trio.lowlevel.wait_readable(self.socket)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(exc) from exc
            await self._tick()
            return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._sending = True
        try:
            view = memoryview(data)
            sent = 0
            while sent < len(view):
                if self._closed:
                    raise trio.ClosedResourceError("stream was closed")
                try:
                    sent += self.socket.send(view[sent:])
                except BlockingIOError:
                    self._since_yield = 0
                    await trio.lowlevel.wait_writable(self.socket)
                except OSError as exc:
                    raise trio.BrokenResourceError(exc) from exc
            await self._tick()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    async def send_eof(self) -> None:
        try:
            self.socket.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()
        await trio.lowlevel.checkpoint()
