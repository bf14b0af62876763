"""The catalog's index: a cache of summaries beside the logs, rebuilt when missing, stale,
corrupt or of another version; never trusted by verify."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from replay.catalog import INDEX_NAME, Filters, UnknownSession, resolve, summaries
from replay.cli import main
from test_replay_transcript import HELD, START, held_session, write_jwks, write_log

OTHER = "20260921T150000Z-bbbbbbbbbbbb"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    write_log(tmp_path, HELD, held_session())
    write_log(tmp_path, OTHER, held_session()[:2], user="frank", application="agent", start=START + 3600)
    return tmp_path


def indexed(directory: Path) -> dict[str, int]:
    with sqlite3.connect(directory / INDEX_NAME) as connection:
        return dict(connection.execute("SELECT name, size FROM sessions").fetchall())


def test_summaries_are_indexed_and_the_index_follows_the_files(directory: Path) -> None:
    found = summaries(directory)
    assert [s.id for s in found] == [HELD, OTHER] and [s.user for s in found] == ["erin", "frank"]
    assert set(indexed(directory)) == {f"{HELD}.pgglog", f"{OTHER}.pgglog"}
    assert (directory / INDEX_NAME).stat().st_mode & 0o777 == 0o600
    # a log that grew (a live session) is read again
    write_log(directory, OTHER, held_session(), user="frank", start=START + 3600)
    assert [s.statements for s in summaries(directory)] == [4, 4]
    # a removed log leaves the index too
    (directory / f"{HELD}.pgglog").unlink()
    assert [s.id for s in summaries(directory)] == [OTHER] and list(indexed(directory)) == [f"{OTHER}.pgglog"]


def test_a_corrupt_or_foreign_index_is_rebuilt(directory: Path) -> None:
    (directory / INDEX_NAME).write_bytes(b"not a database at all" * 100)
    assert len(summaries(directory)) == 2 and len(indexed(directory)) == 2
    with sqlite3.connect(directory / INDEX_NAME) as connection:
        connection.execute("PRAGMA user_version = 999")
    assert len(summaries(directory)) == 2
    with sqlite3.connect(directory / INDEX_NAME) as connection:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 1


def test_an_index_that_cannot_be_written_only_costs_speed(directory: Path) -> None:
    (directory / INDEX_NAME).mkdir()  # where the index would go: neither opened nor removed
    assert [s.id for s in summaries(directory)] == [HELD, OTHER]
    assert (directory / INDEX_NAME).is_dir()


def test_verify_reads_the_logs_not_the_index(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summaries(directory)
    path = directory / f"{HELD}.pgglog"
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[200] ^= 1  # same size, same mtime: the index cannot tell
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert [s.damage for s in summaries(directory)] == [None, None]  # the cached summary
    jwks = write_jwks(directory / "jwks.json")
    assert main(["--dir", str(directory), "--jwks", str(jwks), "verify", "--all"]) == 1
    out = capsys.readouterr().out
    assert f"FAILED     {HELD}" in out and f"INTACT     {OTHER}" in out


def test_filters(directory: Path) -> None:
    found = summaries(directory)
    assert [s.id for s in found if Filters(user="frank")(s)] == [OTHER]
    assert [s.id for s in found if Filters(application="psql")(s)] == [HELD]
    assert [s.id for s in found if Filters(since=START + 3000)(s)] == [OTHER]
    assert [s.id for s in found if Filters(until=START + 3000)(s)] == [HELD]
    assert [s.id for s in found if Filters(refused_only=True)(s)] == []


def test_sessions_are_found_by_id_prefix_or_path(directory: Path) -> None:
    assert resolve(directory, HELD).name == f"{HELD}.pgglog"
    assert resolve(directory, "20260921T15").name == f"{OTHER}.pgglog"
    assert resolve(directory, str(directory / f"{OTHER}.pgglog")).name == f"{OTHER}.pgglog"
    with pytest.raises(UnknownSession, match="matches 2 sessions"):
        resolve(directory, "20260921T1")
    with pytest.raises(UnknownSession, match="no session"):
        resolve(directory, "2027")
    with pytest.raises(UnknownSession):
        resolve(directory, "*")  # glob characters are literal


def test_list_prints_a_table(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dir", str(directory), "list", "--user", "frank"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == [OTHER, "frank", "engineering"] and "1 session in" in lines[-1]
    assert main(["--dir", str(directory), "list", "--json", "--since", "2000-01-01", "--until", "2100-01-01"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
