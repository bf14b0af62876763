"""Column masking functions: what a role not cleared for a sensitive column gets instead of its values.

The relay builds one `ValueMask` per masked output column when it reads the
RowDescription, where the column's type OID and format code are fixed for the
whole result. Each value then costs one call on its bytes: no dispatch on the
type, no look-up in the spec, nothing compiled. SQL NULL stays NULL and needs
no call (masking hides values, not their absence).

Every result is a valid value of the column's type in the column's format, or
None (SQL NULL), which every type admits:

- text-like types (text, varchar, bpchar, name, unknown) get text, the same
  bytes in both formats. The length limit of varchar(n) or char(n) is not
  kept: clients do not check a received value against the type modifier
  (psql, libpq, psycopg, asyncpg and JDBC all take any string), and cutting
  "[redacted]" to fit a varchar(4) would only make it unreadable;
- json and jsonb are documents, so the functions that work on a string's
  characters (partial, email, fake) redact them: `"[redacted]"`, a JSON
  string. hmac gives the hex digest as a JSON string. jsonb's binary format
  keeps its version byte;
- int2, int4, int8 and uuid have a keyed pseudonym under hmac (joins on a
  masked key still work) and are NULL under every other function: a zero or
  a made-up number would pass for data, NULL cannot;
- every other type (numeric, dates, bytea, arrays, types with dynamic OIDs
  such as citext) is NULL.

hmac and fake are keyed with HMAC-SHA256 under a key from the config: the same
value gives the same output wherever it appears (joins, GROUP BY, DISTINCT
still work on it), and without the key the output says nothing about the
value, even for values from a small set (SSNs, phone numbers), which a plain
hash would let anyone enumerate.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import re
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pgguard.config import ConfigError
from pgguard.masking.detectors import spoil_card_numbers
from pgguard.masking.values import BINARY_FORMAT, INT_WIDTHS, JSON_TYPES, TEXT_TYPES, UUID, json_header

ValueMask = Callable[[bytes], bytes | None]

# Each function and the parameters it takes.
FUNCTIONS: dict[str, tuple[str, ...]] = {
    "redact": ("text",),
    "null": (),
    "partial": ("keep_first", "keep_last", "mask_char", "keep_separators"),
    "email": ("keep_first", "mask_char"),
    "hmac": ("length",),
    "fake": (),
    # Free text that may quote sensitive values: read as itself, it gets the
    # session's detectors; anything computed from it is NULL (plan.as_shown).
    "scrub": (),
}


@dataclass(frozen=True, slots=True)
class MaskSpec:
    """How one sensitive column is shown: a function and its parameters.

    The defaults of every parameter live here; a function ignores those it
    does not take (see FUNCTIONS).
    """

    function: str
    # partial: letters and digits kept at the start; email: characters of the
    # local part kept (j***@example.com).
    keep_first: int = 0
    # partial: letters and digits kept at the end (a card's last four).
    keep_last: int = 4
    # partial, email: what stands in for a masked character.
    mask_char: str = "*"
    # partial: other characters (`-`, ` `, `@`) stay, and are not counted by
    # keep_first/keep_last; when false, every character is masked and counted.
    keep_separators: bool = True
    # redact: the text every value becomes.
    text: str = "[redacted]"
    # hmac: hex digits of HMAC-SHA256 kept (16 = 64 bits: no collision in
    # practice for any one column, shorter to read than 64).
    length: int = 16

    @classmethod
    def parse(cls, value: object, where: str) -> MaskSpec:
        """A spec from a config value: a function name, or a table with `function` and parameters."""
        table = {"function": value} if isinstance(value, str) else value
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a masking function name or a table with `function`, "
                              f"got {value!r}")
        function = table.get("function")
        if not isinstance(function, str):
            raise ConfigError(f"{where}: missing `function` (one of {', '.join(FUNCTIONS)})")
        if function not in FUNCTIONS:
            raise ConfigError(f"{where}: unknown masking function {function!r}; "
                              f"expected one of {', '.join(FUNCTIONS)}")
        params = {}
        for name, param in table.items():
            if name == "function":
                continue
            if name not in FUNCTIONS[function]:
                takes = ", ".join(FUNCTIONS[function]) or "no parameters"
                raise ConfigError(f"{where}.{name}: not a parameter of {function!r} (it takes {takes})")
            params[name] = _CHECKS[name](param, f"{where}.{name}")
        return cls(function, **params)

    @property
    def needs_key(self) -> bool:
        """Whether the function is keyed, so that the config must provide the HMAC key."""
        return self.function in ("hmac", "fake")


def _count(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
    return value


def _hex_length(value: Any, where: str) -> int:
    if type(value) is not int or not 8 <= value <= 64:
        raise ConfigError(f"{where}: expected an integer from 8 to 64 (hex digits of HMAC-SHA256), got {value!r}")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    """Text that PostgreSQL could hold: UTF-8 without NUL."""
    if not isinstance(value, str) or "\0" in value:
        raise ConfigError(f"{where}: expected a string without NUL characters, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: {value!r} is not valid Unicode text") from None
    return value


def _char(value: Any, where: str) -> str:
    if len(_text(value, where)) != 1:
        raise ConfigError(f"{where}: expected one character, got {value!r}")
    return value


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "keep_first": _count, "keep_last": _count, "mask_char": _char,
    "keep_separators": _flag, "text": _text, "length": _hex_length,
}


def column_mask(spec: MaskSpec, type_oid: int, fmt: int, key: bytes = b"") -> ValueMask:
    """The mask for one result column: its values' type OID and format code (0 text, 1 binary).

    `key` is the HMAC key, which hmac and fake need (see MaskSpec.needs_key);
    a keyed function without one is a bug in the caller, not a config error.
    """
    if spec.needs_key and not key:
        raise ValueError(f"masking function {spec.function!r} needs a key")
    if spec.function in ("null", "scrub"):  # a scrub column as itself never gets here (plan.as_shown)
        return _null
    if spec.function == "hmac":
        return _hmac(spec, key, type_oid, fmt)
    if type_oid in TEXT_TYPES:
        return _TEXT_MASKS[spec.function](spec, key)
    if type_oid in JSON_TYPES:
        return _constant(json_header(type_oid, fmt) + json.dumps(spec.text).encode("ascii"))
    return _null


def _null(value: bytes) -> None:
    return None


def _constant(result: bytes) -> ValueMask:
    """Every value becomes `result`, the same object each time: nothing is allocated per value."""
    return lambda value: result


def _on_text(transform: Callable[[str], str]) -> ValueMask:
    """A str -> str transform applied to text-like values (UTF-8 in both formats).

    Bytes that are not UTF-8 (a session in another client_encoding) decode
    as surrogate escapes and encode back to themselves, so nothing is lost
    and nothing raises in the middle of a result.
    """
    def mask(value: bytes) -> bytes:
        return transform(value.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    return mask


def _redact(spec: MaskSpec, key: bytes) -> ValueMask:
    return _constant(spec.text.encode("utf-8"))


# What partial and fake replace (and partial counts, when separators are
# kept): a letter or digit of any script, or a byte that is not UTF-8 (it may
# well be one). The pattern and _is_maskable agree: `[^\W_]` is str.isalnum.
_MASKABLE = re.compile(r"[^\W_]|[\udc80-\udcff]")
_ASCII_ALNUM = string.ascii_letters + string.digits
_ASCII_ALNUM_DROPPED = str.maketrans("", "", _ASCII_ALNUM)
_ASCII_ALNUM_BYTES = _ASCII_ALNUM.encode("ascii")
# 1 for the byte of an ASCII letter or digit, else 0: _is_maskable for a byte of ASCII text.
_ASCII_ALNUM_FLAGS = bytes(byte in _ASCII_ALNUM_BYTES for byte in range(256))

# How partial masks a value: every character it masks replaced, and how many there were.
MaskAll = Callable[[Any], tuple[Any, int]]


def _is_maskable(c: str) -> bool:
    return c.isalnum() or "\udc80" <= c <= "\udcff"


def _any_char(c: object) -> bool:
    return True


def _partial(spec: MaskSpec, key: bytes) -> ValueMask:
    """Keep the first keep_first and last keep_last characters, mask the rest.

    A value too short to mask anything between the kept ends is masked
    whole: keeping four characters of a four-character value would show it.
    Masking is one C-level substitution; only the kept ends are walked in
    Python. An ASCII value (the usual case) is masked as the bytes it is,
    without decoding, when the mask character is ASCII too.
    """
    keep_first, keep_last = spec.keep_first, spec.keep_last

    def keep_ends(text: Any, mask_all: MaskAll, counts: Callable[[Any], int]) -> Any:
        """`text` (str, or bytes of ASCII) masked but for its kept ends."""
        masked, n = mask_all(text)
        if keep_first + keep_last >= n:
            return masked
        start = _prefix_holding(text, keep_first, counts)
        end = len(text) - _prefix_holding(reversed(text), keep_last, counts)
        return text[:start] + masked[start:end] + text[end:]

    text_mask_all, text_counts = _partial_text(spec)
    text_mask = _on_text(lambda text: keep_ends(text, text_mask_all, text_counts))
    if not spec.mask_char.isascii():
        return text_mask
    ascii_mask_all, ascii_counts = _partial_ascii(spec)

    def mask(value: bytes) -> bytes:
        if value.isascii():
            return keep_ends(value, ascii_mask_all, ascii_counts)
        return text_mask(value)
    return mask


def _partial_text(spec: MaskSpec) -> tuple[MaskAll, Callable[[str], bool]]:
    """partial's masking of a str, and which of its characters count towards the kept ends."""
    mask_char = spec.mask_char
    if not spec.keep_separators:
        return lambda text: (mask_char * len(text), len(text)), _any_char
    ascii_masked = str.maketrans(_ASCII_ALNUM, mask_char * len(_ASCII_ALNUM))
    replacement = mask_char.replace("\\", "\\\\")  # a template for re.subn

    def mask_all(text: str) -> tuple[str, int]:
        if text.isascii():  # at a quarter of the cost
            return text.translate(ascii_masked), len(text) - len(text.translate(_ASCII_ALNUM_DROPPED))
        return _MASKABLE.subn(replacement, text)
    return mask_all, _is_maskable


def _partial_ascii(spec: MaskSpec) -> tuple[MaskAll, Callable[[int], int]]:
    """The same for bytes of ASCII text and an ASCII mask character: a byte is a character."""
    mask_byte = spec.mask_char.encode("ascii")
    if not spec.keep_separators:
        return lambda data: (mask_byte * len(data), len(data)), _any_char
    masked = bytes.maketrans(_ASCII_ALNUM_BYTES, mask_byte * len(_ASCII_ALNUM_BYTES))
    return (lambda data: (data.translate(masked), len(data) - len(data.translate(None, _ASCII_ALNUM_BYTES))),
            _ASCII_ALNUM_FLAGS.__getitem__)


def _prefix_holding(chars: Iterable[Any], keep: int, counts: Callable[[Any], int]) -> int:
    """The length of the shortest prefix of `chars` with `keep` characters that `counts`."""
    length = 0
    for c in chars:
        if not keep:
            break
        length += 1
        keep -= counts(c)
    return length


def _email(spec: MaskSpec, key: bytes) -> ValueMask:
    """Keep the domain (after the last `@`) and keep_first characters of the local part.

    The masked local part is always three mask characters, so its length is
    not shown; a local part no longer than keep_first is masked whole. A value
    without `@` is not an address and is masked whole.
    """
    keep_first, stars = spec.keep_first, spec.mask_char * 3

    def transform(text: str) -> str:
        local, at, domain = text.rpartition("@")
        if not at:
            return stars
        return (local[:keep_first] if len(local) > keep_first else "") + stars + at + domain
    return _on_text(transform)


_FAKE_DIGITS = [str(b % 10) for b in range(256)]
_FAKE_LOWER = [chr(ord("a") + b % 26) for b in range(256)]
_FAKE_UPPER = [chr(ord("A") + b % 26) for b in range(256)]


def _fake(spec: MaskSpec, key: bytes) -> ValueMask:
    """A value of the same shape: each digit a digit, each letter a letter of the same case.

    The replacements are ASCII (other scripts' letters become ASCII letters,
    so nothing of a name shows through). Punctuation and spacing stay, so a card number, phone number, SSN or
    postcode still looks like one (and fits the same parsers and widths). The
    replacement characters come from HMAC-SHA256 of the whole value: one value
    always gets the same fake, and the fake reveals none of its characters.
    Digits are then changed where needed so that the card detector finds no
    card in the fake (spoil_card_numbers): it can never be a real card
    number, nor be masked again on its way out.
    """
    # A key of its own, so that a fake and an hmac pseudonym of the same value
    # share nothing.
    fake_key = hmac.digest(key, b"pgguard fake", "sha256")

    def mask(value: bytes) -> bytes:
        text = value.decode("utf-8", "surrogateescape")
        stream = hashlib.shake_256(hmac.digest(fake_key, value, "sha256")).digest(len(text))
        chars = [_FAKE_DIGITS[b] if c.isdecimal()
                 else (_FAKE_UPPER[b] if c.isupper() else _FAKE_LOWER[b]) if _is_maskable(c)
                 else c
                 for c, b in zip(text, stream)]
        return spoil_card_numbers("".join(chars).encode("utf-8", "surrogateescape"))
    return mask


_TEXT_MASKS: dict[str, Callable[[MaskSpec, bytes], ValueMask]] = {
    "redact": _redact, "partial": _partial, "email": _email, "fake": _fake,
}


def _hmac(spec: MaskSpec, key: bytes, type_oid: int, fmt: int) -> ValueMask:
    """A keyed pseudonym of the value, in the column's own type.

    For integers and uuids the value is hashed in one form whatever the
    format, so a text-format client (psql) and a binary-format one (asyncpg)
    see the same pseudonym.
    """
    binary = fmt == BINARY_FORMAT
    if type_oid in TEXT_TYPES:
        length = spec.length
        return lambda value: binascii.hexlify(hmac.digest(key, value, "sha256"))[:length]
    if type_oid in JSON_TYPES:
        header, length = json_header(type_oid, fmt), spec.length
        skip = len(header)
        return lambda value: (header + b'"' + binascii.hexlify(hmac.digest(key, value[skip:], "sha256"))[:length]
                              + b'"')
    if type_oid in INT_WIDTHS:
        width = INT_WIDTHS[type_oid]
        top = (1 << (8 * width - 1)) - 1  # non-negative, within the type

        def integer(value: bytes) -> bytes:
            if binary:  # as int4out would print it, the form text-format values come in
                value = b"%d" % int.from_bytes(value, "big", signed=True)
            n = int.from_bytes(hmac.digest(key, value, "sha256")[:width], "big") & top
            return n.to_bytes(width, "big") if binary else b"%d" % n
        return integer
    if type_oid == UUID:
        def pseudonym(value: bytes) -> bytes:
            raw = value if binary else binascii.unhexlify(value.replace(b"-", b""))
            out = bytearray(hmac.digest(key, raw, "sha256")[:16])
            # RFC 9562 version 8 ("custom"): says it is not a random or
            # time-based uuid, while every client still parses it.
            out[6] = out[6] & 0x0F | 0x80
            out[8] = out[8] & 0x3F | 0x80
            return bytes(out) if binary else str(uuid.UUID(bytes=bytes(out))).encode("ascii")
        return pseudonym
    return _null
