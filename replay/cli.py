"""The `pgguard-replay` command: find, read, play back and verify session logs.

Exit statuses: 0 success; 1 `verify` found a bad record (damage or tampering); 2 a usage
error, an unknown session or an unreadable directory; 3 `verify` found no bad record but a
log that ends early with no gateway writing it (torn, unclosed or unsigned end).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.text import Text

from pgguard.audit.records import SUFFIX
from pgguard.config import ConfigError, load, parse_duration
from pgguard.identity import TokenError

from replay import render_html, render_text
from replay.catalog import Filters, UnknownSession, resolve, state, summaries
from replay.cells import printable
from replay.export import document
from replay.integrity import INTACT, TAMPERED, PublicKeys, Verdict, check, public_keys
from replay.play import pacer, play
from replay.search import Query, search
from replay.transcript import NotASessionLog, load as load_session

USAGE_ERROR = 2


class UsageError(Exception):
    pass


def parse_time(text: str) -> float:
    """An ISO 8601 time (UTC unless it gives an offset), or a duration meaning that long ago."""
    try:
        return datetime.now(UTC).timestamp() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (e.g. 2026-11-22T03:00, 2026-11-22, 2h)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def session_directory(args: argparse.Namespace) -> Path:
    """--dir; else the session_dir of -c's pgguard.toml; else PGGUARD_SESSION_DIR; else ./sessions."""
    if args.dir is not None:
        directory = Path(args.dir)
    elif args.config is not None:
        directory = load(args.config).gateway.session_dir
    else:
        directory = Path(os.environ.get("PGGUARD_SESSION_DIR") or "sessions")
    if not directory.is_dir():
        raise UsageError(f"no session directory {directory} (give --dir, -c pgguard.toml or PGGUARD_SESSION_DIR)")
    return directory


def keys_of(args: argparse.Namespace, required: bool) -> PublicKeys | None:
    keys = public_keys(args.jwks, args.config)
    if not keys and required:
        raise UsageError("verify needs the gateway's public keys: --jwks FILE|URL (its /.well-known/jwks.json), "
                         "or -c pgguard.toml")
    return keys or None


def filters_of(args: argparse.Namespace) -> Filters:
    return Filters(user=args.user, target=args.target, application=args.app, since=args.since, until=args.until,
                   refused_only=getattr(args, "refused_only", False))


def _list(args: argparse.Namespace) -> int:
    directory = session_directory(args)
    chosen = [summary for summary in summaries(directory) if filters_of(args)(summary)]
    if args.json:
        print(json.dumps([{**summary.__dict__, "duration": summary.duration, "state": state(summary, directory)}
                          for summary in chosen], indent=1))
        return 0
    out = render_text.console()
    headers = ["id", "user", "roles", "target", "client", "application", "start (UTC)", "duration", "statements",
               "refused", "held", "state"]
    rows: list[list[render_text.Cell]] = [
        [summary.id, summary.user, ",".join(summary.roles) or "-", summary.target, summary.client,
         summary.application or "-", render_text.timestamp(summary.started)[:19], render_text.duration(summary.duration),
         str(summary.statements), (str(summary.refused), "bold red" if summary.refused else ""),
         (str(summary.held), "bold yellow" if summary.held else ""), state(summary, directory)]
        for summary in chosen]
    render_text.print_table(out, headers, rows, frozenset({"duration", "statements", "refused", "held"}))
    out.print(Text(f"{len(chosen)} session{'' if len(chosen) == 1 else 's'} in {directory}", style="dim"))
    return 0


def _verdict(args: argparse.Namespace, path: Path) -> Verdict | None:
    keys = keys_of(args, required=False)
    return None if keys is None else check(path, keys)


def _verdict_lines(verdict: Verdict | None) -> list[Text]:
    if verdict is None:
        return [Text("integrity: not verified (give --jwks or -c to verify)", style="dim")]
    style = "green" if verdict.status == INTACT else "bold red"
    return [Text(printable(f"integrity: {verdict.summary}"), style=style)] + [
        Text(printable(f"  {problem.kind}: {problem}"), style=style) for problem in verdict.problems]


def _show(args: argparse.Namespace) -> int:
    path = resolve(session_directory(args), args.id)
    verdict = _verdict(args, path)
    render_text.show(load_session(path), render_text.console(), _verdict_lines(verdict))
    return 0


def _play(args: argparse.Namespace) -> int:
    session = load_session(resolve(session_directory(args), args.id))
    with pacer() as pace:
        play(session, render_text.console(), pace, speed=args.speed, max_gap=args.max_gap)
    return 0


def _search(args: argparse.Namespace) -> int:
    if args.regex is not None:
        try:
            pattern = re.compile(args.regex, re.IGNORECASE)
        except re.error as error:
            raise UsageError(f"--regex: {error}") from None
    else:
        pattern = None
    query = Query(table=args.table, text=args.sql, pattern=pattern, decision=args.decision)
    hits = list(search(session_directory(args), filters_of(args), query))
    if args.json:
        print(json.dumps([{"session": hit.session.id, "user": hit.session.user, "seq": hit.statement.seq,
                           "at": hit.statement.at, "decision": hit.statement.decision,
                           "outcome": hit.statement.outcome, "rule": hit.statement.rule, "tables": hit.tables,
                           "sql": hit.statement.sql} for hit in hits], indent=1))
        return 0
    out = render_text.console()
    rows = [[render_text.timestamp(hit.statement.at), hit.session.id, hit.session.user, str(hit.statement.seq),
             (hit.statement.outcome, render_text.DECISION_STYLES.get(hit.statement.decision, "")),
             ", ".join(hit.tables) if hit.tables is not None else "?", " ".join(hit.statement.sql.split())]
            for hit in hits]
    render_text.print_table(out, ["time (UTC)", "session", "user", "#", "decision", "tables", "statement"], rows,
                            frozenset({"#"}))
    out.print(Text(f"{len(hits)} statement{'' if len(hits) == 1 else 's'}", style="dim"))
    return 0


def _verify(args: argparse.Namespace) -> int:
    directory = session_directory(args)
    keys = keys_of(args, required=True)
    assert keys is not None
    if args.all == bool(args.ids):
        raise UsageError("verify: give session ids, or --all")
    # --all: every file named as a log, not only those `list` can read: a log whose header was
    # damaged or cut off is a failure to report, not a file to pass over.
    paths = sorted(path for path in directory.iterdir() if path.name.endswith(SUFFIX) and path.is_file()) \
        if args.all else [resolve(directory, ident) for ident in args.ids]
    out = render_text.console()
    statuses = set()
    for path in paths:
        verdict = check(path, keys)
        statuses.add(verdict.status)
        name = verdict.report.session_id or path.name
        out.print(Text(printable(f"{verdict.name.upper():<10} {name}: {verdict.summary}"),
                       style="green" if verdict.status == INTACT else "bold red"))
        for problem in verdict.problems:
            out.print(Text(printable(f"  {problem.kind}: {problem}")))
    if args.all:
        out.print(Text(f"{len(paths)} session logs verified in {directory}", style="dim"))
    return TAMPERED if TAMPERED in statuses else max(statuses, default=INTACT)


def _export(args: argparse.Namespace) -> int:
    path = resolve(session_directory(args), args.id)
    exported = document(load_session(path), _verdict(args, path))
    text = json.dumps(exported, indent=1) + "\n" if args.format == "json" else render_html.render(exported)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _session_filters(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--user", help="the identity's user name")
    sub.add_argument("--target", help="the target database the session used")
    sub.add_argument("--app", help="the client's application_name")
    sub.add_argument("--since", type=parse_time, help="ISO time (UTC unless an offset is given), or e.g. 2h for 2 hours ago")
    sub.add_argument("--until", type=parse_time, help="ISO time, or a duration ago")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pgguard-replay", description="Find, read, play back and verify pgguard "
                                  "session logs.")
    top.add_argument("--dir", help="the session directory (default: -c's session_dir, PGGUARD_SESSION_DIR, "
                                   "./sessions)")
    top.add_argument("-c", "--config", type=Path, help="pgguard.toml: its session directory and signing keys")
    top.add_argument("--jwks", default=os.environ.get("PGGUARD_JWKS"),
                     help="the gateway's public keys: a JWKS file or URL (default: PGGUARD_JWKS)")
    commands = top.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="the sessions, one line each")
    _session_filters(listing)
    listing.add_argument("--refused-only", action="store_true", help="only sessions with a refused statement")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_list)

    shower = commands.add_parser("show", help="a session as a transcript")
    shower.add_argument("id", help="a session id, a unique prefix of one, or a log's path")
    shower.set_defaults(func=_show)

    player = commands.add_parser("play", help="a session played back with its timing")
    player.add_argument("id")
    player.add_argument("--speed", type=float, default=1.0, help="2 plays twice as fast (default 1)")
    player.add_argument("--max-gap", type=float, help="wait at most this many seconds between events")
    player.set_defaults(func=_play)

    searcher = commands.add_parser("search", help="statements across all sessions")
    searcher.add_argument("--table", help="a table the statement reads or writes (schema optional)")
    searcher.add_argument("--sql", help="text in the statement, any case")
    searcher.add_argument("--regex", help="a regular expression the statement matches, any case")
    searcher.add_argument("--decision", choices=["allowed", "refused", "held", "approved", "denied", "timed_out",
                                                 "cancelled"])
    _session_filters(searcher)
    searcher.add_argument("--json", action="store_true", help="machine-readable output")
    searcher.set_defaults(func=_search)

    verifier = commands.add_parser("verify", help="check hash chains and signatures")
    verifier.add_argument("ids", nargs="*", metavar="ID")
    verifier.add_argument("--all", action="store_true", help="every session in the directory")
    verifier.set_defaults(func=_verify)

    exporter = commands.add_parser("export", help="a session as JSON, or as a self-contained HTML report")
    exporter.add_argument("id")
    exporter.add_argument("--format", choices=["json", "html"], default="json")
    exporter.add_argument("-o", "--output", help="write to this file instead of stdout")
    exporter.set_defaults(func=_export)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "speed", 1.0) <= 0:
        print("pgguard-replay: --speed must be above 0", file=sys.stderr)
        return USAGE_ERROR
    try:
        return int(args.func(args))
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        return 0
    except (UsageError, UnknownSession, NotASessionLog, ConfigError, TokenError, OSError, ValueError) as error:
        print(f"pgguard-replay: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130



if __name__ == "__main__":
    sys.exit(main())
