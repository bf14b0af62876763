import struct

import pytest

from pgguard.wire.framing import MAX_STARTUP_PACKET, MessageFramer, ProtocolViolation, StartupFramer

STREAM = (
    b"Q\x00\x00\x00\rSELECT 1\x00"
    b"S\x00\x00\x00\x04"
    b"d\x00\x00\x00\x07abc"
    b"Z\x00\x00\x00\x05I"
)
MESSAGES = [
    (ord("Q"), b"Q\x00\x00\x00\rSELECT 1\x00"),
    (ord("S"), b"S\x00\x00\x00\x04"),
    (ord("d"), b"d\x00\x00\x00\x07abc"),
    (ord("Z"), b"Z\x00\x00\x00\x05I"),
]


def header(tag: bytes, length: int) -> bytes:
    return tag + struct.pack("!i", length)


def test_many_messages_in_one_chunk() -> None:
    framer = MessageFramer()
    raw, frames = framer.feed(STREAM)
    assert raw == STREAM
    assert [(f.tag, f.data) for f in frames] == MESSAGES
    assert frames[0].body == b"SELECT 1\x00"
    assert frames[1].body == b""
    assert framer.buffered == 0


def test_one_byte_at_a_time() -> None:
    framer = MessageFramer()
    raws, frames = [], []
    for i in range(len(STREAM)):
        raw, got = framer.feed(STREAM[i : i + 1])
        raws.append(raw)
        frames += got
    assert b"".join(raws) == STREAM
    assert [(f.tag, f.data) for f in frames] == MESSAGES
    assert framer.buffered == 0


def test_trailing_partial_message_is_kept() -> None:
    framer = MessageFramer()
    raw, frames = framer.feed(STREAM + b"Q\x00\x00")
    assert raw == STREAM
    assert len(frames) == 4
    assert framer.buffered == 3
    raw, frames = framer.feed(b"\x00\x05x")
    assert raw == b"Q\x00\x00\x00\x05x"
    assert [f.body for f in frames] == [b"x"]


def test_large_message_fed_in_pieces() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    data = header(b"d", len(payload) + 4) + payload + b"c\x00\x00\x00\x04"
    framer = MessageFramer()
    frames = []
    raws = []
    for i in range(0, len(data), 7000):
        raw, got = framer.feed(data[i : i + 7000])
        raws.append(raw)
        frames += got
        if not got:
            assert raw == b""
    assert b"".join(raws) == data
    assert [f.tag for f in frames] == [ord("d"), ord("c")]
    assert frames[0].body == payload


def test_oversized_length_raises_on_header_alone() -> None:
    framer = MessageFramer(max_size=1024)
    with pytest.raises(ProtocolViolation):
        framer.feed(header(b"d", 0x7FFFFFFF))
    with pytest.raises(ProtocolViolation):
        MessageFramer(max_size=1024).feed(header(b"d", 1025))
    _, frames = MessageFramer(max_size=1024).feed(header(b"d", 1024) + bytes(1020))
    assert len(frames) == 1


@pytest.mark.parametrize("length", [3, 0, -1, -(2**31)])
def test_length_below_four_raises(length: int) -> None:
    with pytest.raises(ProtocolViolation):
        MessageFramer().feed(header(b"Q", length))


def test_bad_length_after_good_messages_raises() -> None:
    with pytest.raises(ProtocolViolation):
        MessageFramer().feed(STREAM + header(b"Q", 2))


SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"


def test_startup_packet_then_tagged_stream() -> None:
    framer = StartupFramer()
    assert framer.feed(SSL_REQUEST[:3]) is None
    assert framer.feed(SSL_REQUEST[3:] + b"Q\x00") == SSL_REQUEST
    assert framer.buffered == 2
    assert framer.take_rest() == b"Q\x00"
    assert framer.buffered == 0


def test_startup_packet_one_byte_at_a_time() -> None:
    framer = StartupFramer()
    packets = [framer.feed(SSL_REQUEST[i : i + 1]) for i in range(len(SSL_REQUEST))]
    assert packets == [None] * 7 + [SSL_REQUEST]


@pytest.mark.parametrize("length", [7, 4, 0, -1, MAX_STARTUP_PACKET + 1, 0x7FFFFFFF])
def test_startup_length_out_of_range_raises(length: int) -> None:
    with pytest.raises(ProtocolViolation):
        StartupFramer().feed(struct.pack("!i", length))


def test_startup_length_limits_accepted() -> None:
    assert StartupFramer().feed(struct.pack("!i", 8) + bytes(4)) is not None
    big = struct.pack("!i", MAX_STARTUP_PACKET) + bytes(MAX_STARTUP_PACKET - 4)
    assert StartupFramer().feed(big) == big
