"""A session as one self-contained HTML page, to attach to an incident ticket.

The page is rendered from the JSON document (`export.document`), so the two exports cannot
tell different stories. Everything is inline: the styles are in the page, and there are no
scripts, fonts or images, so it opens offline and leaks nothing to any server. Every value
from the log is escaped.
"""

from __future__ import annotations

from html import escape
from typing import Any

from replay.cells import NUMERIC_TYPES
from replay.render_text import duration, startup_text, timestamp

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1b1f23; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .4em 0; }
th, td { border: 1px solid #d0d7de; padding: 2px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; } td.null { color: #888; font-style: italic; }
pre { background: #f6f8fa; padding: .5em; white-space: pre-wrap; margin: .3em 0; }
.statement { margin: 1.2em 0; padding-left: .8em; border-left: 4px solid #aaa; }
.allowed { border-color: #2da44e; } .refused { border-color: #cf222e; } .held { border-color: #bf8700; }
.badge { font-weight: bold; padding: 0 .4em; border-radius: 3px; color: #fff; }
.badge.allowed { background: #2da44e; } .badge.refused { background: #cf222e; } .badge.held { background: #bf8700; }
.verdict { padding: .6em; border-radius: 4px; font-weight: bold; }
.verdict.intact, .verdict.live { background: #dafbe1; } .verdict.failed { background: #ffebe9; }
.verdict.incomplete, .verdict.not-verified { background: #fff8c5; }
.error { color: #cf222e; } .notice { color: #8250df; } .meta { color: #57606a; }
"""


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def _rows(result: dict[str, Any]) -> str:
    columns = result["columns"]
    if not columns:
        lines = "\n".join((row[0] or "").rstrip("\n") for row in result["rows"] if row)
        return f"<pre>{_text(lines)}</pre>" if lines else ""
    head = "".join(f"<th>{_text(column['name'])}</th>" for column in columns)
    body = []
    for row in result["rows"]:
        cells = []
        for index, value in enumerate(row):
            numeric = index < len(columns) and columns[index]["type_oid"] in NUMERIC_TYPES
            kind = "null" if value is None else "num" if numeric else ""
            cells.append(f"<td class='{kind}'>{'NULL' if value is None else _text(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    count = result["row_count"]
    note = f" — the log keeps the first {len(result['rows'])}" if result["rows_truncated"] else ""
    return (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<div class='meta'>({count} row{'' if count == 1 else 's'}){note}</div>")


def _result(result: dict[str, Any]) -> str:
    parts = [_rows(result)]
    if result["error"]:
        parts.append(f"<div class='error'>ERROR {_text(result['error']['sqlstate'])}: "
                     f"{_text(result['error']['message'])}</div>")
    parts.append(f"<div class='meta'>{_text(result['command_tag'] or ('failed' if result['error'] else 'done'))}"
                 f" · {result['duration_ms']:.1f} ms</div>")
    return "".join(parts)


def _approval(approval: dict[str, Any]) -> str:
    by = f" by <b>{_text(approval['by'])}</b>" if approval["by"] else ""
    reason = f" ({_text(approval['reason'])})" if approval["reason"] else ""
    return (f"<div class='approval'>{timestamp(approval['at'])} approval {_text(approval['request'])}: "
            f"<b>{_text(approval['event'].replace('_', ' '))}</b>{by}{reason}</div>")


def _notice(notice: dict[str, Any]) -> str:
    return (f"<div class='notice'>{_text(notice['severity'])} {_text(notice['sqlstate'])}: "
            f"{_text(notice['message'])}</div>")


def _statement(statement: dict[str, Any]) -> str:
    decision = statement["decision"]
    rule = (f" <span class='meta'>rule {_text(statement['rule'] or '-')}: {_text(statement['reason'])}</span>"
            if statement["rule"] or statement["reason"] else "")
    tables = ", ".join(statement["tables"] or ()) or "-"
    parameters = "".join(f"<div class='meta'>${index + 1} = {_text('NULL' if value is None else value)}</div>"
                         for index, value in enumerate(statement["parameters"] or []))
    return "".join([
        f"<div class='statement {_text(decision)}' id='s{statement['seq']}'>",
        f"<div>{timestamp(statement['at'])} · #{statement['seq']} · ",
        f"<span class='badge {_text(decision)}'>{_text(statement['outcome'].upper())}</span>{rule}</div>",
        f"<pre class='sql'>{_text(statement['sql'])}</pre>{parameters}",
        f"<div class='meta'>{_text(statement['protocol'])} · classes {_text(', '.join(statement['classes']) or '-')}"
        f" · tables {_text(tables)}</div>",
        *(_approval(approval) for approval in statement["approvals"]),
        *(_notice(notice) for notice in statement["notices"]),
        *(_result(result) for result in statement["results"]),
        "</div>",
    ])


def _facts(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_text(name)}</th><td>{_text(value)}</td></tr>" for name, value in rows) \
        + "</table>"


def render(document: dict[str, Any]) -> str:
    session = document["session"]
    identity = session["identity"]
    integrity = document["integrity"]
    counts = document["counts"]
    tls = session["tls"]
    close = session["close"]
    facts = _facts([
        ("user", session["user"]),
        ("subject", f"{identity.get('subject')} ({identity.get('provider')} token, issuer {identity.get('issuer')})"),
        ("token id", identity.get("jti") or "-"),
        ("groups", ", ".join(session["groups"]) or "-"),
        ("roles", ", ".join(session["roles"]) or "-"),
        ("target", session["target"]),
        ("client", session["client"]),
        ("application", session["application"] or "-"),
        ("TLS", f"{tls['version']} {tls['cipher']}" if tls else "none (plaintext)"),
        ("startup", startup_text(session["parameters"])),
        ("started", timestamp(session["started"])),
        ("last record", f"{timestamp(session['last_at'])} ({duration(session['last_at'] - session['started'])})"),
        ("ended", close["reason"] if close else "no close record"),
        ("gateway", session["gateway_version"]),
    ])
    timeline = "".join(
        f"<tr><td>{timestamp(statement['at'])}</td><td><a href='#s{statement['seq']}'>#{statement['seq']}</a></td>"
        f"<td><span class='badge {_text(statement['decision'])}'>{_text(statement['outcome'])}</span></td>"
        f"<td>{_text(statement['sql'][:120])}</td></tr>" for statement in document["statements"])
    problems = "".join(f"<li>{_text(problem['kind'])}: record {problem['index']} at byte {problem['offset']}: "
                       f"{_text(problem['detail'])}</li>" for problem in integrity["problems"])
    ending = document["ending"]
    endings = "".join(f"<p class='error'>{_text(label)}: {_text(ending[key])}</p>"
                      for key, label in (("torn", "torn tail"), ("damage", "damaged")) if ending[key])
    unattached = "".join(_result(event) if event["type"] == "result" else _notice(event)
                         if event["type"] == "notice" else _approval(event) for event in document["unattached"])
    verdict_class = integrity["verdict"].replace(" ", "-")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>pgguard session {_text(session['id'])}</title>
<style>{_STYLE}</style></head>
<body>
<h1>pgguard session {_text(session['id'])}</h1>
<div class="verdict {_text(verdict_class)}" id="integrity">Integrity: {_text(integrity['summary'])}</div>
<ul>{problems}</ul>
<h2>Identity</h2>{facts}
<h2>Timeline</h2>
<p>{counts['statements']} statements, {counts['refused']} refused, {counts['held']} held, {counts['errors']} errors.</p>
<table><thead><tr><th>time (UTC)</th><th>#</th><th>decision</th><th>statement</th></tr></thead>
<tbody>{timeline}</tbody></table>
<h2>Statements</h2>
{''.join(_statement(statement) for statement in document['statements'])}
{'<h2>Not tied to a statement</h2>' + unattached if unattached else ''}
{endings}
<p class="meta">Generated by pgguard-replay from {_text(session['file'])}.</p>
</body></html>
"""
