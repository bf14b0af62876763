"""A session as text for the terminal: its identity, then each statement with its decision,
what came back and who approved it.

Everything is built as rich `Text`, never as markup, so that SQL and values print as recorded
(a `[red]` in a statement stays text), and every value from the log goes through `printable`,
so that no escape sequence or line break in it reaches the terminal (a `\x1b[2J` in a
statement shows as `\x1B[2J`). Colour comes from the console: rich colours a
terminal and writes plain text to a pipe or a file (and honours NO_COLOR).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TextIO

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from replay.cells import NUMERIC_TYPES, grid, parameter_text, printable
from replay.transcript import Approval, Notice, Result, Session, Statement, tally

DECISION_STYLES = {"allowed": "green", "refused": "bold red", "held": "bold yellow"}
APPROVAL_STYLES = {"approved": "green", "denied": "bold red", "timed_out": "red", "cancelled": "red",
                   "requested": "yellow"}


def console(file: TextIO | None = None) -> Console:
    """A console for `file` (stdout): colour on a terminal, plain text elsewhere, and no width
    limit when not a terminal, so that piped lines are never wrapped or cut."""
    out = file or sys.stdout
    terminal = out.isatty()
    return Console(file=out, markup=False, highlight=False, emoji=False, soft_wrap=True,
                   width=None if terminal else 10_000, force_terminal=None if terminal else False)


Cell = str | tuple[str, str]  # text, or (text, style)


def print_table(out: Console, headers: list[str], rows: list[list[Cell]], right: frozenset[str] = frozenset()) -> None:
    """Columns aligned under a header, two spaces apart; styled on a terminal, plain in a
    pipe. Laid out here rather than by rich's Table, which takes seconds over thousands of rows."""
    texts = [[printable(cell if isinstance(cell, str) else cell[0]) for cell in row] for row in rows]
    widths = [max([cell_len(header)] + [cell_len(row[i]) for row in texts]) for i, header in enumerate(headers)]
    aligned = [header in right for header in headers]

    def layout(cells: list[str]) -> list[str]:
        return [" " * (widths[i] - cell_len(cell)) + cell if aligned[i] else cell + " " * (widths[i] - cell_len(cell))
                for i, cell in enumerate(cells)]

    if not out.is_terminal:
        out.file.write("\n".join("  ".join(layout(cells)).rstrip() for cells in [headers] + texts) + "\n")
        return
    text = Text()
    text.append("  ".join(layout(headers)).rstrip() + "\n", style="bold")
    for row, cells in zip(rows, texts):
        for i, padded in enumerate(layout(cells)):
            text.append(padded, style=row[i][1] if isinstance(row[i], tuple) else "")
            text.append("  " if i < len(cells) - 1 else "\n")
    out.print(text, end="")


def timestamp(at: float, *, date: bool = True) -> str:
    """UTC, to the millisecond: the logs' times are UTC and so are the gateway's logs."""
    moment = datetime.fromtimestamp(at, UTC)
    text = moment.strftime("%Y-%m-%d %H:%M:%S." if date else "%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    return text + "Z" if date else text


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _cell_lines(row: list[str | None], index: int) -> list[str]:
    """A cell's lines; NULL, and a cell missing from a short row, are one empty line."""
    value = row[index] if index < len(row) else None
    return [""] if value is None else [printable(line) for line in value.split("\n")]


def psql_table(result: Result) -> list[str]:
    """The result's recorded rows laid out as psql's aligned format prints them: a centred
    header, numbers right-aligned, text left-aligned, NULL empty, a cell's further lines marked
    with `+`, and a row count. COPY data (no columns) is shown as the lines the client received."""
    cells = grid(result.columns, result.rows)
    if not result.columns:
        return [printable((row[0] or "").rstrip("\n")) for row in cells if row]
    names = [printable(str(column[0])) for column in result.columns]
    right = [column[1] in NUMERIC_TYPES for column in result.columns]
    split = [[_cell_lines(row, i) for i in range(len(names))] for row in cells]
    widths = [max([cell_len(name)] + [cell_len(part) for row in split for part in row[i]])
              for i, name in enumerate(names)]
    last = len(names) - 1

    def segment(i: int, value: str, more: bool) -> str:
        """One column of one line: a space, the value padded to the column, then `+` where
        the cell goes on to another line, else a space (none at the end of a line)."""
        pad = " " * (widths[i] - cell_len(value))
        if i == last and not more and not right[i]:
            return " " + value
        return " " + (pad + value if right[i] else value + pad) + ("+" if more else " " if i < last else "")

    header = []
    for i, name in enumerate(names):
        spare = widths[i] - cell_len(name)
        header.append(" " + " " * (spare // 2) + name + " " * (spare - spare // 2) + " ")
    lines = ["|".join(header), "+".join("-" * (width + 2) for width in widths)]
    for row in split:
        for k in range(max(len(parts) for parts in row)):
            lines.append("|".join(segment(i, parts[k] if k < len(parts) else "", k < len(parts) - 1)
                                  for i, parts in enumerate(row)))
    shown = len(result.rows)
    count = f"({result.row_count} row{'' if result.row_count == 1 else 's'})"
    if shown < result.row_count:
        count += f" (the log keeps the first {shown})"
    return lines + [count]


def statement_lines(statement: Statement) -> list[Text]:
    head = Text(f"[{timestamp(statement.at, date=False)}] #{statement.seq} ")
    head.append(printable(statement.outcome.upper()), style=DECISION_STYLES.get(statement.decision, ""))
    head.append(printable(f"  {statement.protocol}"))
    if statement.classes:
        head.append(printable(f"  ({', '.join(map(str, statement.classes))})"), style="dim")
    if statement.rule or statement.reason:
        head.append(printable(f"  rule {statement.rule or '-'}: {statement.reason or ''}"), style="dim")
    lines = [head]
    lines += [Text("    " + printable(sql_line), style="bold") for sql_line in statement.sql.splitlines() or [""]]
    for index, value in enumerate(statement.parameters or []):
        lines.append(Text(f"    ${index + 1} = {printable(parameter_text(value))}", style="cyan"))
    return lines


def result_lines(result: Result) -> list[Text]:
    lines = [Text("    " + line) for line in psql_table(result)] if result.columns or result.rows else []
    if result.error is not None:
        lines.append(Text(printable(f"    ERROR {result.error[0]}: {result.error[1]}"), style="red"))
    lines.append(Text(printable(f"    {result.command_tag or ('failed' if result.error else 'done')} ")
                      + f"· {result.duration_ms:.1f} ms", style="dim"))
    return lines


def notice_lines(notice: Notice) -> list[Text]:
    return [Text(printable(f"    {notice.severity or 'NOTICE'} {notice.sqlstate}: {notice.message}"), style="magenta")]


def approval_lines(approval: Approval) -> list[Text]:
    line = Text(f"    [{timestamp(approval.at, date=False)}] approval {printable(approval.request)}: ")
    line.append(printable(approval.event.replace("_", " ")), style=APPROVAL_STYLES.get(approval.event, ""))
    if approval.by:
        line.append(printable(f" by {approval.by}"))
    if approval.reason:
        line.append(printable(f" ({approval.reason})"))
    return [line]


def event_lines(event: Statement | Result | Notice | Approval) -> list[Text]:
    if isinstance(event, Statement):
        return statement_lines(event)
    if isinstance(event, Result):
        return result_lines(event)
    if isinstance(event, Notice):
        return notice_lines(event)
    return approval_lines(event)


def startup_text(parameters: dict[str, object]) -> str:
    """The startup parameters as `name=value`, `;`-separated; `-` when the client set none."""
    return "; ".join(f"{name}={value}" for name, value in parameters.items()) or "-"


def header_lines(session: Session) -> list[Text]:
    identity = session.identity
    title = Text(printable(f"Session {session.id}"), style="bold")
    title.append(f"  ({session.state})", style="red" if session.damage else "dim")
    tls = session.tls
    counts = tally(session.statements)
    ended = f"last record {timestamp(session.last_at)} ({duration(session.duration)})"
    lines = [
        title,
        Text(printable(f"  user         {session.user} (subject {identity.get('subject')}, "
                       f"{identity.get('provider')} token"
                       f"{', jti ' + str(identity.get('jti')) if identity.get('jti') else ''})")),
        Text(printable(f"  groups       {', '.join(map(str, session.groups)) or '-'};  "
                       f"roles {', '.join(map(str, session.roles)) or '-'}")),
        Text(printable(f"  target       {session.target};  client {session.client};  application "
                       f"{session.application or '-'}")),
        Text(printable(f"  TLS          {tls.get('version')} {tls.get('cipher')}") if tls
             else "  TLS          none (plaintext)"),
        Text(printable(f"  startup      {startup_text(session.parameters)}")),
        Text(f"  started      {timestamp(session.started)};  {ended}"),
        Text(f"  statements   {counts['statements']};  refused {counts['refused']};  held {counts['held']};  "
             f"errors {counts['errors']}"),
    ]
    if session.close is not None:
        lines.append(Text(printable(f"  closed       {session.close.get('reason')}")))
    return lines


def ending_lines(session: Session) -> list[Text]:
    """Why the transcript ends where it does, when that is not a close record."""
    if session.damage:
        return [Text(printable(f"DAMAGED: {session.damage}; nothing after it can be read"), style="bold red")]
    lines = []
    if session.torn:
        lines.append(Text(printable(f"torn tail: {session.torn} (being written, or cut by a crash)"), style="yellow"))
    if session.close is None:
        lines.append(Text("no close record: the session is still open, or its gateway stopped", style="yellow"))
    return lines


def show(session: Session, out: Console, verdict: list[Text]) -> None:
    """The whole transcript: each statement with everything that answered it, in order."""
    for line in header_lines(session):
        out.print(line)
    for _, event, owner in session.timeline:
        if isinstance(event, Statement):
            out.print()
            lines = statement_lines(event)
            for item in event.approvals:
                lines += approval_lines(item)
            for item in event.notices:
                lines += notice_lines(item)
            for result in event.results:
                lines += result_lines(result)
        elif owner is None:  # answers no statement: shown where it happened
            lines = event_lines(event)
        else:
            continue
        for line in lines:
            out.print(line)
    out.print()
    for line in ending_lines(session) + verdict:
        out.print(line)
