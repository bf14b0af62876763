"""Finding sessions in a session directory, and one line of facts about each.

Summarising a log means reading all of it, so the summaries are kept in an index beside the
logs (`.replay-index.sqlite`), keyed by file name, size and modification time: a closed log
never changes, so its summary is read once, and a log still being written grows, so it is
read again each time. The index is a cache and nothing more: it is rebuilt when it is missing,
unreadable or of another version, skipped when the directory is read-only, and never used by
`verify`, which reads the logs themselves.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import sqlite3
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pgguard.audit.records import SUFFIX

from replay.transcript import NotASessionLog, load, tally

INDEX_NAME = ".replay-index.sqlite"
# Raised whenever Summary changes, so that an index written by another version is rebuilt.
INDEX_VERSION = 1


@dataclass(frozen=True)
class Summary:
    id: str
    name: str  # the file's name in the directory
    user: str
    roles: list[str]
    groups: list[str]
    target: str
    client: str
    application: str | None
    started: float
    last_at: float
    statements: int
    refused: int
    held: int
    errors: int
    closed: bool
    torn: bool
    damage: str | None

    @property
    def duration(self) -> float:
        return max(0.0, self.last_at - self.started)


def summarise(path: Path) -> Summary:
    session = load(path)
    counts = tally(session.statements)
    return Summary(id=session.id, name=path.name, user=session.user, roles=session.roles, groups=session.groups,
                   target=session.target, client=session.client, application=session.application,
                   started=session.started, last_at=session.last_at, statements=counts["statements"],
                   refused=counts["refused"], held=counts["held"], errors=counts["errors"],
                   closed=session.close is not None, torn=session.torn is not None, damage=session.damage)


def is_live(path: Path) -> bool:
    """Whether a gateway is still writing the log: it holds an exclusive flock on it for as
    long as the session runs. Only asked of logs that have their header, or are older than a
    header takes to write (integrity.CREATING), so that the probe can never collide with the
    writer taking its lock as it creates the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def state(summary: Summary, directory: Path) -> str:
    """closed, live (still being written), unclosed (its gateway stopped), or damaged."""
    if summary.damage:
        return "damaged"
    if summary.closed:
        return "closed"
    return "live" if is_live(directory / summary.name) else "unclosed"


class _Index:
    """The sqlite cache of summaries; every failure to use it only costs its speed."""

    def __init__(self, directory: Path) -> None:
        self.connection: sqlite3.Connection | None = None
        try:
            self.connection = self._open(directory / INDEX_NAME)
        except (sqlite3.Error, OSError):
            try:
                (directory / INDEX_NAME).unlink(missing_ok=True)
                self.connection = self._open(directory / INDEX_NAME)
            except (sqlite3.Error, OSError):
                self.connection = None  # a read-only directory: summarise every time

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.touch(mode=0o600)  # it names who ran what, as the logs do: readable by the same few
        connection = sqlite3.connect(path)
        if connection.execute("PRAGMA user_version").fetchone()[0] != INDEX_VERSION:
            connection.execute("DROP TABLE IF EXISTS sessions")
            connection.execute("CREATE TABLE sessions (name TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, "
                               "summary TEXT)")
            connection.execute(f"PRAGMA user_version = {INDEX_VERSION}")
            connection.commit()
        return connection

    def load(self) -> dict[str, tuple[int, int, str]]:
        if self.connection is None:
            return {}
        try:
            rows = self.connection.execute("SELECT name, size, mtime_ns, summary FROM sessions").fetchall()
        except sqlite3.Error:
            return {}
        return {name: (size, mtime, summary) for name, size, mtime, summary in rows}

    def store(self, changed: list[tuple[str, int, int, str]], removed: Iterable[str]) -> None:
        if self.connection is None:
            return
        try:
            with self.connection:
                self.connection.executemany("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)", changed)
                self.connection.executemany("DELETE FROM sessions WHERE name = ?", [(name,) for name in removed])
        except sqlite3.Error as error:
            print(f"pgguard-replay: cannot update the index: {error}", file=sys.stderr)
        finally:
            self.connection.close()


def summaries(directory: Path) -> list[Summary]:
    """Every session log in `directory`, summarised, oldest first. A file that is not (yet) a
    session log, such as one whose header is still being written, is left out."""
    files = {}
    with os.scandir(directory) as scan:
        for entry in scan:
            if entry.name.endswith(SUFFIX) and entry.is_file():
                stat = entry.stat()
                files[entry.name] = (stat.st_size, stat.st_mtime_ns)
    index = _Index(directory)
    cached = index.load()
    found: list[Summary] = []
    changed: list[tuple[str, int, int, str]] = []
    for name, (size, mtime) in files.items():
        known = cached.get(name)
        if known is not None and known[:2] == (size, mtime):
            found.append(Summary(**json.loads(known[2])))
            continue
        try:
            summary = summarise(directory / name)
        except NotASessionLog:
            continue
        except OSError as error:  # removed meanwhile, or not readable by us
            print(f"pgguard-replay: {name}: {error.strerror or error}", file=sys.stderr)
            continue
        found.append(summary)
        changed.append((name, size, mtime, json.dumps(dataclasses.asdict(summary))))
    index.store(changed, cached.keys() - files.keys())
    return sorted(found, key=lambda summary: (summary.started, summary.id))


class UnknownSession(LookupError):
    pass


def resolve(directory: Path, ident: str) -> Path:
    """The log of session `ident`: a path to a log, a session id, or a unique prefix of one."""
    given = Path(ident)
    if given.suffix == SUFFIX and given.is_file():
        return given
    exact = directory / f"{ident}{SUFFIX}"
    if exact.is_file():
        return exact
    matches = sorted(path for path in directory.glob(f"{_escape(ident)}*{SUFFIX}"))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownSession(f"no session {ident!r} in {directory}")
    shown = ", ".join(path.name[:-len(SUFFIX)] for path in matches[:5])
    raise UnknownSession(f"{ident!r} matches {len(matches)} sessions ({shown}{', …' if len(matches) > 5 else ''}); "
                         "give more of the id")


def _escape(text: str) -> str:
    """`text` with glob's special characters matched literally."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in text)


@dataclass(frozen=True)
class Filters:
    """Which sessions to look at. Times are epoch seconds; a session matches a time range when
    it overlaps it."""

    user: str | None = None
    target: str | None = None
    application: str | None = None
    since: float | None = None
    until: float | None = None
    refused_only: bool = False

    def __call__(self, summary: Summary) -> bool:
        return ((self.user is None or summary.user == self.user)
                and (self.target is None or summary.target == self.target)
                and (self.application is None or summary.application == self.application)
                and (self.since is None or summary.last_at >= self.since)
                and (self.until is None or summary.started <= self.until)
                and (not self.refused_only or summary.refused > 0))
