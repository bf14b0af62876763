"""PostgreSQL's parse tree of a statement text, parsed once for the policy and masking both.

The guard classifies a statement and result masking then traces its lineage from the same
text, moments apart. Each reads the tree pglast gives as JSON and neither changes it, so the
trees of the last few texts are kept: the second reader finds the tree the first one parsed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pglast import parser

# Texts whose trees are kept: a few are enough, since the readers of a text follow each other.
_KEPT = 8
# Longer texts are parsed for each reader, and have no shape: a few huge statements must not stay in memory.
LONGEST_KEPT = 64 * 1024


def parse_tree(sql: str) -> dict[str, Any]:
    """The tree of `sql`; pglast's ParseError if it does not parse. Callers must not change it."""
    return _parse(sql) if len(sql) > LONGEST_KEPT else _kept(sql)


def parse_json(sql: str) -> str:
    """The tree of `sql` as pglast's JSON; pglast's ParseError if it does not parse. A statement's
    shape (shapes.py) is read off it first, and a text not shared by shape is then decoded from it."""
    return parser.parse_sql_json(sql) if len(sql) > LONGEST_KEPT else _kept_json(sql)


def _parse(sql: str) -> dict[str, Any]:
    return json.loads(parse_json(sql))  # type: ignore[no-any-return]


_kept = lru_cache(maxsize=_KEPT)(_parse)
_kept_json = lru_cache(maxsize=_KEPT)(parser.parse_sql_json)
