"""Client encodings a strict session may use: those in which the server can send every value.

PostgreSQL converts each row from the server's encoding to the client's as it sends it, and fails
(`character with byte sequence … has no equivalent in encoding "LATIN1"`) on a character the client's
cannot represent, for a hidden column's value as much as for any: whether a row comes or the error
does tells that the value holds such a character. The conversion never fails into UTF8, and does not
happen at all where either side is SQL_ASCII or both are the same.
"""

from __future__ import annotations

import re

# Names as PostgreSQL compares them (encnames.c, clean_encoding_name: letters and digits, lower case).
_LOSSLESS = frozenset({"utf8", "unicode", "sqlascii"})
# Every name PostgreSQL accepts for an encoding (encnames.c, pg_encname_tbl).
ENCODING_NAMES = _LOSSLESS | frozenset({
    "abc", "alt", "big5", "euccn", "eucjis2004", "eucjp", "euckr", "euctw", "gb18030", "gbk", "johab",
    "koi8", "koi8r", "koi8u", "mskanji", "muleinternal", "shiftjis", "shiftjis2004", "sjis", "tcvn",
    "tcvn5712", "uhc", "vscii", "win", "win866", "win874", "win932", "win936", "win949", "win950",
    "windows866", "windows874", "windows932", "windows936", "windows949", "windows950",
    *(f"iso8859{n}" for n in range(1, 17)), *(f"latin{n}" for n in range(1, 11)),
    *(f"win{n}" for n in range(1250, 1259)), *(f"windows{n}" for n in range(1250, 1259)),
})


def cleaned(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def lossless(client: str, server: str | None) -> bool:
    """Whether the server can send any value in the `client` encoding (`server`: its own, None if unknown)."""
    name = cleaned(client)
    return name in _LOSSLESS or (server is not None and cleaned(server) in (name, "sqlascii"))
