"""A TCP stream, plain or TLS, over a non-blocking stdlib socket.

Two reasons for not using trio's SocketStream and SSLStream:
- trio's streams yield to the scheduler after every successful send and
  receive, which on a relay turns one query round trip into a dozen task
  switches. This stream yields only when the socket would block, and every
  few dozen operations otherwise, so a busy session still cannot starve the
  others and cancellation still gets through.
- Once a session is established its socket is handed to the reactor
  (`reactor.py`), which moves bytes for all sessions from one task. TLS is
  therefore done with the stdlib's non-blocking `ssl.SSLSocket`, which the
  reactor can drive as well as this stream.
"""

from __future__ import annotations

import socket
import ssl

import trio

# Operations allowed in a row without a yield to the scheduler.
_YIELD_EVERY = 32
# Bytes asked of each recv. Python allocates that much first, and above 128 KiB glibc's malloc
# may map fresh pages for every call (until its threshold adapts): a recv of a small answer then
# costs ten times as much.
RECEIVE_SIZE = 64 * 1024


class SocketStream(trio.abc.HalfCloseableStream):
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # already reset by the peer; the first read will say so
                pass
        self.socket: socket.socket = sock
        self._since_yield = 0
        self._sending = False
        self._closed = False

    @classmethod
    def adopt(cls, stream: trio.SocketStream) -> SocketStream:
        """Take over the socket of a trio SocketStream (which is left detached)."""
        return cls(socket.socket(fileno=stream.socket.detach()))

    @property
    def tls(self) -> bool:
        return isinstance(self.socket, ssl.SSLSocket)

    async def start_tls(self, context: ssl.SSLContext, *, server_side: bool,
                        server_hostname: str | None = None) -> None:
        """Wrap the socket in TLS and complete the handshake."""
        self.socket = context.wrap_socket(self.socket, server_side=server_side,
                                          server_hostname=server_hostname, do_handshake_on_connect=False)
        while True:
            try:
                self.socket.do_handshake()
                return
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self.socket)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self.socket)
            except (ssl.SSLError, OSError) as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc

    async def _tick(self) -> None:
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()

    async def _wait(self, error: BaseException) -> None:
        self._since_yield = 0
        if isinstance(error, ssl.SSLWantWriteError):
            await trio.lowlevel.wait_writable(self.socket)
        else:
            await trio.lowlevel.wait_readable(self.socket)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = max_bytes or RECEIVE_SIZE
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            try:
                data = self.socket.recv(size)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                await self._wait(exc)
                continue
            except ssl.SSLZeroReturnError:
                data = b""
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
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                    await self._wait(exc if isinstance(exc, ssl.SSLError) else ssl.SSLWantWriteError())
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

    def close(self) -> None:
        """Close at once, waking any task waiting on the socket.

        A TLS peer is sent close_notify first (without waiting for its
        answer): libpq treats a TLS connection closed without it as an error.
        """
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            if isinstance(self.socket, ssl.SSLSocket):
                try:
                    self.socket.unwrap()
                except (ssl.SSLError, OSError, ValueError):
                    pass
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
