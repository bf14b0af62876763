"""What the gateway does with the messages of an established session, sans I/O.

The reactor feeds bytes in as they arrive from either side and sends out what
comes back; nothing here touches a socket, so every decision can be tested
with plain bytes. Messages are framed on the way through, and a batch that
needs no change is forwarded as the very bytes that arrived.
"""

from __future__ import annotations

from typing import NamedTuple

from pgguard.wire import backend, frontend
from pgguard.wire.framing import MessageFramer, ProtocolViolation

_TERMINATE = ord("X")
_TERMINATE_MESSAGE = frontend.Terminate().encode()


class Output(NamedTuple):
    """Bytes to send each way, and why the session ends after them (None: it goes on)."""

    to_upstream: bytes = b""
    to_client: bytes = b""
    close: str | None = None


_NOTHING = Output()


def _fatal(message: str) -> bytes:
    return backend.ErrorResponse.build("FATAL", "08P01", f"pgguard: {message}").encode()


class SessionProtocol:
    def __init__(self, client_framer: MessageFramer, upstream_framer: MessageFramer) -> None:
        self._client = client_framer
        self._upstream = upstream_framer

    def client_bytes(self, data: bytes) -> Output:
        try:
            raw, frames = self._client.feed(data)
        except ProtocolViolation as exc:
            return Output(to_client=_fatal(f"protocol violation: {exc}"),
                          close=f"client protocol violation: {exc}")
        if not frames:
            return _NOTHING
        for index, frame in enumerate(frames):
            if frame.tag == _TERMINATE:
                # Anything after Terminate is not the protocol; drop it.
                forwarded = b"".join(f.data for f in frames[: index + 1])
                return Output(to_upstream=forwarded, close="client terminated")
        return Output(raw)

    def client_closed(self) -> Output:
        # Let the backend end cleanly rather than log an unexpected EOF.
        return Output(to_upstream=_TERMINATE_MESSAGE, close="client disconnected")

    def upstream_bytes(self, data: bytes) -> Output:
        try:
            raw, frames = self._upstream.feed(data)
        except ProtocolViolation as exc:
            return Output(to_client=_fatal("the target database sent an invalid message"),
                          close=f"target protocol violation: {exc}")
        return Output(b"", raw) if frames else _NOTHING

    def upstream_closed(self) -> Output:
        return Output(close="target closed the connection")
