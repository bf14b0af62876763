"""pgguard-replay over sessions made through the real gateway by real clients: list, show,
play, search, export (JSON, and HTML opened in headless Chromium), and verify, on intact,
live, crashed and tampered logs."""

from __future__ import annotations

import json
import os
import pty
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgguard.audit.chain import FRAME
from pgguard.audit.verify import read_records
from pgguard.identity.tokens import TokenService
from pgguard.config import load
from conftest import RunningGateway
from helpers import psql, unique_name
from test_session_log import find_log, session_dir


def replay(gateway: RunningGateway, *args: str, env: dict[str, str] | None = None,
           **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """pgguard-replay with the gateway's config (its session directory and signing keys)."""
    return subprocess.run([sys.executable, "-m", "replay.cli", "-c", str(gateway.config_path), *args],
                          capture_output=True, text=True, timeout=120, env=env, **kwargs)


def session_id(path: Path) -> str:
    return path.name.removesuffix(".pgglog")


def support_session(gateway: RunningGateway) -> tuple[str, Path]:
    """A support session with a read, a write rolled back, a refusal and an error."""
    application = unique_name("replay")
    with psycopg.connect(gateway.dsn("support", application_name=application), autocommit=True) as conn:
        conn.execute("SELECT id, email FROM customers ORDER BY id LIMIT 2", prepare=False)
        conn.execute("SELECT 'customers' AS word", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders WHERE id = -1", prepare=False)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0", prepare=False)
        conn.execute("SELECT count(*) FROM public.tickets WHERE id = %s", [1])
    return application, find_log(gateway, application)


@pytest.fixture(scope="module")
def support(gateway: RunningGateway) -> tuple[str, Path]:
    return support_session(gateway)


def test_list_shows_each_session_with_its_identity_and_counts(gateway: RunningGateway,
                                                              support: tuple[str, Path]) -> None:
    application, path = support
    listed = replay(gateway, "list", "--app", application, "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == session_id(path) and row["user"] == "sam" and row["roles"] == ["support"]
    assert row["target"] == "demo" and row["client"].startswith("127.0.0.1:") and row["application"] == application
    assert (row["statements"], row["refused"], row["held"], row["errors"]) == (5, 1, 0, 2)
    assert row["state"] == "closed" and row["duration"] >= 0

    table = replay(gateway, "list", "--app", application)
    assert table.returncode == 0 and "\x1b[" not in table.stdout  # plain text into a pipe
    header, line = table.stdout.splitlines()[:2]
    assert header.split() == ["id", "user", "roles", "target", "client", "application", "start", "(UTC)",
                              "duration", "statements", "refused", "held", "state"]
    fields = line.split()
    assert fields[:4] == [session_id(path), "sam", "support", "demo"] and fields[-4:] == ["5", "1", "0", "closed"]

    def ids(*filters: str) -> list[str]:
        done = replay(gateway, "list", "--json", *filters)
        assert done.returncode == 0, done.stderr
        return [row["id"] for row in json.loads(done.stdout)]

    assert session_id(path) in ids("--user", "sam", "--refused-only", "--target", "demo", "--since", "1h")
    assert session_id(path) not in ids("--user", "nobody")
    assert session_id(path) not in ids("--since", "2999-01-01")
    assert session_id(path) not in ids("--until", "2000-01-01T00:00Z")
    assert session_id(path) not in ids("--target", "other")


def test_show_prints_rows_as_psql_printed_them(gateway: RunningGateway) -> None:
    application = unique_name("replay")
    query = "SELECT id, email, city, created_at FROM customers ORDER BY id LIMIT 4"
    lines = "SELECT E'one\\ntwo lines' AS text, 7 AS n, E'x\\ny\\nzz' AS last, NULL AS nothing"
    printed = psql(gateway.dsn("analyst", application_name=application), query, lines)
    path = find_log(gateway, application)
    shown = replay(gateway, "show", session_id(path))
    assert shown.returncode == 0, shown.stderr
    assert "\x1b[" not in shown.stdout
    # psql's tables, line for line (analysts get emails masked: the log holds what psql got),
    # multi-line cells with their + marks included
    blocks = printed.rstrip("\n").split("\n\n")
    assert len(blocks) == 2 and "two lines |" in blocks[1]
    for block in blocks:
        table = "\n".join("    " + line for line in block.split("\n"))
        assert table in shown.stdout, f"psql printed:\n{block}\nshow printed:\n{shown.stdout}"
    assert "***" in printed


def test_show_tells_the_whole_story_of_a_session(gateway: RunningGateway, support: tuple[str, Path]) -> None:
    _, path = support
    shown = replay(gateway, "show", session_id(path)[:22])  # a prefix of the id is enough
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert f"Session {session_id(path)}" in text and "user         sam" in text and "roles support" in text
    assert "SELECT id, email FROM customers ORDER BY id LIMIT 2" in text and "(2 rows)" in text
    refused = text.index("DELETE FROM orders WHERE id = -1")
    before = text.rfind("\n", 0, refused - 6)
    assert "REFUSED" in text[before:refused] and "rule " in text[before:refused]
    assert "ERROR 42501: pgguard:" in text[refused:]
    assert "ERROR 22012: division by zero" in text
    assert "$1 = " in text and "count" in text
    assert "integrity: intact:" in text and "closed       client terminated" in text


def terminal_output(gateway: RunningGateway, *args: str) -> str:
    """What pgguard-replay writes to a terminal (a pty), colours and all."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": "200", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    with subprocess.Popen([sys.executable, "-m", "replay.cli", "-c", str(gateway.config_path), *args],
                          stdout=follower, stderr=follower, env=env) as process:
        os.close(follower)
        output = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the pty is gone once the process has exited
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(60) == 0, output
    os.close(leader)
    return output.decode(errors="replace")


def test_show_colours_a_terminal(gateway: RunningGateway, support: tuple[str, Path]) -> None:
    _, path = support
    text = terminal_output(gateway, "show", session_id(path))
    assert "\x1b[1;31mREFUSED" in text  # bold red
    assert "\x1b[32mALLOWED" in text  # green


def test_an_agent_cannot_drive_the_responders_terminal_through_the_log(gateway: RunningGateway) -> None:
    """Escape sequences an agent sends in its application_name, its SQL and the errors it provokes
    are shown as escapes, never written raw to the responder's terminal."""
    application = unique_name("escapes")
    clear, link = "\x1b[2J\x1b[H", "\x1b]8;;http://evil.example/\x1b\\"
    with psycopg.connect(gateway.dsn("analyst", application_name=application + clear), autocommit=True) as conn:
        conn.execute(f"SELECT '{clear}{link}harmless' AS note", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is unknown to pgguard"):
            conn.execute(f'SELECT * FROM "{link}orders\rcustomers"', prepare=False)
    path = find_log(gateway, application + clear)
    for command in (["show", session_id(path)], ["list", "--app", application + clear],
                    ["search", "--sql", "harmless"]):
        text = terminal_output(gateway, *command)
        assert "\x1b[2J" not in text and "\x1b]8" not in text and "\r" not in text.replace("\r\n", "\n")
        assert "\\x1B[2J" in text
    text = terminal_output(gateway, "show", session_id(path))
    assert "\\x1B]8;;http://evil.example/\\x1B\\harmless" in text  # the cell, as psql shows it
    assert 'SELECT * FROM "\\x1B]8;;http://evil.example/\\x1B\\orders' in text  # a carriage return starts a line of its own
    assert "\x1b[32mALLOWED" in text  # rich's own colours still come through


def test_startup_settings_are_in_the_log_and_the_transcript(gateway: RunningGateway) -> None:
    """A search_path set in the startup packet changes what every unqualified name means: the
    responder must see it, not only the statements."""
    application = unique_name("startup")
    options = "-c search_path=pg_catalog,public -c statement_timeout=5000"
    with psycopg.connect(gateway.dsn("analyst", application_name=application, options=options),
                         autocommit=True) as conn:
        conn.execute("SELECT count(*) FROM orders", prepare=False)
    path = find_log(gateway, application)
    header = next(read_records(path)).record
    assert header["parameters"]["options"] == options
    assert header["parameters"]["application_name"] == application
    assert "user" not in header["parameters"] and "database" not in header["parameters"]
    shown = replay(gateway, "show", session_id(path))
    assert shown.returncode == 0, shown.stderr
    (line,) = [line for line in shown.stdout.splitlines() if line.startswith("  startup      ")]
    assert f"application_name={application}" in line and f"options={options}" in line
    exported = json.loads(replay(gateway, "export", session_id(path)).stdout)
    assert exported["session"]["parameters"]["options"] == options


def test_play_replays_every_event_in_order(gateway: RunningGateway, support: tuple[str, Path]) -> None:
    _, path = support
    played = replay(gateway, "play", session_id(path), "--speed", "50", "--max-gap", "0.05",
                    stdin=subprocess.DEVNULL)
    assert played.returncode == 0, played.stderr
    text = played.stdout
    positions = [text.index(sql) for sql in ("SELECT id, email FROM customers", "SELECT 'customers'",
                                             "DELETE FROM orders", "SELECT 1/0", "FROM public.tickets")]
    assert positions == sorted(positions)
    assert text.index("ERROR 22012") > text.index("SELECT 1/0")


def test_search_by_table_text_pattern_and_decision(gateway: RunningGateway, support: tuple[str, Path]) -> None:
    application, path = support

    def found(*query: str) -> list[str]:
        done = replay(gateway, "search", "--app", application, "--json", *query)
        assert done.returncode == 0, done.stderr
        hits = json.loads(done.stdout)
        assert all(hit["session"] == session_id(path) for hit in hits)
        return [hit["sql"] for hit in hits]

    # the classifier decides what a statement touches: a string 'customers' touches nothing
    assert found("--table", "customers") == ["SELECT id, email FROM customers ORDER BY id LIMIT 2"]
    assert found("--table", "public.tickets") == ["SELECT count(*) FROM public.tickets WHERE id = $1"]
    assert found("--table", "other.tickets") == []
    assert found("--sql", "CUSTOMERS") == ["SELECT id, email FROM customers ORDER BY id LIMIT 2",
                                           "SELECT 'customers' AS word"]
    assert found("--regex", r"^delete\s+from\s+orders") == ["DELETE FROM orders WHERE id = -1"]
    assert found("--decision", "refused") == ["DELETE FROM orders WHERE id = -1"]
    assert found("--table", "orders", "--decision", "allowed") == []
    assert found("--user", "nobody") == []
    everywhere = replay(gateway, "search", "--table", "customers", "--user", "sam")
    assert everywhere.returncode == 0 and session_id(path) in everywhere.stdout
    assert replay(gateway, "search", "--regex", "(").returncode == 2


def test_export_json_holds_identity_statements_results_and_verdict(gateway: RunningGateway,
                                                                   support: tuple[str, Path]) -> None:
    _, path = support
    done = replay(gateway, "export", session_id(path), "--format", "json")
    assert done.returncode == 0, done.stderr
    exported = json.loads(done.stdout)
    assert exported["session"]["user"] == "sam" and exported["session"]["identity"]["roles"] == ["support"]
    assert exported["integrity"]["verdict"] == "intact"
    assert [s["decision"] for s in exported["statements"]] == ["allowed", "allowed", "refused", "allowed", "allowed"]
    first = exported["statements"][0]
    assert first["tables"] == ["customers"] and first["results"][0]["rows"][0][0] == "1"
    assert [c["name"] for c in first["results"][0]["columns"]] == ["id", "email"]
    assert exported["statements"][2]["results"][0]["error"]["sqlstate"] == "42501"
    # psycopg binds the int in binary (an int2): the log has no type for it, so it shows as bytes
    assert exported["statements"][4]["parameters"] == ["\\x0001"]


def test_the_html_report_opens_in_chromium_and_shows_the_statements(
        gateway: RunningGateway, support: tuple[str, Path], tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed")
    _, path = support
    report = tmp_path / "report.html"
    done = replay(gateway, "export", session_id(path), "--format", "html", "-o", str(report))
    assert done.returncode == 0, done.stderr
    page = report.read_text()
    assert "<script" not in page and "src=" not in page and "<link" not in page and "url(" not in page
    dom = subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                          "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr
    rendered = dom.stdout
    for sql in ("SELECT id, email FROM customers ORDER BY id LIMIT 2", "DELETE FROM orders WHERE id = -1",
                "SELECT 1/0"):
        assert sql in rendered
    assert "Integrity: intact" in rendered and "REFUSED" in rendered and "division by zero" in rendered
    assert "<td>sam</td>" in rendered


def test_verify_passes_intact_logs_and_needs_keys(gateway: RunningGateway, support: tuple[str, Path],
                                                  tmp_path: Path) -> None:
    _, path = support
    done = replay(gateway, "verify", session_id(path))
    assert done.returncode == 0 and done.stdout.startswith("INTACT"), done.stdout + done.stderr
    # the keys from a JWKS file, the directory from the environment
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(TokenService(load(gateway.config_path).identity).jwks()))
    env = {**os.environ, "PGGUARD_SESSION_DIR": str(session_dir(gateway))}
    by_jwks = subprocess.run([sys.executable, "-m", "replay.cli", "--jwks", str(jwks), "verify", "--all"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert by_jwks.returncode in (0, 3), by_jwks.stdout + by_jwks.stderr  # other tests' crashed sessions: 3
    assert f"INTACT     {session_id(path)}" in by_jwks.stdout
    keyless = subprocess.run([sys.executable, "-m", "replay.cli", "verify", "--all"], capture_output=True,
                             text=True, env={**env, "PGGUARD_JWKS": ""}, timeout=60)
    assert keyless.returncode == 2 and "public keys" in keyless.stderr
    assert replay(gateway, "verify", "no-such-session").returncode == 2


def _frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every frame."""
    spans, offset = [], 0
    while offset < len(data):
        length = struct.unpack_from(">I", data, offset)[0]
        spans.append((offset, offset + FRAME.size + length))
        offset += FRAME.size + length
    return spans


TAMPERINGS: dict[str, Callable[[bytes, list[tuple[int, int]]], tuple[bytes, int]]] = {
    # each returns the tampered log and the record verify must name
    "flip a byte": lambda data, spans: (data[:spans[3][1] - 2] + bytes([data[spans[3][1] - 2] ^ 1])
                                        + data[spans[3][1] - 1:], 3),
    "drop a record": lambda data, spans: (data[:spans[2][0]] + data[spans[2][1]:], 2),
    "reorder two records": lambda data, spans: (data[:spans[2][0]] + data[spans[3][0]:spans[3][1]]
                                                + data[spans[2][0]:spans[2][1]] + data[spans[3][1]:], 2),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_verify_names_the_tampered_record(gateway: RunningGateway, support: tuple[str, Path], tmp_path: Path,
                                          tampering: str) -> None:
    _, path = support
    data = path.read_bytes()
    tampered, index = TAMPERINGS[tampering](data, _frames(data))
    copy = tmp_path / path.name
    copy.write_bytes(tampered)
    done = replay(gateway, "--dir", str(tmp_path), "verify", session_id(path))
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("FAILED") and f"record {index} " in done.stdout.splitlines()[1]
    assert f"FAILED at record {index} " in done.stdout
    # show still reads what it can, and says the log fails
    shown = replay(gateway, "--dir", str(tmp_path), "show", session_id(path))
    assert shown.returncode == 0 and "integrity: FAILED" in shown.stdout


def test_verify_reports_a_truncated_log_as_incomplete(gateway: RunningGateway, support: tuple[str, Path],
                                                      tmp_path: Path) -> None:
    _, path = support
    data = path.read_bytes()
    spans = _frames(data)
    copy = tmp_path / path.name
    copy.write_bytes(data[:spans[-2][0] + 5])  # cut inside the close record
    done = replay(gateway, "--dir", str(tmp_path), "verify", session_id(path))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"torn: record {len(spans) - 2} at byte {spans[-2][0]}" in done.stdout and "open:" in done.stdout
    shown = replay(gateway, "--dir", str(tmp_path), "show", session_id(path))
    assert shown.returncode == 0 and "torn tail" in shown.stdout and "INCOMPLETE" in shown.stdout
    listed = replay(gateway, "--dir", str(tmp_path), "list", "--json")
    assert json.loads(listed.stdout)[0]["state"] == "unclosed" and json.loads(listed.stdout)[0]["torn"]


def test_a_live_session_is_read_while_it_is_written(gateway: RunningGateway, tmp_path: Path) -> None:
    application = unique_name("replay")
    with psycopg.connect(gateway.dsn("analyst", application_name=application), autocommit=True) as conn:
        conn.execute("SELECT 42 AS answer")
        path = find_log(gateway, application, closed=False)
        while not any(entry.record["type"] == "result" for entry in read_records(path)):
            conn.execute("SELECT 1")  # the writer gathers for a few ms; a second statement waits it out
        listed = json.loads(replay(gateway, "list", "--app", application, "--json").stdout)
        assert listed[0]["state"] == "live" and not listed[0]["closed"]
        shown = replay(gateway, "show", session_id(path))
        assert shown.returncode == 0 and "SELECT 42 AS answer" in shown.stdout and "no close record" in shown.stdout
        verified = replay(gateway, "verify", session_id(path))
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert verified.stdout.startswith("LIVE") and "still being written" in verified.stdout
        # the same bytes with no gateway holding them: what a crash leaves
        shutil.copy(path, tmp_path / path.name)
    listed = json.loads(replay(gateway, "--dir", str(tmp_path), "list", "--json").stdout)
    assert listed[0]["state"] == "unclosed"
    crashed = replay(gateway, "--dir", str(tmp_path), "verify", session_id(path))
    assert crashed.returncode == 3 and crashed.stdout.startswith("INCOMPLETE"), crashed.stdout

