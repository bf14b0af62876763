"""Primitives shared by the frontend and backend message types.

A message body is a run of fixed-size integers, NUL-terminated strings,
length-prefixed values and counted arrays. `Reader` takes them apart and turns
every malformed body into `ProtocolViolation`, so callers handle one exception
whatever the peer sent. `Field` pairs a read with a pack, which lets each
message type declare its body as a `LAYOUT` instead of writing both directions
by hand; `Message` runs that layout.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, ClassVar, Generic, Self, TypeVar

from pgguard.wire.framing import ProtocolViolation

T = TypeVar("T")

_I8 = struct.Struct("!b")
_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")

int8 = _I8.pack
int16 = _I16.pack
uint16 = _U16.pack
int32 = _I32.pack
uint32 = _U32.pack


def message(tag: bytes | None, body: bytes) -> bytes:
    """Frame `body`: tag (none for startup packets) and an int32 length that counts itself."""
    return (tag or b"") + int32(len(body) + 4) + body


def cstring(s: str) -> bytes:
    """UTF-8 with a NUL terminator; an embedded NUL would silently cut the string short."""
    data = s.encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise ValueError(f"NUL byte in protocol string {s!r}")
    return data + b"\0"


def char(c: str) -> bytes:
    """A Byte1 code such as a Describe kind or an error field code."""
    data = c.encode("latin-1")
    if len(data) != 1:
        raise ValueError(f"expected one character, got {c!r}")
    return data


def nullable(value: bytes | None) -> bytes:
    """An int32-length-prefixed value where length -1 stands for SQL NULL."""
    return int32(-1) if value is None else int32(len(value)) + value


def array(items: Iterable[T], pack: Callable[[T], bytes], count: Callable[[int], bytes] = uint16) -> bytes:
    """A counted array; counts are Int16 on the wire but the server reads them unsigned."""
    items = list(items)
    return count(len(items)) + b"".join(map(pack, items))


class Reader:
    """Cursor over one message body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        end = self.pos + fmt.size
        if end > len(self.data):
            raise ProtocolViolation("message body is truncated")
        values = fmt.unpack_from(self.data, self.pos)
        self.pos = end
        return values

    def int8(self) -> int:
        return self.unpack(_I8)[0]

    def int16(self) -> int:
        return self.unpack(_I16)[0]

    def uint16(self) -> int:
        return self.unpack(_U16)[0]

    def int32(self) -> int:
        return self.unpack(_I32)[0]

    def uint32(self) -> int:
        return self.unpack(_U32)[0]

    def raw(self, n: int) -> bytes:
        if n < 0:
            raise ProtocolViolation(f"negative length {n}")
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolViolation("message body is truncated")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def rest(self) -> bytes:
        return self.raw(len(self.data) - self.pos)

    def char(self) -> str:
        return chr(self.raw(1)[0])

    def cstring(self) -> str:
        """Undecodable bytes survive as surrogates, so a re-encoded message is byte-identical."""
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation("string is not NUL-terminated")
        value = self.data[self.pos : end].decode("utf-8", "surrogateescape")
        self.pos = end + 1
        return value

    def at_nul(self) -> bool:
        """Consume the NUL that ends a terminated list, or report that another item follows."""
        if self.raw(1) == b"\0":
            return True
        self.pos -= 1
        return False

    def nullable(self) -> bytes | None:
        n = self.int32()
        return None if n == -1 else self.raw(n)

    def array(self, item: Callable[[Reader], T], count: Callable[[Reader], int] | None = None) -> list[T]:
        """A counted array; the count is read as uint16 unless `count` says otherwise."""
        n = count(self) if count else self.uint16()
        if n < 0:
            raise ProtocolViolation(f"negative count {n}")
        return [item(self) for _ in range(n)]

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation(f"{len(self.data) - self.pos} unexpected bytes after message")


# Hand-written readers for the messages of every extended-protocol round trip (Bind, Execute,
# DataRow): the checks of `Reader`, without a call per item. Each returns (value, next position).

def read_cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise ProtocolViolation("string is not NUL-terminated")
    return data[pos:end].decode("utf-8", "surrogateescape"), end + 1


def read_count(data: bytes, pos: int) -> int:
    if pos + 2 > len(data):
        raise ProtocolViolation("message body is truncated")
    return (data[pos] << 8) | data[pos + 1]


def read_int16s(data: bytes, pos: int) -> tuple[list[int], int]:
    """A counted array of Int16 (format codes)."""
    count = read_count(data, pos)
    if count == 0:  # the usual case: the server's default format for all
        return [], pos + 2
    end = pos + 2 + 2 * count
    if end > len(data):
        raise ProtocolViolation("message body is truncated")
    return list(struct.unpack_from(f"!{count}h", data, pos + 2)), end


def read_nullables(data: bytes, pos: int) -> tuple[list[bytes | None], int]:
    """A counted array of Int32-length values, -1 standing for NULL (Bind's parameters, DataRow's columns)."""
    end = len(data)
    if pos + 2 > end:
        raise ProtocolViolation("message body is truncated")
    count = (data[pos] << 8) | data[pos + 1]  # read_count's, inline: once per DataRow
    pos += 2
    values: list[bytes | None] = []
    for _ in range(count):
        if pos + 4 > end:
            raise ProtocolViolation("message body is truncated")
        (length,) = _I32.unpack_from(data, pos)
        pos += 4
        if length < 0:
            if length != -1:
                raise ProtocolViolation(f"negative length {length}")
            values.append(None)
            continue
        if pos + length > end:
            raise ProtocolViolation("message body is truncated")
        values.append(data[pos:pos + length])
        pos += length
    return values, pos


def read_int32(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 4 > len(data):
        raise ProtocolViolation("message body is truncated")
    return _I32.unpack_from(data, pos)[0], pos + 4


def read_done(data: bytes, pos: int) -> None:
    if pos != len(data):
        raise ProtocolViolation(f"{len(data) - pos} unexpected bytes after message")


class Repeated(Generic[T]):
    """What a function makes of messages a session sends again and again (RowDescriptions: a
    session tends to repeat a few queries), made once per message: the last `size` are kept."""

    __slots__ = ("_make", "_size", "_made")

    def __init__(self, make: Callable[[bytes], T], size: int = 64) -> None:
        self._make = make
        self._size = size
        self._made: dict[bytes, T] = {}

    def __call__(self, message: bytes) -> T:
        made = self._made.get(message)
        if made is None:
            if len(self._made) >= self._size:
                self._made.clear()
            made = self._made[message] = self._make(message)
        return made


@dataclass(frozen=True, slots=True)
class Field(Generic[T]):
    """How one message attribute is read from and packed into a body."""

    read: Callable[[Reader], T]
    pack: Callable[[T], bytes]


def array_of(item: Field[T]) -> Field[list[T]]:
    return Field(lambda r: r.array(item.read), lambda v: array(v, item.pack))


def char_of(allowed: str) -> Field[str]:
    """A Byte1 code restricted to `allowed`, e.g. Describe's 'S' or 'P'."""

    def read(r: Reader) -> str:
        c = r.char()
        if c not in allowed:
            raise ProtocolViolation(f"unexpected code {c!r}, expected one of {allowed!r}")
        return c

    return Field(read, char)


def fixed(n: int) -> Field[bytes]:
    """Exactly `n` raw bytes, such as the MD5 salt."""

    def pack(value: bytes) -> bytes:
        if len(value) != n:
            raise ValueError(f"expected {n} bytes, got {len(value)}")
        return value

    return Field(lambda r: r.raw(n), pack)


INT8: Field[int] = Field(Reader.int8, int8)
INT16: Field[int] = Field(Reader.int16, int16)
INT32: Field[int] = Field(Reader.int32, int32)
UINT32: Field[int] = Field(Reader.uint32, uint32)  # object IDs
CSTRING: Field[str] = Field(Reader.cstring, cstring)
NULLABLE: Field[bytes | None] = Field(Reader.nullable, nullable)
REST: Field[bytes] = Field(Reader.rest, bytes)


@cache
def _attribute_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


class Message:
    """Base of every message type: a dataclass whose fields follow `LAYOUT`.

    `CODE`, when set, is an int32 constant opening the body: the request code
    of SSLRequest/GSSENCRequest/CancelRequest and the Authentication subtype.
    """

    __slots__ = ()
    TAG: ClassVar[bytes | None]
    CODE: ClassVar[int | None] = None
    LAYOUT: ClassVar[tuple[Field[Any], ...]] = ()

    def encode(self) -> bytes:
        """The complete wire message: tag, length and body."""
        values = [getattr(self, name) for name in _attribute_names(type(self))]
        parts = [f.pack(v) for f, v in zip(self.LAYOUT, values, strict=True)]
        if self.CODE is not None:
            parts.insert(0, int32(self.CODE))
        return message(self.TAG, b"".join(parts))

    @classmethod
    def decode(cls, body: bytes) -> Self:
        """Parse a body (the bytes after tag and length)."""
        r = Reader(body)
        if cls.CODE is not None and r.int32() != cls.CODE:
            raise ProtocolViolation(f"body is not a {cls.__name__}")
        msg = cls(*[f.read(r) for f in cls.LAYOUT])
        r.done()
        return msg
