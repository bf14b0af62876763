"""Incremental framing of the PostgreSQL byte stream.

Two shapes exist on the wire: the untagged packets of the startup phase
(`int32 length, payload`) and the tagged messages after it
(`byte tag, int32 length, payload`). A framer is fed whatever bytes arrived and
returns the complete messages; a partial tail is kept for the next feed.
Lengths are checked before anything is buffered, so a hostile length costs
nothing.
"""

from __future__ import annotations

import struct

_INT32 = struct.Struct("!i")

# PostgreSQL refuses startup packets above this size (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET = 10_000
DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024


class ProtocolViolation(Exception):
    """The peer sent bytes that are not the PostgreSQL protocol."""


class Frame:
    """One tagged message as it came off the wire, header included.

    `data` is kept as received so that a message needing no change can be
    forwarded without being re-encoded.
    """

    __slots__ = ("tag", "data")

    def __init__(self, tag: int, data: bytes) -> None:
        self.tag = tag
        self.data = data

    @property
    def body(self) -> bytes:
        return self.data[5:]

    def __repr__(self) -> str:
        return f"Frame({chr(self.tag)!r}, {len(self.data)} bytes)"


class _Buffer:
    """Pending bytes kept as a list of chunks, so a large message that
    arrives in many pieces is joined once rather than on every feed."""

    __slots__ = ("_chunks", "_size")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)

    def take(self) -> bytes:
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data


class MessageFramer:
    """Splits the tagged-message stream of an established connection."""

    __slots__ = ("max_size", "_pending", "_need")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._pending = _Buffer()
        # Bytes needed before the pending tail can yield a frame; avoids
        # re-joining a large partial message on every small read.
        self._need = 5

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> tuple[bytes, list[Frame]]:
        """Add `data`; return the complete messages and their contiguous bytes.

        The first element is every complete message exactly as received, for
        the pass-through path; the second the same messages framed one by one.
        """
        if self._pending:
            self._pending.add(data)
            if len(self._pending) < self._need:
                return b"", []
            buf = self._pending.take()
        else:
            buf = data
        frames: list[Frame] = []
        pos = 0
        size = len(buf)
        unpack = _INT32.unpack_from
        max_size = self.max_size
        while size - pos >= 5:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > max_size:
                raise ProtocolViolation(
                    f"message {chr(buf[pos])!r} declares length {length}"
                    f" (limit {max_size})"
                )
            end = pos + 1 + length
            if end > size:
                self._need = end - pos
                break
            frames.append(Frame(buf[pos], buf[pos:end]))
            pos = end
        else:
            self._need = 5
        if pos < size:
            self._pending.add(buf[pos:] if pos else buf)
        return (buf if pos == size else buf[:pos]), frames


class StartupFramer:
    """Splits the untagged packets of the startup phase."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def feed(self, data: bytes) -> bytes | None:
        """Add `data`; return one complete packet (length included) or None."""
        buf = self._pending + data
        if len(buf) >= 4:
            (length,) = _INT32.unpack_from(buf, 0)
            if length < 8 or length > MAX_STARTUP_PACKET:
                raise ProtocolViolation(f"startup packet declares length {length}")
            if len(buf) >= length:
                self._pending = buf[length:]
                return buf[:length]
        self._pending = buf
        return None

    def take_rest(self) -> bytes:
        """Bytes after the last packet: the start of the tagged stream."""
        rest, self._pending = self._pending, b""
        return rest
