"""Statement shapes: texts that differ only in their constants share one analysis.

pgbench, ORMs that inline their parameters and SQL agents send the same statement again and
again with new constants in it. Classifying it and tracing its lineage anew each time costs far
more than relaying it. A shape's key is pglast's JSON parse tree of the text with the contents of
every constant (`A_Const`) and every token position (`location`, `stmt_len`, …) erased, so two
texts share a key exactly when their trees are the same but for those. The key kept is a BLAKE2b
digest of that, so that caches hold 32 bytes per shape whatever the text's size.

Why a shared result is the right one: the analysis is run once per key on the *erased tree*,
where each erased value is an object that cannot be read. Comparing, iterating, indexing,
formatting or converting it raises `ConstantRead` (a BaseException, so that no `except Exception`
in an analysis can swallow it) and marks the tree as read. An analysis that completes with its
tree unread never depended on a constant or a position, so its result is the result for every
text of that shape. One that reads an erased value (`ORDER BY 2`, `set_config('search_path', …)`,
`nextval('s')`) or fails on the erased tree is not shared: each text is analysed on its own tree.
Walkers step over `A_Const` nodes without looking in, as they always could: a constant holds no
other node.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn, TypeVar

from pglast import parser

from pgguard.policy.tree import LONGEST_KEPT, parse_json

T = TypeVar("T")
Key = TypeVar("Key", str, bytes)  # what analyses are kept under: a statement text, or a shape's key
Node = dict[str, Any]

# A constant's value: {"ival":{"ival":5}}, {"ival":{}} (zero), {"sval":{"sval":"..."}}, {"isnull":true}…
_CONSTANT = re.compile(r'"A_Const":\{(?:"isnull":true|"\w+":\{(?:"\w+":(?:"(?:[^"\\]|\\.)*"|[^{}"]*))?\})')
_STMT_LOCATION = re.compile(r'"stmt_location":(\d+)')
_STMT_LEN = re.compile(r'"stmt_len":(\d+)')
# Fields that hold a byte offset into the text: zeroed in the key (so that whether one is there still
# counts), unreadable in the erased tree. PostgreSQL 18 marks where an IN list or an ARRAY[] starts and ends.
_POSITIONS = ("location", "stmt_location", "stmt_len", "list_start", "list_end", "rexpr_list_start", "rexpr_list_end")
# One pattern each, for what each is: a literal prefix lets the regex engine skip to it in C.
_ZEROED = tuple((f'"{name}":', re.compile(f'"{name}":-?[0-9]+'), f'"{name}":0') for name in _POSITIONS)


class ConstantRead(BaseException):
    """An analysis of an erased tree read an erased value: its result depends on the constants."""


@dataclass(frozen=True)
class Shape:
    key: bytes
    json: str  # the text's own parse tree, as pglast gives it

    def spans(self, count: int) -> list[tuple[int, int]]:
        """(byte offset, length or 0 for "to the end") of each of the text's `count` statements."""
        if count == 1:  # the common case, without decoding the tree
            location, length = _STMT_LOCATION.search(self.json), _STMT_LEN.search(self.json)
            return [(int(location[1]) if location else 0, int(length[1]) if length else 0)]
        return [(raw.get("stmt_location", 0), raw.get("stmt_len", 0)) for raw in json.loads(self.json)["stmts"]]

    def erased_tree(self) -> tuple[Node, _Reads]:
        """The tree with every constant's contents and every position unreadable, and what tells if they were read."""
        reads = _Reads()
        position = _ErasedValue(reads)

        def erase(node: Node) -> Node:
            if "A_Const" in node:
                node["A_Const"] = _ErasedConstant(reads)
            for key in _POSITIONS:
                if key in node:
                    node[key] = position
            return node

        return json.loads(self.json, object_hook=erase), reads


@lru_cache(maxsize=8)  # the policy, then masking, ask for the same text moments apart
def shape_of(sql: str) -> Shape | None:
    """The shape of `sql`; None if it does not parse (the caller's own parse says why) or is too long."""
    if len(sql) > LONGEST_KEPT:
        return None
    try:
        tree = parse_json(sql)
    except parser.ParseError:
        return None
    erased = _CONSTANT.sub('"A_Const":{', tree)
    for field, pattern, zero in _ZEROED:
        if field in erased:
            erased = pattern.sub(zero, erased)
    return Shape(hashlib.blake2b(erased.encode(), digest_size=32).digest(), tree)


def shared(shape: Shape, analyse: Callable[[Node], T]) -> T | None:
    """`analyse` of the shape's erased tree: the result for every text of the shape; None where it read
    an erased value or failed (each text is then analysed on its own)."""
    tree, reads = shape.erased_tree()
    try:
        result = analyse(tree)
    except (ConstantRead, Exception):
        return None
    return None if reads.touched else result


class _Reads:
    """Whether an erased value of one tree was read, even where the analysis caught what that raised."""

    touched = False


def _read(self: _ErasedValue | _ErasedConstant, *args: Any, **kwargs: Any) -> NoReturn:
    self.reads.touched = True
    raise ConstantRead


class _ErasedValue:
    """A position in the erased tree: any use of it but passing it along is a read."""

    __slots__ = ("reads",)

    def __init__(self, reads: _Reads) -> None:
        self.reads = reads

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __bool__ = _read  # type: ignore[assignment]
    __int__ = __index__ = __float__ = __str__ = __repr__ = __format__ = _read  # type: ignore[assignment]
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __neg__ = _read  # type: ignore[assignment]
    __len__ = __iter__ = __contains__ = __getitem__ = __getattr__ = _read  # type: ignore[assignment]


class _ErasedConstant(dict):  # type: ignore[type-arg]
    """A constant's contents in the erased tree: a dict, as the real contents are, that cannot be read.

    It holds one item, so that C code which looks at a dict's size first (the json encoder) still
    asks it for its items."""

    __slots__ = ("reads",)

    def __init__(self, reads: _Reads) -> None:
        super().__init__({"": None})
        self.reads = reads

    __getitem__ = get = __contains__ = __iter__ = __len__ = keys = values = items = _read  # type: ignore[assignment]
    __eq__ = __ne__ = __or__ = __ror__ = __repr__ = __str__ = __format__ = _read  # type: ignore[assignment]
    copy = __copy__ = __deepcopy__ = __reduce__ = __reduce_ex__ = _read  # type: ignore[assignment]
    setdefault = pop = popitem = update = __setitem__ = __delitem__ = _read  # type: ignore[assignment]
