"""PostgreSQL's parse tree of a statement text, parsed once for the policy and masking both.

The guard classifies a statement and result masking then traces its lineage from the same
text, moments apart. Each reads the tree pglast gives as JSON and neither changes it, so the
last few texts' trees are kept: the second reader finds the tree the first one parsed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pglast import parser

# Texts whose trees are kept. A few are enough (the readers of a text follow each other), and
# a few huge statements cannot hold much memory.
_KEPT = 8


@lru_cache(maxsize=_KEPT)
def parse_tree(sql: str) -> dict[str, Any]:
    """The tree of `sql`; pglast's ParseError if it does not parse. Callers must not change it."""
    return json.loads(parser.parse_sql_json(sql))  # type: ignore[no-any-return]
