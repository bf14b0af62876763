"""Messages sent by the client (frontend), one type per protocol message.

The startup-phase packets carry no tag (`TAG = None`) and are recognised by
the int32 code opening them: use `decode_startup`. Everything after startup is
tagged: use `decode_frontend`. CopyData and CopyDone travel both ways and are
defined here once; `backend` re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from pgguard.wire.codec import CSTRING, INT16, INT32, NULLABLE, REST, UINT32, Field, Message, Reader
from pgguard.wire.codec import (array_of, char_of, cstring, read_cstring, read_done, read_int16s, read_int32,
                               read_nullables)
from pgguard.wire.framing import Frame, ProtocolViolation

PROTOCOL_3_0 = 3 << 16  # 196608; the low 16 bits are the minor version


def _read_params(r: Reader) -> dict[str, str]:
    params: dict[str, str] = {}
    while not r.at_nul():
        name = r.cstring()
        params[name] = r.cstring()
    return params


def _pack_params(params: dict[str, str]) -> bytes:
    return b"".join(cstring(k) + cstring(v) for k, v in params.items()) + b"\0"


# --- startup phase (untagged) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    """Opens a session; `params` holds user, database, options and GUCs in wire order."""

    TAG = None
    LAYOUT = (INT32, Field(_read_params, _pack_params))
    protocol_version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    TAG = None
    CODE = 80877103


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    TAG = None
    CODE = 80877104


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    """Sent on a fresh connection; matched against a session's BackendKeyData."""

    TAG = None
    CODE = 80877102
    LAYOUT = (INT32, INT32)
    process_id: int
    secret_key: int


_REQUESTS: dict[int | None, type[Message]] = {c.CODE: c for c in (SSLRequest, GSSENCRequest, CancelRequest)}


def decode_startup(packet: bytes) -> Message:
    """Decode a packet from `StartupFramer` (its 4-byte length included).

    Any 3.x version is a StartupMessage (minor-version negotiation is the
    server's business); other codes are rejected.
    """
    r = Reader(packet)
    if r.int32() != len(packet):
        raise ProtocolViolation("startup packet length does not match its size")
    code = r.int32()
    cls = _REQUESTS.get(code)
    if cls is None and code >> 16 == 3:
        cls = StartupMessage
    if cls is None:
        raise ProtocolViolation(f"unsupported protocol version {code >> 16}.{code & 0xFFFF}")
    return cls.decode(packet[4:])


# --- authentication ('p': the type depends on what the server asked for) -----


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """Cleartext or MD5 password ('md5' + hex digest)."""

    TAG = b"p"
    LAYOUT = (CSTRING,)
    password: str


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    TAG = b"p"
    LAYOUT = (CSTRING, NULLABLE)
    mechanism: str
    data: bytes | None


@dataclass(frozen=True, slots=True)
class _Payload(Message):
    """Messages whose body is one opaque byte string."""

    data: bytes
    LAYOUT = (REST,)


@dataclass(frozen=True, slots=True)
class SASLResponse(_Payload):
    TAG = b"p"


@dataclass(frozen=True, slots=True)
class GSSResponse(_Payload):
    TAG = b"p"


# --- queries ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Query(Message):
    """Simple query: one string that may hold several statements."""

    TAG = b"Q"
    LAYOUT = (CSTRING,)
    query: str


@dataclass(frozen=True, slots=True)
class Parse(Message):
    """`param_types` are type OIDs, 0 leaving the type to the server."""

    TAG = b"P"
    LAYOUT = (CSTRING, CSTRING, array_of(UINT32))
    name: str
    query: str
    param_types: list[int]


@dataclass(frozen=True, slots=True)
class Bind(Message):
    """Formats are 0 (text) or 1 (binary); zero or one format code applies to all."""

    TAG = b"B"
    LAYOUT = (CSTRING, CSTRING, array_of(INT16), array_of(NULLABLE), array_of(INT16))
    portal: str
    statement: str
    param_formats: list[int]
    params: list[bytes | None]
    result_formats: list[int]

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(*cls.read(body, 0))

    @staticmethod
    def read(data: bytes, start: int) -> tuple[str, str, list[int], list[bytes | None], list[int]]:
        """The fields of the Bind whose body starts at `start` of `data`, checked as `decode` checks
        them, without building the message: once per prepared statement's execution, read by hand."""
        portal, pos = read_cstring(data, start)
        statement, pos = read_cstring(data, pos)
        param_formats, pos = read_int16s(data, pos)
        params, pos = read_nullables(data, pos)
        result_formats, pos = read_int16s(data, pos)
        read_done(data, pos)
        return portal, statement, param_formats, params, result_formats

    def param_format(self, index: int) -> int:
        """The format of parameter `index`."""
        if not self.param_formats:
            return 0
        return self.param_formats[0] if len(self.param_formats) == 1 else self.param_formats[index]


@dataclass(frozen=True, slots=True)
class _Target(Message):
    """Names a prepared statement (kind 'S') or a portal (kind 'P')."""

    LAYOUT = (char_of("SP"), CSTRING)
    kind: str
    name: str

    @classmethod
    def decode(cls, body: bytes) -> Self:
        kind = body[:1]
        if kind != b"S" and kind != b"P":
            raise ProtocolViolation(f"unexpected code {kind.decode('latin-1')!r}, expected one of 'SP'"
                                    if kind else "message body is truncated")
        name, pos = read_cstring(body, 1)
        read_done(body, pos)
        return cls(kind.decode(), name)


@dataclass(frozen=True, slots=True)
class Describe(_Target):
    TAG = b"D"


@dataclass(frozen=True, slots=True)
class Close(_Target):
    TAG = b"C"


@dataclass(frozen=True, slots=True)
class Execute(Message):
    """`max_rows` 0 means no limit."""

    TAG = b"E"
    LAYOUT = (CSTRING, INT32)
    portal: str
    max_rows: int

    @classmethod
    def decode(cls, body: bytes) -> Self:
        return cls(cls.portal_of(body, 0), read_int32(body, len(body) - 4)[0])

    @staticmethod
    def portal_of(data: bytes, start: int) -> str:
        """The portal of the Execute whose body starts at `start` of `data`, checked as `decode`
        checks the message, without building it."""
        portal, pos = read_cstring(data, start)
        read_done(data, read_int32(data, pos)[1])
        return portal


@dataclass(frozen=True, slots=True)
class Sync(Message):
    TAG = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    TAG = b"H"


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    TAG = b"F"
    LAYOUT = (UINT32, array_of(INT16), array_of(NULLABLE), INT16)
    function_oid: int
    arg_formats: list[int]
    args: list[bytes | None]
    result_format: int


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    TAG = b"X"


# --- COPY (CopyData and CopyDone go both ways) --------------------------------


@dataclass(frozen=True, slots=True)
class CopyData(_Payload):
    TAG = b"d"


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    TAG = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    TAG = b"f"
    LAYOUT = (CSTRING,)
    message: str


_TAGGED: dict[bytes | None, type[Message]] = {
    c.TAG: c
    for c in (PasswordMessage, Query, Parse, Bind, Describe, Execute, Sync, Flush, Close)
    + (CopyData, CopyDone, CopyFail, FunctionCall, Terminate)
}

def decode_frontend(frame: Frame) -> Message:
    """Decode a tagged client message; 'p' always yields PasswordMessage.

    During SASL or GSS exchanges the caller knows what 'p' carries and calls
    SASLInitialResponse/SASLResponse/GSSResponse.decode(frame.body) itself.
    """
    cls = _TAGGED.get(frame.data[:1])
    if cls is None:
        raise ProtocolViolation(f"unknown frontend message {chr(frame.tag)!r}")
    return cls.decode(frame.body)
