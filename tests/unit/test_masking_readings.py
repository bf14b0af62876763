"""Detectors over values that are not text: every way a client may read a card number out of one is looked at."""

from __future__ import annotations

import struct

import pytest

from pgguard.masking.copy import scrub_copy_text
from pgguard.masking.detectors import Scrubber
from pgguard.masking.plan import detector_mask
from pgguard.masking.values import BINARY_FORMAT, TEXT_FORMAT

SCRUBBER = Scrubber(["card_number", "email"])
CARD = 4111111111111111


def found(type_oid: int | None, fmt: int, value: bytes) -> bool:
    """Whether the detectors make the value NULL."""
    mask = detector_mask(SCRUBBER, type_oid, fmt)
    assert mask is not None
    return mask(value) is None


def sized(value: bytes) -> bytes:
    return struct.pack("!i", len(value)) + value


def array(element_type: int, elements: list[bytes]) -> bytes:
    return struct.pack("!iiIii", 1, 0, element_type, len(elements), 1) + b"".join(map(sized, elements))


def record(*columns: tuple[int, bytes]) -> bytes:
    return struct.pack("!i", len(columns)) + b"".join(struct.pack("!I", oid) + sized(value) for oid, value in columns)


def numeric(number: int) -> bytes:
    digits = []
    while number:
        number, digit = divmod(number, 10000)
        digits.insert(0, digit)
    return struct.pack(f"!HhHH{len(digits)}H", len(digits), len(digits) - 1, 0, 0, *digits)


INT8, FLOAT8, MONEY, XID8, NUMERIC, POINT, INT8RANGE = 20, 701, 790, 5069, 1700, 600, 3926
INT8_BYTES = struct.pack("!q", CARD)
FLOAT8_BYTES = struct.pack("!d", float(CARD))


@pytest.mark.parametrize(("type_oid", "value"), [
    # Fixed: float8 and money print a card as 4.111111111111111e+15 and $4,111,111,111,111,111.00, and send it
    # as a double and an integer of cents; xid8 as an integer; binary arrays, records and ranges wrap them.
    (FLOAT8, FLOAT8_BYTES),
    (MONEY, struct.pack("!q", CARD * 100)),
    (XID8, INT8_BYTES),
    (1016, array(INT8, [INT8_BYTES])),
    (2249, record((23, b"\x00\x00\x00\x01"), (NUMERIC, numeric(CARD)))),
    (2249, record((FLOAT8, FLOAT8_BYTES))),
    (INT8RANGE, b"\x12" + sized(INT8_BYTES)),
    (POINT, FLOAT8_BYTES + struct.pack("!d", 0.0)),
    (1000001, array(2249, [record((INT8, INT8_BYTES))])),  # nested, of a composite type's array OID
    # Fixed: a text of 48 to 57 bytes in a binary array or record has a length whose last byte is an ASCII
    # digit, which glued onto a card at the text's start made a longer number that fails Luhn.
    (1009, array(25, [str(CARD).encode() + b"x" * 32])),
    (2249, record((25, str(CARD).encode() + b" " * 37))),
    # Of unknown type (COPY of an expression): an 8-byte value that reads as a card.
    (None, INT8_BYTES),
    (None, FLOAT8_BYTES),
    (None, struct.pack("!q", CARD * 100)),
    (None, array(INT8, [INT8_BYTES])),
])
def test_a_card_in_a_binary_value_is_found_however_it_is_encoded(type_oid, value):
    assert found(type_oid, BINARY_FORMAT, value)


@pytest.mark.parametrize(("type_oid", "value"), [
    (FLOAT8, b"4.111111111111111e+15"),
    (MONEY, b"$4,111,111,111,111,111.00"),
    (MONEY, b"4.111.111.111.111.111,00 \xe2\x82\xac"),  # lc_monetary = 'de_DE.UTF-8'
    (1022, b"{4.111111111111111e+15,1}"),  # float8[]
    (2249, b"(4.111111111111111e+15,x)"),
    (POINT, b"(4.111111111111111e+15,0)"),
    # Fixed: bytea[] prints each element's hex, with its backslash doubled.
    (1001, b'{"\\\\x' + str(CARD).encode().hex().encode() + b'"}'),
    (2249, b'("\\\\x' + b"ben@example.com".hex().encode() + b'")'),
    (None, b"4.111111111111111e+15"),
])
def test_a_card_in_a_text_value_is_found_however_it_is_printed(type_oid, value):
    assert found(type_oid, TEXT_FORMAT, value)


@pytest.mark.parametrize(("type_oid", "fmt", "value"), [
    (FLOAT8, TEXT_FORMAT, b"4.111111111111112e+15"),
    (FLOAT8, TEXT_FORMAT, b"0.0001666944490748458"),  # its 19 digits after the point pass Luhn: no card
    (FLOAT8, TEXT_FORMAT, b"12.0001666944490748458"),
    (FLOAT8, TEXT_FORMAT, b"NaN"),
    (FLOAT8, BINARY_FORMAT, struct.pack("!d", 12.5)),
    (MONEY, TEXT_FORMAT, b"$1,234,567.89"),
    (INT8, BINARY_FORMAT, struct.pack("!q", 4111111111111112)),
    (1016, BINARY_FORMAT, array(INT8, [struct.pack("!q", n) for n in range(100)])),
    # Unknown types: a timestamp (microseconds since 2000) and an 8-byte text are no card, whatever Luhn says.
    (None, BINARY_FORMAT, struct.pack("!q", 817_000_000_000_000 + 7)),
    (None, BINARY_FORMAT, b"8 bytes!"),
    (None, BINARY_FORMAT, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
    (1001, TEXT_FORMAT, b'{"\\\\x89504e470d0a1a0a3431313131313131313131313131313131"}'),  # binary data's hex
])
def test_values_without_a_card_pass(type_oid, fmt, value):
    assert not found(type_oid, fmt, value)


def test_every_luhn_valid_timestamp_of_unknown_type_passes():
    """A timestamp in binary reads as a 15-digit integer starting with 8 (in the 2020s), which the unknown
    type's readings do not take for a card, though one in ten passes Luhn."""
    mask = detector_mask(SCRUBBER, None, BINARY_FORMAT)
    start = 817_000_000_000_000
    values = [struct.pack("!q", start + step * 1_000_003) for step in range(200)]
    assert all(mask(value) is value for value in values)


@pytest.mark.parametrize(("value", "expected"), [
    (b"4.111111111111111e+15", None),
    (b"$4,111,111,111,111,111.00", None),
    (b"(5.548650486835481e+15,x)", None),  # the mantissa's digits pass Luhn too: masked in place, they showed the 5
    (b"card 4111 1111 1111 1111, total $1,234.00", b"card **** **** **** 1111, total $1,234.00"),
    (b"1.5e+3 and 12,345", b"1.5e+3 and 12,345"),
])
def test_copy_text_of_unknown_type_is_null_where_its_numbers_spelled_out_hold_a_card(value, expected):
    """Fixed: COPY scrubs text of unknown type in place, and float8's or money's print of a card is no card."""
    assert scrub_copy_text(SCRUBBER, value) == expected
