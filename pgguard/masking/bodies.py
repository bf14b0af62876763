"""The SQL a user-defined function runs, read off its definition for lineage to follow.

A call to a function whose body reads a sensitive column returns values of
that column however the call is spelt, so masking lineage follows calls into
bodies. This module turns a function's definition (the CREATE FUNCTION text
PostgreSQL's pg_get_functiondef prints) into the parse trees of the
statements it runs:
- LANGUAGE sql: the statements of its body, a string or BEGIN ATOMIC, or the
  expression of RETURN;
- LANGUAGE plpgsql: every SQL statement and expression it holds (queries,
  conditions, assignments, defaults, cursors), whatever the control flow.

Where that cannot be told, `statements` is None: other languages, dynamic
SQL (EXECUTE, whose text is built at run time), a search_path of "$user" or
FROM CURRENT, a definition that does not parse. Lineage then takes the
function to read every sensitive column. Sans-IO and cached by
definition: a body is parsed once per process, not per call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pglast import parser

Node = dict[str, Any]

FOLLOWED_LANGUAGES = ("sql", "plpgsql")
# PL/pgSQL statements whose SQL is a string made at run time.
_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery"})
# How PL/pgSQL parses an expression's text (PostgreSQL's RawParseMode).
_STATEMENT, _EXPRESSION = 0, 2
_ASSIGNMENTS = (3, 4, 5)


@dataclass(frozen=True)
class Routine:
    """A user-defined function as the catalog has it."""

    name: str  # schema.name
    language: str
    returns_set: bool = False
    definition: str | None = None  # pg_get_functiondef's text, for the languages pgguard follows
    extension: str = ""  # the extension it belongs to (pgguard/policy/extensions.py), if any

    @property
    def extension_code(self) -> bool:
        """An extension's function in C (or PostgreSQL's internal ones): it computes from its arguments, in
        code pgguard cannot follow, which it trusts for the extensions the policy trusts."""
        return bool(self.extension) and self.language in ("c", "internal")


@dataclass(frozen=True)
class Body:
    # The statements it runs as (node kind, node); None when they cannot be told.
    statements: tuple[tuple[str, Node], ...] | None
    # Its own `SET search_path`, which names in the body resolve against; None: the caller's.
    search_path: tuple[str, ...] | None = None


_UNKNOWN = Body(None)


def body_of(routine: Routine) -> Body:
    if routine.language not in FOLLOWED_LANGUAGES or not routine.definition:
        return _UNKNOWN
    return _parse(routine.language, routine.definition)


@lru_cache(maxsize=4096)
def _parse(language: str, definition: str) -> Body:
    try:
        (raw,) = json.loads(parser.parse_sql_json(definition))["stmts"]
        create = raw["stmt"]["CreateFunctionStmt"]
        options = [option["DefElem"] for option in create.get("options", [])]
        search_path = _search_path([o.get("arg", {}) for o in options if o["defname"] == "set"])
        if language == "sql":
            source = next((o.get("arg") for o in options if o["defname"] == "as"), None)
            statements = _sql_body(create.get("sql_body"), source)
        else:
            statements = _plpgsql_body(definition)
    except (parser.ParseError, KeyError, ValueError):
        return _UNKNOWN
    if statements is None:
        return _UNKNOWN
    return Body(statements, search_path)


def _search_path(settings: list[Node]) -> tuple[str, ...] | None:
    """The function's own search_path, from its SET clauses; ValueError where it cannot be told."""
    path = None
    for setting in settings:
        found = setting.get("VariableSetStmt", {})
        if found.get("name") != "search_path":
            continue
        if found.get("kind") != "VAR_SET_VALUE":
            raise ValueError("SET search_path FROM CURRENT")
        path = tuple(arg["A_Const"]["sval"]["sval"] for arg in found.get("args", []))
        if "$user" in path:  # whose schema depends on who runs it
            raise ValueError('a search_path of "$user"')
    return path


def _sql_body(sql_body: Node | None, source: Node | None) -> tuple[tuple[str, Node], ...]:
    if sql_body is None:  # the body as a string (AS $$ ... $$)
        (text,) = source["List"]["items"]
        return _statements(text["String"]["sval"])
    if "ReturnStmt" in sql_body:  # RETURN expression: the value of a SELECT
        value = sql_body["ReturnStmt"].get("returnval", {})
        return (("SelectStmt", {"targetList": [{"ResTarget": {"val": value}}]}),)
    # BEGIN ATOMIC ... END: one list holding the statements.
    items = [item for block in sql_body["List"]["items"] for item in block.get("List", {}).get("items", [])]
    return tuple(next(iter(item.items())) for item in items)


def _plpgsql_body(definition: str) -> tuple[tuple[str, Node], ...] | None:
    """Every SQL statement and expression of a PL/pgSQL function; None if it runs dynamic SQL."""
    tree = json.loads(parser.parse_plpgsql_json(definition))
    found: list[tuple[str, Node]] = []

    def walk(node: Any) -> bool:
        if isinstance(node, list):
            return all(walk(item) for item in node)
        if not isinstance(node, dict):
            return True
        if _DYNAMIC & node.keys():
            return False
        expression = node.get("PLpgSQL_expr")
        if expression is not None:
            found.extend(_expression(expression.get("query", ""), expression.get("parseMode", _STATEMENT)))
        return all(walk(child) for child in node.values())

    return tuple(found) if walk(tree) else None


def _expression(text: str, mode: int) -> tuple[tuple[str, Node], ...]:
    """One PL/pgSQL expression's SQL as statements lineage reads."""
    if mode == _STATEMENT:
        return _statements(text)
    if mode in _ASSIGNMENTS:  # `target := expression`: the target's subscripts are expressions too
        target, value = _split_assignment(text)
        return _statements(f"SELECT {target}") + _statements(f"SELECT {value}")
    if mode == _EXPRESSION:  # a SELECT without its keyword: `x + 1`, `email FROM customers`
        return _statements(f"SELECT {text}")
    raise ValueError(f"PL/pgSQL parse mode {mode}")


def _split_assignment(text: str) -> tuple[str, str]:
    """`a[i].f := value` as its target and value, split at the first := or = outside brackets."""
    encoded = text.encode()
    depth = 0
    for token in parser.scan(text):
        if token.name in ("ASCII_40", "ASCII_91"):
            depth += 1
        elif token.name in ("ASCII_41", "ASCII_93"):
            depth -= 1
        elif depth == 0 and token.name in ("COLON_EQUALS", "ASCII_61"):
            return encoded[:token.start].decode(), encoded[token.end + 1:].decode()
    raise ValueError(f"not an assignment: {text!r}")


def _statements(sql: str) -> tuple[tuple[str, Node], ...]:
    tree = json.loads(parser.parse_sql_json(sql))
    return tuple(next(iter(raw["stmt"].items())) for raw in tree.get("stmts", []))
