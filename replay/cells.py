"""Result cells as text, the way psql would print them.

A recorded cell is the bytes the client received: text-format cells are the text, in the
session's client encoding (UTF-8 by far the most often, and what this reader assumes);
binary-format cells are PostgreSQL's binary send format, decoded here for the common types
and shown as `\\x` hex (as psql shows bytea) for the rest. A clipped cell shows its head and
its size.
"""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Callable
from typing import Any

from replay.transcript import text_of

# Type OIDs psql right-aligns: the numeric types.
NUMERIC_TYPES = frozenset({20, 21, 23, 26, 700, 701, 790, 1700})

_BINARY: dict[int, Callable[[bytes], str]] = {
    16: lambda data: "t" if data == b"\x01" else "f",
    20: lambda data: str(struct.unpack(">q", data)[0]),
    21: lambda data: str(struct.unpack(">h", data)[0]),
    23: lambda data: str(struct.unpack(">i", data)[0]),
    26: lambda data: str(struct.unpack(">I", data)[0]),
    700: lambda data: repr(struct.unpack(">f", data)[0]),
    701: lambda data: repr(struct.unpack(">d", data)[0]),
    2950: lambda data: str(uuid.UUID(bytes=data)),
    3802: lambda data: data[1:].decode(),  # jsonb: a version byte, then the text
}
_TEXT_TYPES = frozenset({18, 19, 25, 114, 142, 1042, 1043})

# What a terminal acts on rather than shows (C0 and C1 controls, DEL: escape sequences, carriage
# returns, line breaks), and the marks that reorder or hide text (bidirectional overrides and
# isolates, zero-width characters, line and paragraph separators). Tabs are kept.
_HIDDEN = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def cell_text(value: Any, type_oid: int = 25, fmt: int = 0) -> str | None:
    """The cell as psql shows it; None for SQL NULL."""
    if value is None:
        return None
    if isinstance(value, dict):  # clipped: its head, and its size
        head = value.get("head")
        shown = cell_text(head, type_oid, fmt) if isinstance(head, bytes) and fmt == 0 else _hex(head or b"")
        return text_of({"truncated": value.get("truncated"), "head": shown})
    if not isinstance(value, bytes):
        return str(value)
    if fmt == 0 or type_oid in _TEXT_TYPES:
        return value.decode(errors="replace")
    decode = _BINARY.get(type_oid)
    if decode is not None:
        try:
            return decode(value)
        except (struct.error, ValueError):
            pass
    return _hex(value)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return {10: "\\n", 13: "\\r"}.get(code) or (f"\\x{code:02X}" if code < 0x80 else f"\\u{code:04X}")


def printable(text: str) -> str:
    """`text` as one line with nothing a terminal would act on: control and invisible characters
    shown as escapes (`\\x1B`, `\\r`, `\\n`, `\\u202E`), as psql shows control characters in a cell.

    Everything the log holds came from a client, the database or the log's own bytes: printed
    raw, an escape sequence could clear the screen or rewrite what came before, a hyperlink
    could hide its target, and a line break could forge a line of the transcript.
    """
    return _HIDDEN.sub(_escape, text)


def _hex(value: Any) -> str:
    return "\\x" + value.hex() if isinstance(value, bytes) else str(value)


def parameter_text(value: Any) -> str:
    """A Bind parameter as recorded: text as text, binary as hex, NULL as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return _hex(value)
    return text_of(value)


def grid(columns: list[tuple[str, int, int]], rows: list[list[Any]]) -> list[list[str | None]]:
    """Every row's cells as text, typed by the result's columns (text when there are none)."""
    return [[cell_text(value, *(columns[index][1:] if index < len(columns) else (25, 0)))
             for index, value in enumerate(row)] for row in rows]
