"""What masking needs to know about PostgreSQL values on the wire.

A DataRow carries each column's value as bytes in the format the client asked
for in Bind (0 text, 1 binary); RowDescription gives the column's type OID.
Masking looks at no more than this: the type OIDs whose values it can rewrite
(everything else becomes SQL NULL, which every type admits), and the one
encoding detail among them that differs between the formats, jsonb's version
byte.

Text-like types (text, varchar, bpchar, name, unknown) and json are the same
bytes in both formats: their binary send functions write the text as is.
Domains are reported by their base type, so a domain over text is text here;
a type whose OID is assigned at CREATE EXTENSION time is unknown and masked to
NULL, unless its I/O functions are text's (citext), which the catalog reads
(policy/catalog.py, `text_types`) and results.py treats as text.
"""

from __future__ import annotations

TEXT_FORMAT = 0
BINARY_FORMAT = 1

NAME = 19
TEXT = 25
UNKNOWN = 705
BPCHAR = 1042
VARCHAR = 1043
TEXT_TYPES = frozenset({TEXT, VARCHAR, BPCHAR, NAME, UNKNOWN})

JSON = 114
JSONB = 3802
JSON_TYPES = frozenset({JSON, JSONB})

INT2 = 21
INT4 = 23
INT8 = 20
# Bytes of each integer type's binary format (big-endian two's complement).
INT_WIDTHS = {INT2: 2, INT4: 4, INT8: 8}

UUID = 2950

BYTEA = 17
NUMERIC = 1700
FLOAT8 = 701
MONEY = 790
XID8 = 5069
# Arrays whose elements are text-like: their text form is an array literal in
# which a masked element (`*` is not special in one) is still an element.
TEXT_ARRAYS = frozenset({1009, 1015, 1014, 1003})
# Types that hold no free text, and whose numbers, if any, are too short to be
# a card number (int2, int4; float4 keeps 7 digits of one): content detectors
# skip them. int8, numeric, float8 (exact to 15 digits and more) and money are
# not among them.
NO_FREE_TEXT = frozenset({
    16,  # bool
    18,  # "char"
    21, 23, 26, 27, 28, 29,  # int2, int4, oid, tid, xid, cid
    700,  # float4
    1082, 1083, 1114, 1184, 1186, 1266,  # date, time, timestamp, timestamptz, interval, timetz
    UUID, 650, 869, 829, 774,  # uuid, cidr, inet, macaddr, macaddr8
    1560, 1562, 3220,  # bit, varbit, pg_lsn
    24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191,  # regproc … regcollation
})

# jsonb_send writes a version byte, then the JSON text; version 1 is the only
# one PostgreSQL has ever had.
JSONB_BINARY_HEADER = b"\x01"


def json_header(type_oid: int, fmt: int) -> bytes:
    """The bytes before the JSON text in a json/jsonb value in format `fmt`.

    Only jsonb's binary format has any; callers strip `len(header)` bytes to
    get the text and put the header back in front of what they send.
    """
    return JSONB_BINARY_HEADER if type_oid == JSONB and fmt == BINARY_FORMAT else b""
