"""Cells as psql prints them, from text and binary formats, clipped or NULL."""

from __future__ import annotations

import struct
import uuid

from replay.cells import cell_text, parameter_text


def test_text_cells_are_the_text() -> None:
    assert cell_text(b"caf\xc3\xa9", 25, 0) == "café" and cell_text(None) is None


def test_binary_cells_are_decoded_by_type() -> None:
    assert cell_text(struct.pack(">i", -7), 23, 1) == "-7"
    assert cell_text(struct.pack(">q", 2**40), 20, 1) == str(2**40)
    assert cell_text(b"\x01", 16, 1) == "t"
    assert cell_text(struct.pack(">d", 2.5), 701, 1) == "2.5"
    ident = uuid.uuid4()
    assert cell_text(ident.bytes, 2950, 1) == str(ident)
    assert cell_text(b"\x01{}", 3802, 1) == "{}"
    assert cell_text(b"\x00\xff", 17, 1) == "\\x00ff"  # bytea, and anything unknown: hex
    assert cell_text(b"\x00", 23, 1) == "\\x00"  # a malformed int4 is shown, not raised


def test_clipped_cells_show_their_head_and_size() -> None:
    assert cell_text({"truncated": 5000, "head": b"abc"}, 25, 0) == "abc… [5000 bytes in all]"
    assert cell_text({"truncated": 5000, "head": b"\x00\x01"}, 17, 1) == "\\x0001… [5000 bytes in all]"


def test_parameters() -> None:
    assert parameter_text(None) == "NULL" and parameter_text("x") == "x" and parameter_text(b"\x01") == "\\x01"
    assert parameter_text({"truncated": 9, "head": "ab"}) == "ab… [9 bytes in all]"
