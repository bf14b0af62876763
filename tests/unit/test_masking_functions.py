"""Column masking functions: config parsing, and for every function, type and format, a
result that is a valid value of the column's type (or NULL) and shows nothing it should not."""

from __future__ import annotations

import json
import random
import struct
import uuid

import pytest

from pgguard.config import ConfigError
from pgguard.masking.detectors import DETECTORS, Scrubber, luhn_valid
from pgguard.masking.functions import FUNCTIONS, MaskSpec, column_mask
from pgguard.masking.values import (
    BINARY_FORMAT, BPCHAR, INT2, INT4, INT8, JSON, JSONB, NAME, TEXT, TEXT_FORMAT, TEXT_TYPES, UNKNOWN, UUID,
    VARCHAR,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
FORMATS = (TEXT_FORMAT, BINARY_FORMAT)
NUMERIC, DATE, BYTEA, TEXT_ARRAY, CITEXT = 1700, 1082, 17, 1009, 16500


def mask(spec: object, value: bytes, type_oid: int = TEXT, fmt: int = TEXT_FORMAT, key: bytes = KEY) -> bytes | None:
    return column_mask(MaskSpec.parse(spec, "masking.columns.x"), type_oid, fmt, key)(value)


# --- MaskSpec -----------------------------------------------------------------------


def test_parse_names_and_tables() -> None:
    assert MaskSpec.parse("email", "w") == MaskSpec("email")
    assert MaskSpec.parse({"function": "partial", "keep_first": 0, "keep_last": 4}, "w") == MaskSpec("partial")
    spec = MaskSpec.parse({"function": "partial", "keep_first": 2, "keep_last": 0, "mask_char": "#",
                           "keep_separators": False}, "w")
    assert (spec.keep_first, spec.keep_last, spec.mask_char, spec.keep_separators) == (2, 0, "#", False)
    assert MaskSpec.parse({"function": "hmac", "length": 32}, "w").length == 32
    assert MaskSpec.parse({"function": "redact", "text": "<hidden>"}, "w").text == "<hidden>"


@pytest.mark.parametrize("value, message", [
    ("rot13", "masking.columns.c: unknown masking function 'rot13'; expected one of redact, null, partial"),
    ({"keep_last": 4}, "masking.columns.c: missing `function`"),
    (42, "masking.columns.c: expected a masking function name or a table with `function`"),
    ({"function": "email", "keep_last": 2},
     "masking.columns.c.keep_last: not a parameter of 'email' (it takes keep_first, mask_char)"),
    ({"function": "null", "text": "x"}, "masking.columns.c.text: not a parameter of 'null' (it takes no parameters)"),
    ({"function": "partial", "keep_last": -1}, "masking.columns.c.keep_last: expected a non-negative integer"),
    ({"function": "partial", "keep_last": True}, "masking.columns.c.keep_last: expected a non-negative integer"),
    ({"function": "partial", "keep_last": "4"}, "masking.columns.c.keep_last: expected a non-negative integer"),
    ({"function": "partial", "mask_char": "**"}, "masking.columns.c.mask_char: expected one character"),
    ({"function": "partial", "mask_char": "\0"}, "masking.columns.c.mask_char: expected a string without NUL"),
    ({"function": "partial", "keep_separators": 1}, "masking.columns.c.keep_separators: expected true or false"),
    ({"function": "redact", "text": "a\0b"}, "masking.columns.c.text: expected a string without NUL"),
    ({"function": "redact", "text": "\ud800"}, "masking.columns.c.text: '\\ud800' is not valid Unicode text"),
    ({"function": "hmac", "length": 4}, "masking.columns.c.length: expected an integer from 8 to 64"),
    ({"function": "hmac", "length": 65}, "masking.columns.c.length: expected an integer from 8 to 64"),
])
def test_parse_refuses(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MaskSpec.parse(value, "masking.columns.c")
    assert str(caught.value).startswith(message)


def test_keyed_functions_need_a_key() -> None:
    assert [name for name in FUNCTIONS if MaskSpec(name).needs_key] == ["hmac", "fake"]
    with pytest.raises(ValueError, match="'hmac' needs a key"):
        column_mask(MaskSpec("hmac"), TEXT, TEXT_FORMAT)
    column_mask(MaskSpec("redact"), TEXT, TEXT_FORMAT)  # unkeyed functions do not


# --- validity for every function, type and format --------------------------------------


SAMPLES = {
    TEXT: b"john.doe@example.com", VARCHAR: b"4111-1111-1111-1111", BPCHAR: b"ab12      ", NAME: b"jdoe",
    UNKNOWN: b"x", JSON: b'{"email": "john@example.com"}', JSONB: b'{"email": "john@example.com"}',
    INT2: b"42", INT4: b"-7", INT8: b"9000000000", UUID: b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    NUMERIC: b"12.50", DATE: b"2024-01-15", BYTEA: b"\\x0102", TEXT_ARRAY: b"{a,b}", CITEXT: b"John",
}
INT_FORMATS = {INT2: ">h", INT4: ">i", INT8: ">q"}


def wire(type_oid: int, fmt: int) -> bytes:
    """SAMPLES[type_oid] as PostgreSQL sends it in format `fmt`."""
    text = SAMPLES[type_oid]
    if fmt == TEXT_FORMAT or type_oid in TEXT_TYPES or type_oid == JSON:
        return text
    if type_oid == JSONB:
        return b"\x01" + text
    if type_oid in INT_FORMATS:
        return struct.pack(INT_FORMATS[type_oid], int(text))
    if type_oid == UUID:
        return uuid.UUID(text.decode()).bytes
    return b"\x00\x01\x02\x03"  # opaque binary: masking never parses it


def check_valid(result: bytes | None, type_oid: int, fmt: int) -> None:
    """Raise unless `result` is a valid value of the type in the format (None is NULL: valid)."""
    if result is None:
        return
    if type_oid in TEXT_TYPES:
        assert b"\0" not in result
        result.decode("utf-8")
    elif type_oid in (JSON, JSONB):
        if type_oid == JSONB and fmt == BINARY_FORMAT:
            assert result[:1] == b"\x01"
            result = result[1:]
        json.loads(result)
    elif type_oid in INT_FORMATS:
        size = struct.calcsize(INT_FORMATS[type_oid])
        n = struct.unpack(INT_FORMATS[type_oid], result)[0] if fmt == BINARY_FORMAT else int(result)
        assert -(2 ** (8 * size - 1)) <= n < 2 ** (8 * size - 1)
        if fmt == TEXT_FORMAT:
            assert result == str(n).encode()
    elif type_oid == UUID:
        uuid.UUID(bytes=result) if fmt == BINARY_FORMAT else uuid.UUID(result.decode())
    else:
        raise AssertionError(f"type {type_oid} should have been masked to NULL")


@pytest.mark.parametrize("function", list(FUNCTIONS))
@pytest.mark.parametrize("type_oid", list(SAMPLES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_result_is_a_valid_value_of_the_type(function: str, type_oid: int, fmt: int) -> None:
    value = wire(type_oid, fmt)
    result = column_mask(MaskSpec(function), type_oid, fmt, KEY)(value)
    check_valid(result, type_oid, fmt)
    assert result != value


@pytest.mark.parametrize("type_oid", list(SAMPLES))
@pytest.mark.parametrize("fmt", FORMATS)
def test_null_is_null_for_every_type(type_oid: int, fmt: int) -> None:
    assert mask("null", wire(type_oid, fmt), type_oid, fmt) is None


@pytest.mark.parametrize("function", ["redact", "partial", "email", "fake"])
@pytest.mark.parametrize("type_oid", [INT2, INT4, INT8, UUID, NUMERIC, DATE, BYTEA, TEXT_ARRAY, CITEXT])
def test_other_types_are_null_except_under_hmac(function: str, type_oid: int) -> None:
    for fmt in FORMATS:
        assert mask(function, wire(type_oid, fmt), type_oid, fmt) is None


@pytest.mark.parametrize("type_oid", [NUMERIC, DATE, BYTEA, TEXT_ARRAY, CITEXT])
def test_hmac_of_types_without_a_pseudonym_is_null(type_oid: int) -> None:
    for fmt in FORMATS:
        assert mask("hmac", wire(type_oid, fmt), type_oid, fmt) is None


# --- redact ------------------------------------------------------------------------------


@pytest.mark.parametrize("type_oid", sorted(TEXT_TYPES))
def test_redact_text_types_in_both_formats(type_oid: int) -> None:
    for fmt in FORMATS:
        assert mask("redact", b"secret", type_oid, fmt) == b"[redacted]"
    assert mask({"function": "redact", "text": "—hidden—"}, b"secret", type_oid) == "—hidden—".encode()


def test_redact_returns_one_object_for_every_value() -> None:
    redact = column_mask(MaskSpec("redact"), VARCHAR, TEXT_FORMAT)
    assert redact(b"a") is redact(b"b")


def test_redact_json_is_a_json_string() -> None:
    assert mask("redact", b'{"a": 1}', JSON) == b'"[redacted]"'
    assert mask("redact", b'[1]', JSONB, TEXT_FORMAT) == b'"[redacted]"'
    assert mask("redact", b'\x01[1]', JSONB, BINARY_FORMAT) == b'\x01"[redacted]"'
    assert mask("redact", b'[1]', JSON, BINARY_FORMAT) == b'"[redacted]"'  # json has no version byte
    assert json.loads(mask({"function": "redact", "text": 'say "no"\n'}, b"1", JSON)) == 'say "no"\n'


@pytest.mark.parametrize("function", ["partial", "email", "fake"])
def test_character_functions_redact_json_documents(function: str) -> None:
    assert mask(function, b'"john@example.com"', JSONB) == b'"[redacted]"'


# --- partial -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, value, expected", [
    ("partial", "4111-1111-1111-1111", "****-****-****-1111"),
    ("partial", "4111 1111 1111 1111", "**** **** **** 1111"),
    ("partial", "+1 (415) 555-2671", "+* (***) ***-2671"),
    ({"function": "partial", "keep_first": 1, "keep_last": 2}, "john.doe@x.io", "j***.***@*.io"),
    ({"function": "partial", "keep_first": 2, "keep_last": 2, "keep_separators": False}, "ab-cd-ef", "ab****ef"),
    ({"function": "partial", "keep_last": 0, "mask_char": "•"}, "a-b", "•-•"),
    ({"function": "partial", "mask_char": "\\"}, "12345", "\\2345"),
    ("partial", "Jürgen Müller", "****** **ller"),
    ("partial", "", ""),
])
def test_partial(spec: object, value: str, expected: str) -> None:
    assert mask(spec, value.encode()) == expected.encode()


@pytest.mark.parametrize("value", ["1234", "12", "a-b-c-d"])
def test_partial_masks_values_too_short_to_keep_anything(value: str) -> None:
    out = mask("partial", value.encode()).decode()
    assert not any(c.isalnum() for c in out)
    assert len(out) == len(value)


def test_partial_keeps_exactly_what_it_is_told_at_the_boundary() -> None:
    assert mask({"function": "partial", "keep_first": 2, "keep_last": 2}, b"abcde") == b"ab*de"
    assert mask({"function": "partial", "keep_first": 2, "keep_last": 2}, b"abcd") == b"****"


def test_partial_masks_bytes_that_are_not_utf8() -> None:
    # A Latin-1 session's "Müller": the ü byte is masked like a letter, not kept as a separator.
    out = mask({"function": "partial", "keep_last": 1}, b"M\xfcller")
    assert out == b"*****r"


# --- email ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, value, expected", [
    ("email", "john.doe@example.com", "***@example.com"),
    ({"function": "email", "keep_first": 1}, "john.doe@example.com", "j***@example.com"),
    ({"function": "email", "keep_first": 1}, "j@example.com", "***@example.com"),
    ({"function": "email", "mask_char": "x"}, "ann+tag@mail.example.co.uk", "xxx@mail.example.co.uk"),
    ("email", '"john@doe"@example.com', "***@example.com"),
    ("email", "not an address", "***"),
    ("email", "", "***"),
])
def test_email(spec: object, value: str, expected: str) -> None:
    assert mask(spec, value.encode()) == expected.encode()


def test_email_does_not_show_the_local_part_length() -> None:
    assert mask("email", b"a@x.io") == mask("email", b"averylongname@x.io")


# --- hmac ----------------------------------------------------------------------------------


def test_hmac_text_is_deterministic_keyed_and_hex() -> None:
    a = mask("hmac", b"john@example.com")
    assert a == mask("hmac", b"john@example.com")
    assert a != mask("hmac", b"jane@example.com")
    assert a != mask("hmac", b"john@example.com", key=OTHER_KEY)
    assert len(a) == 16 and int(a, 16) >= 0
    assert mask({"function": "hmac", "length": 40}, b"john@example.com")[:16] == a
    for type_oid in TEXT_TYPES:
        for fmt in FORMATS:
            assert mask("hmac", b"john@example.com", type_oid, fmt) == a


def test_hmac_json_is_the_same_in_both_formats() -> None:
    text = mask("hmac", b'{"a": 1}', JSONB, TEXT_FORMAT)
    assert json.loads(text) == mask("hmac", b'{"a": 1}').decode()
    assert mask("hmac", b'\x01{"a": 1}', JSONB, BINARY_FORMAT) == b"\x01" + text


@pytest.mark.parametrize("type_oid", [INT2, INT4, INT8])
def test_hmac_integers_agree_across_formats_and_fit(type_oid: int) -> None:
    rng = random.Random(type_oid)
    fmt_code = INT_FORMATS[type_oid]
    size = struct.calcsize(fmt_code)
    seen = set()
    for _ in range(200):
        n = rng.randrange(-(2 ** (8 * size - 1)), 2 ** (8 * size - 1))
        as_text = mask("hmac", str(n).encode(), type_oid, TEXT_FORMAT)
        as_binary = mask("hmac", struct.pack(fmt_code, n), type_oid, BINARY_FORMAT)
        assert int(as_text) == struct.unpack(fmt_code, as_binary)[0]
        assert 0 <= int(as_text) < 2 ** (8 * size - 1)
        seen.add(int(as_text))
    assert len(seen) > 150  # a pseudonym, not a constant


def test_hmac_uuid_agrees_across_formats_and_is_version_8() -> None:
    value = uuid.UUID(SAMPLES[UUID].decode())
    as_text = uuid.UUID(mask("hmac", SAMPLES[UUID], UUID, TEXT_FORMAT).decode())
    as_binary = uuid.UUID(bytes=mask("hmac", value.bytes, UUID, BINARY_FORMAT))
    assert as_text == as_binary != value
    assert as_text.version == 8 and as_text.variant == uuid.RFC_4122


# --- fake ----------------------------------------------------------------------------------


def test_fake_keeps_the_shape() -> None:
    for value in ["4111-1111-1111-1111", "+1 (415) 555-2671", "SW1A 2AA", "john.doe@example.com", "Ünïcode 42"]:
        out = mask("fake", value.encode()).decode()
        assert len(out) == len(value) and out != value
        for a, b in zip(value, out):
            if a.isdecimal():
                assert b.isdecimal() and b.isascii()
            elif a.isalpha():
                assert b.isalpha() and b.isascii() and b.isupper() == a.isupper()
            else:
                assert a == b


def test_fake_is_deterministic_and_keyed() -> None:
    assert mask("fake", b"123-45-6789") == mask("fake", b"123-45-6789")
    assert mask("fake", b"123-45-6789") != mask("fake", b"123-45-6789", key=OTHER_KEY)
    assert mask("fake", b"123-45-6789") != mask("fake", b"123-45-6780")


def test_fake_card_numbers_fail_luhn_and_escape_the_detector() -> None:
    rng = random.Random(3)
    scrubber = Scrubber(["card_number"])
    for _ in range(300):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(12, 18)))
        total = sum(int(c) if i % 2 else (2 * int(c) - 9 if int(c) > 4 else 2 * int(c))
                    for i, c in enumerate(reversed(digits)))
        card = digits + str(-total % 10)
        assert luhn_valid(card.encode())
        grouped = " ".join(card[i:i + 4] for i in range(0, len(card), 4))
        for value in (card, grouped):
            out = mask("fake", value.encode())
            assert not luhn_valid(out.replace(b" ", b""))
            assert scrubber.scrub_bytes(out) is out


def test_fake_output_passes_the_detectors_untouched() -> None:
    # The detectors would otherwise mask the fakes again, and the fake would
    # stop being the same for the same value across paths.
    out = mask("fake", b"4111 1111 1111 1111")
    assert Scrubber(DETECTORS).scrub_bytes(out) is out
