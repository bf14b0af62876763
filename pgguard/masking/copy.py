"""COPY ... TO STDOUT, masked column by column, in text, CSV and binary formats.

A COPY's rows come as CopyData, in a format its options chose, with no
RowDescription: the statement's lineage says which column is which, and the
catalog gives a table column's type where lineage shows the value unchanged
(a cast, or a column read through a view, leaves its type unknown). A hidden
column's values get the column's masking function where the type is known
and the function's result is valid for it, and NULL otherwise; the session's
content detectors run over the other columns, as over DataRows.

Sans I/O. `copy_plan` reads the statement's options when it is seen and
refuses (MaskingRefused) what the masker could not read back exactly;
`copy_masker` builds, from the server's CopyOutResponse, a `CopyMasker` that
rewrites each CopyData. A row may arrive split across messages, or several
in one: the masker keeps the unfinished end of a message for the next, so
memory holds at most one row (up to MAX_ROW), however many rows the COPY
has. A row that is unchanged goes out as the very bytes the server sent.
Data that does not parse as the options say (which PostgreSQL never sends)
raises CopyUnreadable: the relay then ends the session rather than forward
anything of it.

Text and CSV are parsed byte by byte, which is exact in every server
encoding and in the client encodings that keep ASCII bytes for ASCII. Client
encodings such as SJIS or BIG5 put bytes like `\\` (0x5C) inside multibyte
characters, where they are not escapes; a COPY in one of them is refused. A
client_encoding changed earlier in the same cycle (`SET client_encoding ...;
COPY ...`) is reported only after the COPY ran, so such a COPY is read in
the one way that is exact whatever the encoding: rows that are all ASCII as
they are, other rows with every field NULL.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

from pgguard.masking.detectors import Scrubber
from pgguard.masking.functions import ValueMask, column_mask
from pgguard.masking.lineage import Lineage, SourceColumn
from pgguard.masking.plan import NULLIFY, Clearance, MaskingRefused, ResultPlan, as_shown, detector_mask
from pgguard.masking.readings import is_text, spelled_out
from pgguard.masking.values import BINARY_FORMAT, TEXT_FORMAT
from pgguard.wire.backend import CopyOutResponse

Node = dict[str, Any]

# The longest row carried from one CopyData to the next: PostgreSQL's own
# limit on a row's text (1 GiB), which no real row comes near.
MAX_ROW = 1 << 30

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_BINARY_HEADER = len(_BINARY_SIGNATURE) + 8  # signature, flags, extension length
_NULL_FIELD = b"\xff\xff\xff\xff"
_TRAILER = b"\xff\xff"

# Encodings that keep every ASCII byte for ASCII (all server encodings), as
# PostgreSQL's clean_encoding_name spells them and their aliases. The client
# encodings missing here (SJIS, BIG5, GBK, UHC, GB18030, JOHAB) do not.
_ASCII_SAFE = re.compile(
    r"utf8|unicode|sqlascii|latin(10|[1-9])|iso8859(1[0-6]|[1-9])|(win|windows)(125[0-8]|866|874)|win|alt"
    r"|koi8[ru]?|euc(cn|jp|kr|tw|jis2004)|muleinternal|abc|tcvn(5712)?|vscii")
# The options COPY ... TO takes (FREEZE, FORCE_NOT_NULL and the like are COPY FROM's).
_OPTIONS = ("format", "delimiter", "null", "quote", "escape", "header", "force_quote", "encoding")


class CopyUnreadable(Exception):
    """COPY data that does not parse as its options say: forwarding any of it could pass a value unmasked."""


def ascii_safe(encoding: str) -> bool:
    """Whether an encoding (any spelling PostgreSQL accepts) writes ASCII bytes only for ASCII characters."""
    return _ASCII_SAFE.fullmatch(re.sub(r"[^a-z0-9]", "", encoding.lower())) is not None


@dataclass(frozen=True)
class CopyOptions:
    """How a COPY writes its rows, with PostgreSQL's defaults for each format."""

    format: str = "text"
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'
    header: bool = False
    encoding: str | None = None  # the ENCODING option; None: the session's client_encoding
    # FORCE_QUOTE: True for `*`, or the names of the columns whose values it quotes.
    force_quote: bool | tuple[str, ...] = ()

    @classmethod
    def parse(cls, options: list[Node]) -> CopyOptions:
        """The options of a CopyStmt (pglast's DefElems); MaskingRefused for any it cannot read data under."""
        given: dict[str, Any] = {}
        for option in options:
            element = option["DefElem"]
            name = element["defname"]
            if name not in _OPTIONS:
                raise MaskingRefused(f"COPY option {name.upper()} is not supported for columns this session"
                                     " may not see unmasked")
            given[name] = _argument(element.get("arg"), name)
        kind = str(given.get("format", "text")).lower()
        if kind not in ("text", "csv", "binary"):
            raise MaskingRefused(f"COPY format {kind} is not supported")
        csv = kind == "csv"
        quote = _byte(given.get("quote", '"'), "QUOTE")
        return cls(
            format=kind,
            delimiter=_byte(given.get("delimiter", "," if csv else "\t"), "DELIMITER"),
            null=str(given.get("null", "" if csv else "\\N")).encode("utf-8"),
            quote=quote,
            escape=_byte(given["escape"], "ESCAPE") if "escape" in given else quote,
            header=_boolean(given.get("header", False)),
            encoding=str(given["encoding"]) if "encoding" in given else None,
            force_quote=_names(given["force_quote"]) if "force_quote" in given else (),
        )


def _argument(arg: Node | None, name: str) -> Any:
    """A DefElem's value: a string, a number, a boolean, a list of names, or `*` (FORCE_QUOTE *)."""
    if arg is None:
        return True  # HEADER, FORCE_QUOTE with no value
    (kind, value), = arg.items()
    if kind == "String":
        return value["sval"]
    if kind == "Integer":
        return value.get("ival", 0)
    if kind == "Boolean":
        return value.get("boolval", False)
    if kind in ("List", "A_Star"):
        return value
    raise MaskingRefused(f"COPY option {name.upper()} has a value pgguard cannot read")


def _names(value: Any) -> bool | tuple[str, ...]:
    """FORCE_QUOTE's columns: their names, or True for `*`."""
    if isinstance(value, dict) and "items" in value:
        return tuple(item.get("String", {}).get("sval", "") for item in value["items"])
    return True


def _byte(value: Any, name: str) -> bytes:
    encoded = str(value).encode("utf-8")
    if len(encoded) != 1:
        raise MaskingRefused(f"COPY {name} must be a single one-byte character")
    return encoded


def _boolean(value: Any) -> bool:
    """As PostgreSQL's defGetBoolean reads it (HEADER MATCH is for COPY FROM only)."""
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    text = str(value).lower()
    if text in ("true", "on", "false", "off"):
        return text in ("true", "on")
    raise MaskingRefused(f"COPY HEADER {value} is not supported")


@dataclass(frozen=True)
class CopyPlan(ResultPlan):
    """A COPY ... TO STDOUT's plan: its columns' masks, and how its data is written."""

    options: CopyOptions = CopyOptions()
    # Per output column, the type OID where the value is a table column's, unchanged.
    types: tuple[int | None, ...] | None = None
    # The output columns' names, by which FORCE_QUOTE names them.
    names: tuple[str, ...] | None = None


def copy_plan(lineage: Lineage, result: ResultPlan, column_type: Callable[[SourceColumn], int | None],
              client_encoding: str | None) -> ResultPlan:
    """The plan of a COPY; MaskingRefused for one whose hidden columns could not be masked.

    `lineage.copy` is the CopyStmt; `client_encoding` the session's as last
    reported (None: not known).
    """
    statement = lineage.copy or {}
    if statement.get("is_from") or "filename" in statement:
        if result.hides_anything:
            raise MaskingRefused("COPY FROM, or to a file or a program, of columns this session may not see"
                                 " unmasked is not supported; COPY ... TO STDOUT masks them")
        return result
    options = CopyOptions.parse(statement.get("options", []))
    if options.format != "binary":
        encoding = options.encoding or client_encoding
        if encoding is not None and not ascii_safe(encoding):
            raise MaskingRefused(f"COPY in {options.format} format in encoding {encoding} is not supported;"
                                 " use UTF8, or FORMAT binary")
    if options.format == "text" and result.hides_anything and _could_be_a_value(options.null, options.delimiter):
        # A value printed as the NULL string reads as NULL: NULL 'guess' would tell which hidden values equal it.
        raise MaskingRefused("COPY with a NULL string that a value could be printed as is not supported for"
                             " columns this session may not see unmasked; keep the default \\N")
    types = None if lineage.columns is None else tuple(
        column_type(next(iter(column.sources))) if column.direct and len(column.sources) == 1 else None
        for column in lineage.columns)
    inherited = {f.name: getattr(result, f.name) for f in fields(ResultPlan)}
    names = None if lineage.columns is None else tuple(column.name for column in lineage.columns)
    return CopyPlan(**inherited, options=options, types=types, names=names)


def _could_be_a_value(null: bytes, delimiter: bytes) -> bool:
    """Whether text format could print some value as `null`: every backslash an escape it writes, no raw
    delimiter or escaped control character."""
    escaped = b"\\bfnrtv" + delimiter
    index = 0
    while index < len(null):
        byte = null[index:index + 1]
        if byte == b"\\":
            if null[index + 1:index + 2] == b"" or null[index + 1:index + 2] not in escaped:
                return False
            index += 2
            continue
        if byte == delimiter or byte in b"\b\f\n\r\t\v":
            return False
        index += 1
    return True


def copy_masker(planned: ResultPlan, response: CopyOutResponse, clearance: Clearance,
                client_encoding: str | None) -> CopyMasker | None:
    """The masker for a COPY's data, once the server said how many columns it has; None if nothing to mask.

    `client_encoding` is the encoding the data is written in, if it is
    certain (None: it may have changed since it was last reported).
    """
    if not isinstance(planned, CopyPlan):
        # Rows of a statement pgguard lost track of (not a COPY as far as it knows): nothing is known of them.
        raise CopyUnreadable("COPY data of a statement pgguard did not follow")
    options = planned.options
    width = len(response.column_formats)
    binary = options.format == "binary"
    if binary != (response.overall_format == BINARY_FORMAT):
        raise CopyUnreadable("the server's COPY format is not the one its options asked for")
    masks = _masks(planned, width, binary, clearance)
    if not any(mask is not None for mask in masks):
        return None
    if binary:
        return BinaryMasker(masks)
    encoding = options.encoding or client_encoding
    exact = encoding is not None and ascii_safe(encoding)
    if options.format == "csv":
        return CsvMasker(masks, options, exact, _forced(options.force_quote, planned.names, width))
    return TextMasker(masks, options, exact)


def _masks(planned: CopyPlan, width: int, binary: bool, clearance: Clearance) -> list[ValueMask | None]:
    """One mask per column, as row_masker builds them for DataRows, with the catalog's types for RowDescription's."""
    columns = planned.columns
    if planned.hide_all:
        columns = tuple(NULLIFY for _ in range(width))
    elif columns is not None and len(columns) != width:
        columns = tuple(NULLIFY for _ in range(width))  # lineage's shape is not the server's: hide every column
    types = planned.types if planned.types is not None and len(planned.types) == width else (None,) * width
    scrubber = planned.scrubber(clearance)
    fmt = BINARY_FORMAT if binary else TEXT_FORMAT
    masks: list[ValueMask | None] = []
    for index in range(width):
        spec = as_shown(columns[index]) if columns is not None else None
        type_oid = types[index]
        if spec is not None:
            # Type 0 (unknown) is no type a function has a value for: NULL.
            masks.append(column_mask(spec, type_oid or 0, fmt, clearance.rules.key))
        elif scrubber is None:
            masks.append(None)
        elif type_oid is None and not binary:
            # Text forms of unknown type are scrubbed in place, as they read:
            # a `*` in text, an array or a record keeps it one.
            masks.append(partial(scrub_copy_text, scrubber))
        else:
            masks.append(detector_mask(scrubber, type_oid, fmt))
    return masks


def _forced(force_quote: bool | tuple[str, ...], names: tuple[str, ...] | None, width: int) -> frozenset[int]:
    """The positions FORCE_QUOTE quotes; all of them where it names columns pgguard cannot place."""
    if force_quote is True or (force_quote and (names is None or len(names) != width)):
        return frozenset(range(width))
    return frozenset(index for index, name in enumerate(names or ()) if name in force_quote)


# bytea in text form: `\x` and hex digits.
_HEX_BYTEA = re.compile(rb"\\x((?:[0-9a-f]{2})+)")


def scrub_copy_text(scrubber: Scrubber, data: bytes) -> bytes | None:
    """A text value with detectors applied to it, and to the text that bytea's hex in it stands for;
    NULL if they find more in its numbers spelled out (a card cast to float8 or money:
    4.111111111111111e+15, $4,111,111,111,111,111.00).

    Hex is scrubbed only as what it decodes to: a run of its digits can look
    like a card number, and masking that would break the hex.
    """
    hexes = list(_HEX_BYTEA.finditer(data)) if b"\\x" in data else []
    out = _scrub_around_hex(scrubber, data, hexes)
    plain = _HEX_BYTEA.sub(b" ", data) if hexes else data
    spelled = spelled_out(plain)
    # Spelled out before the scrub, it must be what the scrubbed value is spelled out: nothing more to mask.
    if spelled is not plain and scrubber.scrub_bytes(spelled) != spelled_out(_HEX_BYTEA.sub(b" ", out)):
        return None
    return out


def _scrub_around_hex(scrubber: Scrubber, data: bytes, hexes: list[re.Match[bytes]]) -> bytes:
    if not hexes:
        return scrubber.scrub_bytes(data)
    parts = []
    end = 0
    for match in hexes:
        parts.append(scrubber.scrub_bytes(data[end:match.start()]))
        raw = bytes.fromhex(match.group(1).decode("ascii"))
        scrubbed = scrubber.scrub_bytes(raw) if is_text(raw) else raw
        parts.append(match.group() if scrubbed is raw else b"\\x" + scrubbed.hex().encode("ascii"))
        end = match.end()
    parts.append(scrubber.scrub_bytes(data[end:]))
    out = b"".join(parts)
    return data if out == data else out


class CopyMasker:
    """Rewrites one COPY's CopyData messages, row by row, carrying an unfinished row to the next message."""

    def __init__(self, masks: list[ValueMask | None]) -> None:
        self.width = len(masks)
        self.masks = [(index, mask) for index, mask in enumerate(masks) if mask is not None]
        self._pending = b""

    def copy_data(self, message: bytes) -> bytes:
        """A CopyData message (tag and length included) as the client may see it; b"" while a row is unfinished."""
        data = message[5:]
        if self._pending:
            data = self._pending + data
        out, used = self.rows(data)
        self._pending = data[used:]
        if len(self._pending) > MAX_ROW:
            raise CopyUnreadable(f"a COPY row longer than {MAX_ROW} bytes")
        return b"d" + _INT32.pack(len(out) + 4) + out if out else b""

    def done(self) -> None:
        """CopyDone: the data must end with a whole row."""
        if self._pending:
            raise CopyUnreadable("the COPY data ended inside a row")

    def rows(self, data: bytes) -> tuple[bytes, int]:
        """The complete rows at the start of `data`, masked, and how many bytes of `data` they took."""
        raise NotImplementedError


class _DelimitedMasker(CopyMasker):
    """Text and CSV: fields between delimiters, a row to a line (CSV's quoted newlines aside), NULL as a string.

    Where the encoding is not certain (`exact` false), a row that is not
    all ASCII could be split wrongly: it becomes NULL in every field.
    """

    def __init__(self, masks: list[ValueMask | None], options: CopyOptions, exact: bool) -> None:
        super().__init__(masks)
        self.delimiter = options.delimiter
        self.null = options.null
        self.header = options.header
        self.exact = exact
        self.nulls = options.delimiter.join([options.null] * self.width) + b"\n"

    def masked(self, fields: list[bytes]) -> bytes | None:
        """The row of these fields with its values masked, newline ended; None if no value changed."""
        if len(fields) != self.width:
            raise CopyUnreadable(f"a COPY row of {len(fields)} fields, not {self.width}")
        changed = False
        for index, mask in self.masks:
            raw = fields[index]
            if raw == self.null:
                continue
            value = self.decode(raw)
            masked = mask(value)
            if masked is value:
                continue
            fields[index] = self.null if masked is None else self.encode(masked, index)
            changed = True
        return self.delimiter.join(fields) + b"\n" if changed else None

    def decode(self, raw: bytes) -> bytes:
        """A field's value as written (escaped, quoted), as a client reads it."""
        raise NotImplementedError

    def encode(self, value: bytes, index: int) -> bytes:
        """A masked value, written for the field at position `index`."""
        raise NotImplementedError


class TextMasker(_DelimitedMasker):
    """FORMAT text: rows end at each newline, fields at each delimiter that no backslash escapes."""

    def __init__(self, masks: list[ValueMask | None], options: CopyOptions, exact: bool) -> None:
        super().__init__(masks, options, exact)
        # What CopyAttributeOutText escapes: backslash, the delimiter, and six control characters by letter.
        self.escapes = {bytes([c]): b"\\" + bytes([c]) for c in (*b"\\", *options.delimiter)}
        self.escapes.update({b"\b": b"\\b", b"\f": b"\\f", b"\n": b"\\n", b"\r": b"\\r", b"\t": b"\\t",
                             b"\v": b"\\v"})
        self.special = re.compile(b"[" + re.escape(b"".join(self.escapes)) + b"]")

    def rows(self, data: bytes) -> tuple[bytes, int]:
        end = data.rfind(b"\n") + 1
        if not end:
            return b"", 0
        lines = data[:end].split(b"\n")
        lines.pop()
        if self.header:
            self.header = False
            out = [lines.pop(0) + b"\n"]
        else:
            out = []
        out.extend(self.row(line) for line in lines)
        return b"".join(out), end

    def row(self, line: bytes) -> bytes:
        if not self.exact and not line.isascii():
            return self.nulls
        return self.masked(text_fields(line, self.delimiter)) or line + b"\n"

    def decode(self, raw: bytes) -> bytes:
        return unescape_text(raw)

    def encode(self, value: bytes, index: int) -> bytes:
        return self.special.sub(self._escape, value)

    def _escape(self, match: re.Match[bytes]) -> bytes:
        return self.escapes[match.group()]


def text_fields(line: bytes, delimiter: bytes) -> list[bytes]:
    """A text-format row's fields, still escaped: a delimiter after an odd run of backslashes is escaped."""
    parts = line.split(delimiter)
    if b"\\" not in line:
        return parts
    fields = []
    carried: bytes | None = None
    for part in parts:
        piece = part if carried is None else carried + delimiter + part
        if (len(piece) - len(piece.rstrip(b"\\"))) % 2:
            carried = piece
        else:
            fields.append(piece)
            carried = None
    if carried is not None:
        raise CopyUnreadable("a COPY row ends in a backslash")
    return fields


_TEXT_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_CONTROLS = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def unescape_text(raw: bytes) -> bytes:
    """A text-format field's value, as COPY FROM reads it: octal, hex, control letters, or the character itself."""
    if b"\\" not in raw:
        return raw
    return _TEXT_ESCAPE.sub(_unescaped, raw)


def _unescaped(match: re.Match[bytes]) -> bytes:
    octal, hexadecimal, char = match.groups()
    if octal:
        return bytes([int(octal, 8) & 0xFF])
    if hexadecimal:
        return bytes([int(hexadecimal, 16)])
    return _CONTROLS.get(char, char)


class CsvMasker(_DelimitedMasker):
    """FORMAT csv: a field is quoted or not; a quoted one may hold delimiters, quotes (escaped) and newlines."""

    def __init__(self, masks: list[ValueMask | None], options: CopyOptions, exact: bool,
                 forced: frozenset[int] = frozenset()) -> None:
        super().__init__(masks, options, exact)
        self.forced = forced
        quote, escape, delimiter = options.quote, options.escape, options.delimiter
        if not exact and max(quote[0], escape[0]) >= 0x30:
            # Where the encoding is uncertain, rows can be told apart only
            # with quotes below every multibyte encoding's trailing bytes.
            raise CopyUnreadable("CSV with a QUOTE or ESCAPE of 0x30 or above in an uncertain client_encoding")
        self.quote, self.escape = quote, escape
        q, e, d = (re.escape(c) for c in (quote, escape, delimiter))
        inner = rb"(?:[^" + q + rb"]|" + q + q + rb")*+" if quote == escape else \
            rb"(?:[^" + q + e + rb"]|" + e + rb"[" + q + e + rb"]|" + e + rb")*+"
        # One field and what ends it; no match: the row is not complete yet.
        self.field = re.compile(rb"(" + q + inner + q + rb"|[^" + d + q + rb"\r\n]*)(" + d + rb"|\n)")
        self.escaped = re.compile(e + rb"([" + q + e + rb"])")
        self.needs_quotes = re.compile(rb"[" + d + q + rb"\r\n]")
        self.to_escape = re.compile(rb"[" + q + e + rb"]")

    def rows(self, data: bytes) -> tuple[bytes, int]:
        out = []
        start = position = 0
        fields: list[bytes] = []
        while True:
            match = self.field.match(data, position)
            if match is None:
                break
            fields.append(match.group(1))
            position = match.end()
            if match.group(2) == b"\n":
                out.append(self.row(data[start:position], fields))
                start, fields = position, []
        return b"".join(out), start

    def row(self, record: bytes, fields: list[bytes]) -> bytes:
        if self.header:
            self.header = False
            return record
        if not self.exact and not record.isascii():
            return self.nulls
        return self.masked(fields) or record

    def decode(self, raw: bytes) -> bytes:
        if raw[:1] != self.quote:
            return raw
        inner = raw[1:-1]
        if self.quote == self.escape:
            return inner.replace(self.quote + self.quote, self.quote)
        return self.escaped.sub(rb"\1", inner)

    def encode(self, value: bytes, index: int) -> bytes:
        """As CopyAttributeOutCSV writes it: quoted where FORCE_QUOTE says or as it needs.

        Never quoted as the value it replaces was: the server quotes a value
        that equals the NULL string, which would tell which hidden values
        equal it (`NULL '444-07-2101'`).
        """
        if index in self.forced or value == self.null or self.needs_quotes.search(value) or \
                (self.width == 1 and value == b"\\."):
            return self.quote + self.to_escape.sub(lambda m: self.escape + m.group(), value) + self.quote
        return value


class BinaryMasker(CopyMasker):
    """FORMAT binary: a header, then per row a field count and each field's length and bytes; -1 ends it."""

    def __init__(self, masks: list[ValueMask | None]) -> None:
        super().__init__(masks)
        self.started = False
        self.ended = False

    def rows(self, data: bytes) -> tuple[bytes, int]:
        position = 0
        out = []
        if not self.started:
            if len(data) < _BINARY_HEADER:
                return b"", 0
            if not data.startswith(_BINARY_SIGNATURE):
                raise CopyUnreadable("COPY binary data without its signature")
            flags, extension = struct.unpack_from("!iI", data, len(_BINARY_SIGNATURE))
            if flags & 0x0001FFFF:  # OIDs, or a critical flag this reader does not know
                raise CopyUnreadable(f"COPY binary flags {flags:#x}")
            position = _BINARY_HEADER + extension
            if len(data) < position:
                return b"", 0
            out.append(data[:position])
            self.started = True
        while position + 2 <= len(data):
            if self.ended:
                raise CopyUnreadable("COPY binary data after its trailer")
            (count,) = _INT16.unpack_from(data, position)
            if count == -1:
                out.append(_TRAILER)
                position += 2
                self.ended = True
                continue
            if count != self.width:
                raise CopyUnreadable(f"a COPY row of {count} fields, not {self.width}")
            row = self.row(data, position)
            if row is None:
                break
            out.append(row[0])
            position = row[1]
        return b"".join(out), position

    def row(self, data: bytes, start: int) -> tuple[bytes, int] | None:
        """The row at `start`, masked, and where it ends; None if it is not all in `data`."""
        position = start + 2
        spans: list[tuple[int, int]] = []
        for _ in range(self.width):
            if position + 4 > len(data):
                return None
            (length,) = _INT32.unpack_from(data, position)
            position += 4
            spans.append((position, length))
            position += max(length, 0)
            if position > len(data):
                return None
        values: list[bytes | None] = [None if length < 0 else data[at:at + length] for at, length in spans]
        changed = False
        for index, mask in self.masks:
            value = values[index]
            if value is None:
                continue
            masked = mask(value)
            if masked is not value:
                values[index] = masked
                changed = True
        if not changed:
            return data[start:position], position
        parts = [data[start:start + 2]]
        for value in values:
            parts.append(_NULL_FIELD if value is None else _INT32.pack(len(value)) + value)
        return b"".join(parts), position
