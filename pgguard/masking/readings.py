"""How a client reads a value that is not text: the texts the content detectors look at in it.

A card number cast to bigint, float8 or money (or made a point's coordinate) is
no run of digits on the wire:
binary formats send it as an integer or a double, float8's text prints it as
`4.111111111111111e+15`, money's as `$4,111,111,111,111,111.00`, and binary
arrays, records and ranges wrap such values (and text) in framing whose length
bytes may be ASCII digits that glue onto a number. The client's decoding shows
every digit all the same. `text_readings` and `binary_readings` give, besides
the value as it is, the texts a client may decode it to; the detectors look at
each, and a find in any makes the value NULL (see `plan.detector_mask`).

Readings only ever add finds. Where the type is known (RowDescription, or the
catalog for COPY), it says how to decode; where it is not (COPY of an
expression, rows without a Describe), every framing that parses is read, and
an 8-byte value is read as an integer, an amount of money and a double.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

from pgguard.masking.values import FLOAT8, INT8, MONEY, NUMERIC, XID8

# Range and multirange types whose bounds are numbers, by their subtype.
_RANGES = {3926: INT8, 3906: NUMERIC}
# Geometric types are float8s, after a header of this many bytes (path: closed flag and count; polygon: count).
_GEOMETRIC = {600: 0, 601: 0, 603: 0, 628: 0, 718: 0, 602: 5, 604: 4}
# Types that are their bytes: nothing to decode, nothing framed.
_LEAVES = frozenset({19, 25, 705, 1042, 1043, 114, 3802, 17, 18, 16, 21, 23, 26, 700, 1082, 1083, 1114, 1184, 1266,
                     2950})

# Binary formats nest; deeper framing is read as it is.
_MAX_DEPTH = 8
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")

# float8's text for large numbers (4.111111111111111e+15), and numbers grouped
# in thousands by money's output (`,` or, in other locales, `.`, `'`, spaces).
_EXPONENT = re.compile(rb"(?<![0-9.])[0-9]+(?:\.[0-9]+)?[eE]\+?[0-9]{1,3}(?![0-9])")
_GROUPED = re.compile(rb"(?<![0-9])[0-9]{1,3}(?:(?:[,.' ]|\xc2\xa0|\xe2\x80\xaf)[0-9]{3})+(?![0-9])")
_GROUP_SEPARATORS = re.compile(rb"[^0-9]")
# bytea's hex, with its backslash doubled inside an array or record literal.
_HEX = re.compile(rb"\\+x((?:[0-9A-Fa-f]{2})+)")


def is_text(data: bytes) -> bool:
    """Whether bytes hold text (valid UTF-8), where detectors look; binary data (images, archives) they leave alone.

    Random bytes hold things that look like email addresses every few
    kilobytes, and masking them would corrupt the data.
    """
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def text_readings(value: bytes) -> Iterator[bytes]:
    """A value in text format of a type that is not text: itself, its numbers spelled out, its bytea hex decoded.

    Hex is read only as what it decodes to (and only if that is text): its
    digits could look like a card number.
    """
    hexes = list(_HEX.finditer(value)) if b"x" in value else []
    base = _HEX.sub(b" ", value) if hexes else value
    yield base
    spelled = spelled_out(base)
    if spelled is not base:
        yield spelled
    for match in hexes:
        raw = bytes.fromhex(match.group(1).decode("ascii"))
        if is_text(raw):
            yield raw


def spelled_out(value: bytes) -> bytes:
    """`value` with numbers in exponent notation or grouped in thousands written as plain digits; itself if none."""
    if b"e" not in value and b"E" not in value and _GROUPED.search(value) is None:
        return value
    spelled = _GROUPED.sub(lambda match: _GROUP_SEPARATORS.sub(b"", match.group()), _EXPONENT.sub(_expanded, value))
    return value if spelled == value else spelled


def float8_text_readings(value: bytes) -> Iterator[bytes]:
    """A float8 in text format as the integer it holds (`4.111111111111111e+15`).

    Not its text: the digits after a decimal point (`0.0001666944490748458`)
    pass Luhn one time in ten, and are no number a card could be.
    """
    try:
        number = abs(float(value))
    except ValueError:
        return
    if math.isfinite(number) and number >= 1:
        yield str(int(number)).encode("ascii")


def _expanded(match: re.Match[bytes]) -> bytes:
    """A number in exponent notation written out in digits (its integer part)."""
    try:
        number = Decimal(match.group().decode("ascii"))
    except InvalidOperation:
        return match.group()
    return str(int(number)).encode("ascii") if number.adjusted() < 40 else match.group()


def binary_readings(type_oid: int | None, value: bytes, depth: int = 0) -> Iterator[bytes]:
    """A value in binary format of type `type_oid` (None: unknown): itself, and what a client decodes it to."""
    yield value
    if type_oid in _LEAVES or depth >= _MAX_DEPTH:
        return
    if type_oid in (INT8, XID8, MONEY, FLOAT8, None) and len(value) == 8:
        yield from _eight_bytes(type_oid, value)
    if type_oid in (NUMERIC, None):
        digits = _numeric_digits(value)
        if digits is not None:
            yield digits
    if type_oid in _GEOMETRIC:
        for offset in range(_GEOMETRIC[type_oid], len(value) - 7, 8):
            yield from _eight_bytes(FLOAT8, value[offset:offset + 8])
    if type_oid in (INT8, XID8, MONEY, FLOAT8, NUMERIC) or type_oid in _GEOMETRIC:
        return
    for subtype, bound in _range_bounds(value, _RANGES.get(type_oid) if type_oid is not None else None):
        yield from binary_readings(subtype, bound, depth + 1)
    for inner in _split(value, 4):  # a multirange: a count, then each range with its length
        yield from binary_readings(None, inner, depth + 1)
    for element_type, element in _array_elements(value):
        yield from binary_readings(element_type, element, depth + 1)
    for column_type, column in _record_columns(value):
        yield from binary_readings(column_type, column, depth + 1)


def _eight_bytes(type_oid: int | None, value: bytes) -> Iterator[bytes]:
    """An int8, xid8, money (in cents) or float8, as the digits a client shows.

    Of a value of unknown type, only readings that look like a payment card
    (13 to 16 digits, the first 2 to 6) count: an 8-byte text or timestamp read
    as an integer is a number of 15 to 19 digits that passes Luhn one time in ten.
    """
    (number,) = struct.unpack("!q", value)
    (double,) = struct.unpack("!d", value)
    readings = []
    if type_oid in (INT8, XID8, None):
        readings.append(number if type_oid != XID8 else number & 0xFFFF_FFFF_FFFF_FFFF)
    if type_oid in (MONEY, None):
        readings.append(abs(number) // 100)  # cents
    if type_oid in (FLOAT8, None) and math.isfinite(double):
        readings.append(int(abs(double)))
    for reading in readings:
        digits = str(reading).encode("ascii")
        if type_oid is not None or (13 <= len(digits) <= 16 and digits[:1] in b"23456"):
            yield digits


def _numeric_digits(value: bytes) -> bytes | None:
    """The integer digits of a numeric in binary format (base-10000 digits after a four-field header), if it is one."""
    if len(value) < 8:
        return None
    ndigits, weight, sign, _ = struct.unpack_from("!HhHH", value)
    if len(value) != 8 + 2 * ndigits or sign not in (0x0000, 0x4000, 0xC000, 0xD000, 0xF000):
        return None
    digits = struct.unpack_from(f"!{ndigits}H", value, 8)
    if any(digit > 9999 for digit in digits):
        return None
    whole = [digits[i] if i < len(digits) else 0 for i in range(max(weight + 1, 0))]
    return "".join(f"{d:04d}" for d in whole).lstrip("0").encode("ascii")


def _split(value: bytes, start: int, count: int | None = None) -> list[bytes]:
    """Length-prefixed parts from `start` to the very end (or `count` of them); none if the framing does not fit."""
    parts, pos = [], start
    while pos < len(value) and (count is None or len(parts) < count):
        if pos + 4 > len(value):
            return []
        (length,) = _INT32.unpack_from(value, pos)
        pos += 4
        if length < -1 or pos + max(length, 0) > len(value):
            return []
        if length >= 0:
            parts.append(value[pos:pos + length])
            pos += length
    return parts if pos == len(value) else []


def _range_bounds(value: bytes, subtype: int | None) -> list[tuple[int | None, bytes]]:
    """A range's bounds: a flags byte (empty 0x01, no lower 0x08, no upper 0x10), then each bound there is."""
    if not value or value[0] & ~0x1F:
        return []
    bounds = 0 if value[0] & 0x01 else 2 - bool(value[0] & 0x08) - bool(value[0] & 0x10)
    parts = _split(value, 1, bounds)
    return [(subtype, part) for part in parts] if len(parts) == bounds and bounds else []


def _array_elements(value: bytes) -> list[tuple[int, bytes]]:
    """A binary array's elements: dimensions, a has-nulls flag and the element type, then each element."""
    if len(value) < 12:
        return []
    ndim, flags = _INT32.unpack_from(value, 0)[0], _INT32.unpack_from(value, 4)[0]
    (element_type,) = _UINT32.unpack_from(value, 8)
    if not 0 < ndim <= 6 or flags not in (0, 1) or len(value) < 12 + 8 * ndim:
        return []
    count = 1
    for dim in range(ndim):
        (size,) = _INT32.unpack_from(value, 12 + 8 * dim)
        if size < 0:
            return []
        count *= size
    if count > len(value):
        return []
    return [(element_type, element) for element in _split(value, 12 + 8 * ndim)]


def _record_columns(value: bytes) -> list[tuple[int, bytes]]:
    """A binary record's columns: their count, then each column's type and value."""
    if len(value) < 4:
        return []
    (count,) = _INT32.unpack_from(value, 0)
    if not 0 < count <= len(value) // 8:
        return []
    columns, pos = [], 4
    for _ in range(count):
        if pos + 8 > len(value):
            return []
        (column_type,) = _UINT32.unpack_from(value, pos)
        (length,) = _INT32.unpack_from(value, pos + 4)
        pos += 8
        if length < -1 or pos + max(length, 0) > len(value):
            return []
        if length >= 0:
            columns.append((column_type, value[pos:pos + length]))
            pos += length
    return columns if pos == len(value) else []
