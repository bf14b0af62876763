"""Messages sent by the server (backend), one type per protocol message.

Use `decode_backend` on frames from `MessageFramer`. The Authentication
family shares tag 'R' and is told apart by the int32 code opening its body.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Self

from pgguard.wire.codec import CSTRING, INT8, INT16, INT32, NULLABLE, REST, UINT32, Field, Message, Reader
from pgguard.wire.codec import array, array_of, char, char_of, cstring, fixed, int32, read_done, read_nullables
from pgguard.wire.framing import Frame, ProtocolViolation
from pgguard.wire.frontend import CopyData as CopyData, CopyDone as CopyDone  # both directions


# --- authentication ('R') -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Authentication(Message):
    """Base of the 'R' messages; each subclass sets its int32 `CODE`."""

    TAG = b"R"


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    CODE = 0


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Authentication):
    CODE = 2


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    CODE = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    CODE = 5
    LAYOUT = (fixed(4),)
    salt: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationSCMCredential(Authentication):
    """Obsolete since PostgreSQL 9.1; kept so an old server fails cleanly, not obscurely."""

    CODE = 6


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Authentication):
    CODE = 7


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Authentication):
    CODE = 9


def _read_mechanisms(r: Reader) -> list[str]:
    names: list[str] = []
    while not r.at_nul():
        names.append(r.cstring())
    return names


def _pack_mechanisms(names: list[str]) -> bytes:
    return b"".join(map(cstring, names)) + b"\0"


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    """Mechanisms offered by the server, in its order of preference."""

    CODE = 10
    LAYOUT = (Field(_read_mechanisms, _pack_mechanisms),)
    mechanisms: list[str]


@dataclass(frozen=True, slots=True)
class _AuthenticationData(Authentication):
    """A step of a GSS or SASL exchange: the rest of the body is opaque."""

    LAYOUT = (REST,)
    data: bytes


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(_AuthenticationData):
    CODE = 8


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(_AuthenticationData):
    CODE = 11


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(_AuthenticationData):
    CODE = 12


# --- session ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    """What a CancelRequest must quote to cancel this session's query."""

    TAG = b"K"
    LAYOUT = (INT32, INT32)
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    TAG = b"S"
    LAYOUT = (CSTRING, CSTRING)
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    """The server's answer to a newer minor version or unknown `_pq_.` options."""

    TAG = b"v"
    LAYOUT = (INT32, Field(lambda r: r.array(Reader.cstring, Reader.int32), lambda v: array(v, cstring, int32)))
    newest_minor: int
    unrecognized: list[str]


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    """`status` is the transaction state: 'I' idle, 'T' in a block, 'E' failed block."""

    TAG = b"Z"
    LAYOUT = (char_of("ITE"),)
    status: str


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    TAG = b"A"
    LAYOUT = (INT32, CSTRING, CSTRING)
    process_id: int
    channel: str
    payload: str


# --- errors and notices ------------------------------------------------------------


def _read_fields(r: Reader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while not r.at_nul():
        code = r.char()
        fields[code] = r.cstring()
    return fields


def _pack_fields(fields: dict[str, str]) -> bytes:
    return b"".join(char(k) + cstring(v) for k, v in fields.items()) + b"\0"


@dataclass(frozen=True, slots=True)
class _Notice(Message):
    """Shared shape of ErrorResponse and NoticeResponse: one-letter field codes to text."""

    LAYOUT = (Field(_read_fields, _pack_fields),)
    fields: dict[str, str]

    @property
    def severity(self) -> str:
        """The non-localized severity ('V', since 9.6), else the possibly localized 'S'."""
        return self.fields.get("V") or self.fields.get("S", "")

    @property
    def code(self) -> str:
        return self.fields.get("C", "")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @classmethod
    def build(cls, severity: str, code: str, message: str, detail: str | None = None, hint: str | None = None) -> Self:
        """A notice of our own making; `code` is the SQLSTATE, e.g. '42501'."""
        fields = {"S": severity, "V": severity, "C": code, "M": message}
        if detail is not None:
            fields["D"] = detail
        if hint is not None:
            fields["H"] = hint
        return cls(fields)


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Notice):
    TAG = b"E"


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Notice):
    TAG = b"N"


# --- query results --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldDescription:
    """One column of a RowDescription; `table_oid`/`column_number` are 0 for computed columns."""

    name: str
    table_oid: int
    column_number: int
    type_oid: int
    type_size: int
    type_modifier: int
    format: int


_FIELD_TAIL = struct.Struct("!IhIhih")
_FIELD = Field(
    lambda r: FieldDescription(r.cstring(), *r.unpack(_FIELD_TAIL)),
    lambda f: cstring(f.name)
    + _FIELD_TAIL.pack(f.table_oid, f.column_number, f.type_oid, f.type_size, f.type_modifier, f.format),
)


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    TAG = b"T"
    LAYOUT = (array_of(_FIELD),)
    fields: list[FieldDescription]


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    """Column values as sent, None for SQL NULL; text or binary per the Bind formats."""

    TAG = b"D"
    LAYOUT = (array_of(NULLABLE),)
    values: list[bytes | None]

    @classmethod
    def decode(cls, body: bytes) -> Self:
        # The most frequent message of all (the session log reads every row it keeps): read by hand.
        values, pos = read_nullables(body, 0)
        read_done(body, pos)
        return cls(values)


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    TAG = b"t"
    LAYOUT = (array_of(UINT32),)
    type_oids: list[int]


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    """`tag` such as 'SELECT 5' or 'INSERT 0 1'."""

    TAG = b"C"
    LAYOUT = (CSTRING,)
    tag: str


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    TAG = b"V"
    LAYOUT = (NULLABLE,)
    value: bytes | None


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    TAG = b"1"


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    TAG = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    TAG = b"3"


@dataclass(frozen=True, slots=True)
class NoData(Message):
    TAG = b"n"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    TAG = b"s"


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    TAG = b"I"


# --- COPY ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    """Shared shape of the Copy*Response messages; formats are 0 text, 1 binary."""

    LAYOUT = (INT8, array_of(INT16))
    overall_format: int
    column_formats: list[int]


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    TAG = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    TAG = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    TAG = b"W"


_AUTHENTICATION: dict[int | None, type[Message]] = {
    c.CODE: c
    for c in (AuthenticationOk, AuthenticationKerberosV5, AuthenticationCleartextPassword)
    + (AuthenticationMD5Password, AuthenticationSCMCredential, AuthenticationGSS, AuthenticationGSSContinue)
    + (AuthenticationSSPI, AuthenticationSASL, AuthenticationSASLContinue, AuthenticationSASLFinal)
}

_TAGGED: dict[bytes | None, type[Message]] = {
    c.TAG: c
    for c in (BackendKeyData, BindComplete, CloseComplete, CommandComplete, CopyInResponse, CopyOutResponse)
    + (CopyBothResponse, CopyData, CopyDone, DataRow, EmptyQueryResponse, ErrorResponse, NoticeResponse)
    + (FunctionCallResponse, NegotiateProtocolVersion, NoData, NotificationResponse, ParameterDescription)
    + (ParameterStatus, ParseComplete, PortalSuspended, ReadyForQuery, RowDescription)
}


def decode_backend(frame: Frame) -> Message:
    """Decode a server message; for 'R' the int32 code picks the Authentication type."""
    tag = frame.data[:1]
    if tag == b"R":
        cls = _AUTHENTICATION.get(Reader(frame.body).int32())
    else:
        cls = _TAGGED.get(tag)
    if cls is None:
        raise ProtocolViolation(f"unknown backend message {tag!r}")
    return cls.decode(frame.body)
