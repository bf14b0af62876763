"""Statements across every session: by table touched, SQL text or pattern, decision, and the
session filters `list` has.

Sessions are chosen from the catalog's summaries first, so only their logs are read. The
tables a statement touches come from pgguard's own classifier, which reads the SQL as the
policy did (so `customers`, `public.customers` and `"customers"` are one table, and a table
named only in a comment or a string is not touched); SQL it cannot parse, or that the log
clipped, is matched by the table's name as a word of the text instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pgguard.policy.classify import Unsupported, parse

from replay.catalog import Filters, Summary, summaries
from replay.transcript import Statement, load


@dataclass(frozen=True)
class Query:
    table: str | None = None
    text: str | None = None  # a substring, any case
    pattern: re.Pattern[str] | None = None
    decision: str | None = None  # allowed, refused, held, or an approval event (approved, denied...)


@dataclass(frozen=True)
class Hit:
    session: Summary
    statement: Statement
    tables: tuple[str, ...] | None  # None: the SQL could not be parsed


@functools.lru_cache(maxsize=4096)
def tables_of(sql: str) -> tuple[str, ...] | None:
    """The relations a statement reads or writes, as written (schema-qualified when it was);
    None when the classifier cannot parse it."""
    try:
        statements = parse(sql)
    except (Unsupported, RecursionError):
        return None
    names = set()
    for statement in statements:
        for inner in (statement, statement.inner):
            if inner is not None:
                names.update(str(name) for name in inner.reads | inner.writes.keys())
    return tuple(sorted(names))


def touches(statement: Statement, tables: tuple[str, ...] | None, wanted: str) -> bool:
    """Whether the statement touches `wanted`: `customers` matches any schema's customers,
    `public.customers` only an unqualified or public-qualified one."""
    schema, _, name = wanted.lower().rpartition(".")
    if tables is None or statement.sql.endswith(" bytes in all]"):  # unparsed or clipped: the text
        return re.search(rf"(?<![\w$]){re.escape(name)}(?![\w$])", statement.sql, re.IGNORECASE) is not None
    for table in tables:
        their_schema, _, their_name = table.lower().rpartition(".")
        if their_name == name and (not schema or not their_schema or their_schema == schema):
            return True
    return False


def _matches(statement: Statement, query: Query, filters: Filters) -> bool:
    if filters.since is not None and statement.at < filters.since:
        return False
    if filters.until is not None and statement.at > filters.until:
        return False
    if query.decision is not None and query.decision != statement.decision and query.decision not in {
            approval.event for approval in statement.approvals}:
        return False
    if query.text is not None and query.text.lower() not in statement.sql.lower():
        return False
    if query.pattern is not None and not query.pattern.search(statement.sql):
        return False
    return query.table is None or touches(statement, tables_of(statement.sql), query.table)


def search(directory: Path, filters: Filters, query: Query) -> Iterator[Hit]:
    for summary in summaries(directory):
        if not filters(summary):
            continue
        try:
            session = load(directory / summary.name)
        except (OSError, ValueError):  # removed since it was summarised
            continue
        for statement in session.statements:
            if _matches(statement, query, filters):
                yield Hit(summary, statement, tables_of(statement.sql))
