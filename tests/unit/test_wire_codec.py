import inspect
import struct

import pytest

from pgguard.wire import backend as be
from pgguard.wire import frontend as fe
from pgguard.wire.codec import REST, Message, Reader, cstring
from pgguard.wire.framing import MessageFramer, ProtocolViolation, StartupFramer

STARTUP = [
    fe.StartupMessage(fe.PROTOCOL_3_0, {"user": "alice", "database": "app", "application_name": "psql"}),
    fe.StartupMessage(fe.PROTOCOL_3_0 | 2, {}),
    fe.SSLRequest(),
    fe.GSSENCRequest(),
    fe.CancelRequest(4242, -123456789),
]

FRONTEND = [
    fe.PasswordMessage("md5" + "0" * 32),
    fe.Query("SELECT 'é', 1; SELECT 2"),
    fe.Parse("s1", "SELECT $1::int, $2", [23, 0xFFFFFFF0]),
    fe.Parse("", "SELECT 1", []),
    fe.Bind("p1", "s1", [1, 0], [b"\x00\x00\x00\x01", None, b""], [1]),
    fe.Bind("", "", [], [], []),
    fe.Describe("S", "s1"),
    fe.Describe("P", ""),
    fe.Execute("p1", 100),
    fe.Sync(),
    fe.Flush(),
    fe.Close("P", "p1"),
    fe.CopyData(b"1\t2\n"),
    fe.CopyDone(),
    fe.CopyFail("client gave up"),
    fe.FunctionCall(1598, [0], [b"42", None], 1),
    fe.Terminate(),
]

# 'p' is context dependent: decode_frontend only yields PasswordMessage.
AUTH_RESPONSES = [
    fe.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=abc"),
    fe.SASLInitialResponse("SCRAM-SHA-256", None),
    fe.SASLResponse(b"c=biws,r=abc,p=xyz"),
    fe.GSSResponse(b"\x60\x00token"),
]

BACKEND = [
    be.AuthenticationOk(),
    be.AuthenticationKerberosV5(),
    be.AuthenticationCleartextPassword(),
    be.AuthenticationMD5Password(b"\x01\x02\x03\x04"),
    be.AuthenticationSCMCredential(),
    be.AuthenticationGSS(),
    be.AuthenticationGSSContinue(b"gss-token"),
    be.AuthenticationSSPI(),
    be.AuthenticationSASL(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
    be.AuthenticationSASLContinue(b"r=abc,s=c2FsdA==,i=4096"),
    be.AuthenticationSASLFinal(b"v=signature"),
    be.BackendKeyData(31337, -1),
    be.BindComplete(),
    be.CloseComplete(),
    be.CommandComplete("INSERT 0 1"),
    be.CopyInResponse(0, [0, 0]),
    be.CopyOutResponse(1, [1]),
    be.CopyBothResponse(0, []),
    be.CopyData(b"\x00binary"),
    be.CopyDone(),
    be.DataRow([b"1", None, b"", "é".encode()]),
    be.DataRow([]),
    be.EmptyQueryResponse(),
    be.ErrorResponse.build("FATAL", "28P01", "password authentication failed", detail="d", hint="h"),
    be.NoticeResponse({"S": "NOTICE", "C": "00000", "M": "hello", "W": "PL/pgSQL function"}),
    be.FunctionCallResponse(b"42"),
    be.FunctionCallResponse(None),
    be.NegotiateProtocolVersion(0, ["_pq_.unknown"]),
    be.NoData(),
    be.NotificationResponse(77, "jobs", '{"id": 1}'),
    be.ParameterDescription([23, 25, 0xFFFFFFFF]),
    be.ParameterStatus("server_version", "16.2"),
    be.ParseComplete(),
    be.PortalSuspended(),
    be.ReadyForQuery("I"),
    be.ReadyForQuery("T"),
    be.ReadyForQuery("E"),
    be.RowDescription(
        [
            be.FieldDescription("id", 16384, 1, 23, 4, -1, 0),
            be.FieldDescription("?column?", 0, 0, 25, -1, -1, 1),
        ]
    ),
    be.RowDescription([]),
]

ALL = STARTUP + FRONTEND + AUTH_RESPONSES + BACKEND


def message_types(module: object) -> set[type]:
    return {
        obj
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, Message) and not name.startswith("_") and hasattr(obj, "TAG")
    }


def frame_one(data: bytes):
    raw, frames = MessageFramer().feed(data)
    assert raw == data
    assert len(frames) == 1
    return frames[0]


def test_samples_cover_every_message_type() -> None:
    covered = {type(m) for m in ALL}
    assert message_types(fe) <= covered
    assert message_types(be) - {be.Authentication} <= covered


@pytest.mark.parametrize("msg", STARTUP, ids=repr)
def test_startup_round_trip(msg: Message) -> None:
    packet = StartupFramer().feed(msg.encode())
    assert packet == msg.encode()
    assert fe.decode_startup(packet) == msg


@pytest.mark.parametrize("msg", FRONTEND, ids=repr)
def test_frontend_round_trip(msg: Message) -> None:
    assert fe.decode_frontend(frame_one(msg.encode())) == msg


@pytest.mark.parametrize("msg", AUTH_RESPONSES, ids=repr)
def test_auth_response_round_trip(msg: Message) -> None:
    frame = frame_one(msg.encode())
    assert frame.tag == ord("p")
    assert type(msg).decode(frame.body) == msg


@pytest.mark.parametrize("msg", BACKEND, ids=repr)
def test_backend_round_trip(msg: Message) -> None:
    assert be.decode_backend(frame_one(msg.encode())) == msg


def test_copy_messages_are_shared() -> None:
    assert be.CopyData is fe.CopyData
    assert be.CopyDone is fe.CopyDone


@pytest.mark.parametrize(
    ("msg", "wire"),
    [
        (fe.Query("SELECT 1"), b"Q\x00\x00\x00\rSELECT 1\x00"),
        (be.ReadyForQuery("I"), b"Z\x00\x00\x00\x05I"),
        (fe.Sync(), b"S\x00\x00\x00\x04"),
        (fe.SSLRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
        (fe.GSSENCRequest(), b"\x00\x00\x00\x08\x04\xd2\x16\x30"),
        (fe.CancelRequest(1, 2), b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x00\x01\x00\x00\x00\x02"),
        (
            fe.StartupMessage(196608, {"user": "u", "database": "d"}),
            b"\x00\x00\x00\x1b\x00\x03\x00\x00user\x00u\x00database\x00d\x00\x00",
        ),
        (fe.Describe("S", "s"), b"D\x00\x00\x00\x07Ss\x00"),
        (fe.Execute("", 0), b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"),
        (
            fe.Bind("", "s", [], [b"ab", None], []),
            b"B\x00\x00\x00\x17\x00s\x00\x00\x00\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff\x00\x00",
        ),
        (be.AuthenticationOk(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (be.AuthenticationMD5Password(b"salt"), b"R\x00\x00\x00\x0c\x00\x00\x00\x05salt"),
        (
            be.AuthenticationSASL(["SCRAM-SHA-256"]),
            b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00",
        ),
        (be.DataRow([b"1", None]), b"D\x00\x00\x00\x0f\x00\x02\x00\x00\x00\x011\xff\xff\xff\xff"),
        (be.CommandComplete("SELECT 1"), b"C\x00\x00\x00\x0dSELECT 1\x00"),
        (
            be.ErrorResponse.build("ERROR", "42501", "denied"),
            b"E\x00\x00\x00\x22SERROR\x00VERROR\x00C42501\x00Mdenied\x00\x00",
        ),
        (
            be.RowDescription([be.FieldDescription("a", 0, 0, 23, 4, -1, 0)]),
            b"T\x00\x00\x00\x1a\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
        ),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Message) else "",
)
def test_byte_exact(msg: Message, wire: bytes) -> None:
    assert msg.encode() == wire


def test_error_response_fields() -> None:
    err = be.ErrorResponse.build("ERROR", "42501", "permission denied", hint="ask an admin")
    assert list(err.fields) == ["S", "V", "C", "M", "H"]
    assert (err.severity, err.code, err.message) == ("ERROR", "42501", "permission denied")
    old = be.NoticeResponse({"S": "AVISO", "M": "m"})  # pre-9.6: localized severity only
    assert (old.severity, old.code, old.message) == ("AVISO", "", "m")
    assert be.NoticeResponse({"S": "AVISO", "V": "NOTICE"}).severity == "NOTICE"


def test_decode_startup_versions() -> None:
    minor = fe.StartupMessage(fe.PROTOCOL_3_0 | 2, {"user": "u"}).encode()
    assert fe.decode_startup(minor).protocol_version == 196610
    v2 = struct.pack("!ii", 12, 2 << 16) + b"u\x00\x00\x00"
    with pytest.raises(ProtocolViolation, match="2.0"):
        fe.decode_startup(v2)
    with pytest.raises(ProtocolViolation):
        fe.decode_startup(fe.SSLRequest().encode() + b"\x00")  # length disagrees with size


def test_text_round_trips_invalid_utf8() -> None:
    body = b"SELECT '\xff\xfe'\x00"
    assert fe.Query.decode(body).encode()[5:] == body


def test_encoding_rejects_values_that_would_corrupt_the_stream() -> None:
    with pytest.raises(ValueError):
        fe.Query("SELECT 1\x00; DROP TABLE t").encode()
    with pytest.raises(ValueError):
        be.AuthenticationMD5Password(b"abc").encode()
    with pytest.raises(ValueError):
        be.NoticeResponse({"SV": "x"}).encode()


@pytest.mark.parametrize("msg", ALL, ids=repr)
def test_every_truncation_raises_protocol_violation(msg: Message) -> None:
    wire = msg.encode()
    body = wire[4:] if msg.TAG is None else wire[5:]
    opaque_tail = msg.LAYOUT[-1:] == (REST,)
    for i in range(len(body)):
        if opaque_tail:
            try:
                type(msg).decode(body[:i])
            except ProtocolViolation:
                pass
        else:
            with pytest.raises(ProtocolViolation):
                type(msg).decode(body[:i])


@pytest.mark.parametrize("msg", [m for m in ALL if m.LAYOUT[-1:] != (REST,)], ids=repr)
def test_trailing_bytes_raise(msg: Message) -> None:
    wire = msg.encode()
    body = wire[4:] if msg.TAG is None else wire[5:]
    with pytest.raises(ProtocolViolation, match="unexpected bytes"):
        type(msg).decode(body + b"\x00")


@pytest.mark.parametrize(
    ("cls", "body"),
    [
        (fe.Query, b"SELECT 1"),  # missing NUL
        (fe.Parse, b"s\x00SELECT 1"),  # missing NUL
        (be.ParameterStatus, b"a\x00b"),  # missing NUL
        (be.DataRow, b"\x00\x01\xff\xff\xff\xfe"),  # negative length other than -1
        (be.DataRow, b"\x00\x01\x00\x00\x00\x0aabc"),  # value shorter than declared
        (be.DataRow, b"\xff\xff"),  # count 65535 with nothing after it
        (fe.Bind, b"\x00\x00\x00\x00\x00\x01\x80\x00\x00\x00\x00\x00"),  # param length -2**31
        (be.NegotiateProtocolVersion, b"\x00\x00\x00\x00\xff\xff\xff\xff"),  # negative count
        (be.RowDescription, b"\x00\x01a\x00\x00\x00"),  # field cut short
        (be.ErrorResponse, b"SERROR\x00"),  # no final NUL
        (be.AuthenticationSASL, b"\x00\x00\x00\x0aSCRAM-SHA-256\x00"),  # no final NUL
        (be.AuthenticationMD5Password, b"\x00\x00\x00\x03salt"),  # wrong code
        (fe.StartupMessage, b"\x00\x03\x00\x00user\x00u\x00"),  # no final NUL
        (fe.CancelRequest, b"\x04\xd2\x16\x2e\x00\x00\x00\x01"),  # secret key missing
        (fe.SSLRequest, b"\x04\xd2\x16\x30"),  # that is GSSENCRequest
        (fe.Describe, b"Xname\x00"),  # kind neither S nor P
        (be.ReadyForQuery, b"X"),  # unknown transaction status
        (be.ReadyForQuery, b""),
        (fe.Sync, b"\x00"),
    ],
)
def test_malformed_body_raises(cls: type[Message], body: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        cls.decode(body)


def test_unknown_tags_and_codes_raise() -> None:
    with pytest.raises(ProtocolViolation):
        fe.decode_frontend(frame_one(b"Z\x00\x00\x00\x05I"))  # a backend-only tag
    with pytest.raises(ProtocolViolation):
        be.decode_backend(frame_one(b"Q\x00\x00\x00\x05\x00"))  # a frontend-only tag
    with pytest.raises(ProtocolViolation):
        be.decode_backend(frame_one(b"R\x00\x00\x00\x08\x00\x00\x00\x04"))  # unknown auth code
    with pytest.raises(ProtocolViolation):
        be.decode_backend(frame_one(b"R\x00\x00\x00\x06\x00\x00"))  # auth code truncated


def test_password_tag_decodes_as_password_message() -> None:
    frame = frame_one(fe.SASLResponse(b"abc\x00").encode())
    assert fe.decode_frontend(frame) == fe.PasswordMessage("abc")


def test_reader_primitives() -> None:
    r = Reader(b"\xff" b"\xff\xff" b"\xff\xfe" b"\xff\xff\xff\xfe" b"ab\x00" b"\x00" b"rest")
    assert (r.int8(), r.uint16(), r.int16(), r.uint32()) == (-1, 0xFFFF, -2, 0xFFFFFFFE)
    assert r.cstring() == "ab"
    assert r.at_nul()
    assert not Reader(b"x").at_nul()
    assert r.rest() == b"rest"
    r.done()
    assert cstring("é") == b"\xc3\xa9\x00"
    with pytest.raises(ProtocolViolation):
        r.int32()
