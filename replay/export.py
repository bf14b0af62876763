"""A session as one JSON document: what `export --format json` prints, and what the HTML
report is rendered from.

Values are given as text, the way `show` prints them (cells decoded by their column's type,
binary values as `\\x` hex, NULL as null), since JSON has no bytes; the log itself stays the
record of the exact bytes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from replay.cells import grid, parameter_text
from replay.integrity import Verdict
from replay.search import tables_of
from replay.transcript import Result, Session, Statement, tally

DOCUMENT_FORMAT = "pgguard-replay session 1"


def _result(result: Result) -> dict[str, Any]:
    return {
        "at": result.at,
        "columns": [{"name": name, "type_oid": oid, "format": fmt} for name, oid, fmt in result.columns],
        "row_count": result.row_count,
        "rows": grid(result.columns, result.rows),
        "rows_truncated": result.rows_truncated or len(result.rows) < result.row_count,
        "command_tag": result.command_tag,
        "error": None if result.error is None else {"sqlstate": result.error[0], "message": result.error[1]},
        "duration_ms": result.duration_ms,
    }


def _statement(statement: Statement) -> dict[str, Any]:
    return {
        "seq": statement.seq,
        "at": statement.at,
        "protocol": statement.protocol,
        "sql": statement.sql,
        "parameters": None if statement.parameters is None else [
            None if value is None else parameter_text(value) for value in statement.parameters],
        "decision": statement.decision,
        "outcome": statement.outcome,
        "rule": statement.rule,
        "reason": statement.reason,
        "classes": statement.classes,
        "tables": tables_of(statement.sql),
        "approvals": [dataclasses.asdict(approval) for approval in statement.approvals],
        "notices": [dataclasses.asdict(notice) for notice in statement.notices],
        "results": [_result(result) for result in statement.results],
    }


def integrity(verdict: Verdict | None) -> dict[str, Any]:
    if verdict is None:
        return {"verified": False, "verdict": "not verified",
                "summary": "not verified: no public keys given (--jwks or -c)", "problems": []}
    return {"verified": True, "verdict": verdict.name, "summary": verdict.summary,
            "problems": [dataclasses.asdict(problem) for problem in verdict.problems]}


def document(session: Session, verdict: Verdict | None) -> dict[str, Any]:
    unattached = [{"type": type(event).__name__.lower(), **dataclasses.asdict(event)}
                  if not isinstance(event, Result) else {"type": "result", **_result(event)}
                  for _, event, owner in session.timeline if owner is None]
    return {
        "format": DOCUMENT_FORMAT,
        "session": {
            "id": session.id,
            "file": str(session.path),
            "user": session.user,
            "identity": session.identity,
            "groups": session.groups,
            "roles": session.roles,
            "target": session.target,
            "client": session.client,
            "application": session.application,
            "tls": session.tls,
            "parameters": session.parameters,
            "gateway_version": session.gateway_version,
            "started": session.started,
            "last_at": session.last_at,
            "state": session.state,
            "close": None if session.close is None else {
                key: session.close.get(key) for key in ("at", "reason", "bytes_in", "bytes_out", "counts")},
        },
        "counts": tally(session.statements),
        "integrity": integrity(verdict),
        "statements": [_statement(statement) for statement in session.statements],
        "unattached": unattached,
        "ending": {"torn": session.torn, "damage": session.damage},
    }
