"""Logs built by hand through the audit chain API, read back by pgguard-replay: held
statements and their approvals (which the gateway does not write yet), notices, binary and
clipped values, record types from a newer gateway, torn and damaged ends."""

from __future__ import annotations

import base64
import os
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.audit import records
from pgguard.audit.chain import Chain, Signer
from pgguard.audit.records import Limits, Record, RowCapture
from pgguard.identity import Identity
from replay.cli import main
from replay.transcript import load

LIMITS = Limits(max_rows=2, max_cell_bytes=8)
KEY = Ed25519PrivateKey.generate()
START = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def identity(user: str = "erin", roles: Sequence[str] = ("engineering",)) -> Identity:
    return Identity(provider="pgguard", issuer="pgguard-test", subject=user, username=user, groups=tuple(roles),
                    jti="jti-1", issued_at=START, expires_at=START + 3600, valid_until=START + 3600,
                    roles=tuple(roles))


def write_log(directory: Path, session_id: str, body: list[Record], *, user: str = "erin",
              application: str = "psql", start: float = START, close: bool = True) -> Path:
    """A signed log: the header, `body`, and (with `close`) a close record and its checkpoint."""
    chain = Chain(session_id)
    signer = Signer("k1", KEY)
    frames = [chain.append(records.header(session_id=session_id, identity=identity(user),
                                          client_address="10.0.0.7:51000", application_name=application,
                                          target="demo", tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"), at=start))]
    frames += [chain.append(record) for record in body]
    if close:
        frames.append(chain.append(records.close(reason="client terminated", bytes_in=10, bytes_out=20, counts={},
                                                 at=start + 100)))
        frames.append(chain.checkpoint(signer, start + 100.5))
    path = directory / f"{session_id}.pgglog"
    path.write_bytes(b"".join(frames))
    return path


def held_session() -> list[Record]:
    """A read; a DELETE held and approved; an UPDATE held and denied; a DROP held until it timed out."""
    rows = RowCapture(LIMITS)
    rows.add([b"1", b"a***@example.com"])  # clipped at 8 bytes
    rows.add([b"2", None])
    rows.add([b"3", b"c"])  # past max_rows: counted only
    return [
        records.statement(protocol="simple", sql="SELECT id, email FROM customers", decision="allowed",
                          classes=("read",), limits=LIMITS, at=START + 1),
        records.result(statement=1, columns=[("id", 23, 0), ("email", 25, 0)], rows=rows, command_tag="SELECT 3",
                       duration_ms=1.5, limits=LIMITS, at=START + 1.1),
        records.statement(protocol="simple", sql="DELETE FROM orders WHERE id = 7", decision="held",
                          rule="approvals.orders", reason="deletes from orders need approval", classes=("write",),
                          limits=LIMITS, at=START + 10),
        records.approval(statement=3, request="req-7", event="requested", at=START + 10),
        records.notice(statement=3, severity="NOTICE", sqlstate="01000",
                       message="pgguard: held for approval as req-7", limits=LIMITS, at=START + 10.1),
        records.approval(statement=3, request="req-7", event="approved", by="dana", reason="INC-42", at=START + 40),
        records.result(statement=3, command_tag="DELETE 1", duration_ms=2.0, limits=LIMITS, at=START + 40.1),
        records.statement(protocol="extended", sql="UPDATE orders SET total = $1", decision="held",
                          parameters=[b"\x00\x00\x00\x05", None, "text value"], rule="approvals.orders",
                          limits=LIMITS, at=START + 50),
        records.approval(statement=8, request="req-8", event="denied", by="dana", reason="no WHERE", at=START + 55),
        records.result(statement=8, error=("42501", "pgguard: denied by dana"), duration_ms=5000.0, limits=LIMITS,
                       at=START + 55.1),
        records.statement(protocol="simple", sql="DROP TABLE tickets", decision="held", rule="approvals.ddl",
                          limits=LIMITS, at=START + 60),
        records.approval(statement=11, request="req-9", event="timed_out", at=START + 90),
        {"type": "from-the-future", "at": START + 91, "whatever": 1},
        records.result(statement=None, error=("26000", "prepared statement \"x\" does not exist"), duration_ms=0.0,
                       limits=LIMITS, at=START + 92),
    ]


def write_jwks(path: Path) -> Path:
    raw = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path.write_text(json.dumps({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
                                          "x": base64.urlsafe_b64encode(raw).decode().rstrip("=")}]}))
    return path


HELD = "20260921T141320Z-aaaaaaaaaaaa"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    write_log(tmp_path, HELD, held_session())
    write_jwks(tmp_path / "jwks.json")
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def test_approvals_are_shown_with_who_gave_them(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, "--dir", str(directory), "--jwks", str(directory / "jwks.json"), "show", HELD)
    assert status == 0, text
    assert "#3 HELD, APPROVED" in text and "approval req-7: requested" in text
    assert "approval req-7: approved by dana (INC-42)" in text
    assert "#8 HELD, DENIED" in text and "approval req-8: denied by dana (no WHERE)" in text
    assert "ERROR 42501: pgguard: denied by dana" in text
    assert "#11 HELD, TIMED OUT" in text and "approval req-9: timed out" in text
    assert "NOTICE 01000: pgguard: held for approval as req-7" in text
    assert "statements   4;  refused 0;  held 3;  errors 1" in text
    # the clipped cell, the row past the cap, binary and NULL parameters, the error with no statement
    assert "a***@exa… [16 bytes in all]" in text and "(3 rows) (the log keeps the first 2)" in text
    assert "$1 = \\x00000005" in text and "$2 = NULL" in text and "$3 = text val… [10 bytes in all]" in text
    assert 'ERROR 26000: prepared statement "x" does not exist' in text
    assert "integrity: intact: 17 records, all signed, closed" in text
    assert "from-the-future" not in text


def test_list_counts_held_statements(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, "--dir", str(directory), "list", "--json")
    assert status == 0
    (row,) = json.loads(text)
    assert (row["statements"], row["refused"], row["held"], row["errors"]) == (4, 0, 3, 1)
    assert row["user"] == "erin" and row["application"] == "psql" and row["duration"] == 100.0


def test_exports_carry_the_approvals(directory: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, "--dir", str(directory), "export", HELD, "--format", "json")
    assert status == 0
    exported = json.loads(text)
    assert exported["integrity"]["verdict"] == "not verified"
    held = exported["statements"][1]
    assert held["outcome"] == "held, approved" and held["tables"] == ["orders"]
    assert [(a["event"], a["by"]) for a in held["approvals"]] == [("requested", None), ("approved", "dana")]
    assert exported["unattached"][0]["error"]["sqlstate"] == "26000"
    status, page = run(capsys, "--dir", str(directory), "export", HELD, "--format", "html")
    assert status == 0 and "approved</b> by <b>dana</b> (INC-42)" in page and "HELD, TIMED OUT" in page


def test_search_finds_held_statements_by_what_became_of_them(directory: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    status, text = run(capsys, "--dir", str(directory), "search", "--decision", "denied", "--json")
    assert status == 0 and [hit["sql"] for hit in json.loads(text)] == ["UPDATE orders SET total = $1"]
    status, text = run(capsys, "--dir", str(directory), "search", "--decision", "held", "--table", "orders", "--json")
    assert [hit["seq"] for hit in json.loads(text)] == [3, 8]
    status, text = run(capsys, "--dir", str(directory), "search", "--since", "2026-09-21T14:14:15Z", "--json")
    assert [hit["seq"] for hit in json.loads(text)] == [11]  # statement times, not only sessions'


def test_values_are_escaped_not_interpreted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = RowCapture(Limits())
    rows.add([b"[bold red]x[/] <script>alert(1)</script>"])
    write_log(tmp_path, HELD, [
        records.statement(protocol="simple", sql="SELECT '[red]</pre>'", decision="allowed", limits=LIMITS,
                          at=START + 1),
        records.result(statement=1, columns=[("v", 25, 0)], rows=rows, command_tag="SELECT 1", duration_ms=1,
                       limits=LIMITS, at=START + 2)])
    status, text = run(capsys, "--dir", str(tmp_path), "show", HELD)
    assert "[bold red]x[/] <script>alert(1)</script>" in text and "SELECT '[red]</pre>'" in text
    status, page = run(capsys, "--dir", str(tmp_path), "export", HELD, "--format", "html")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "SELECT &#x27;[red]&lt;/pre&gt;&#x27;" in page


def test_a_torn_tail_is_the_end_of_a_live_log_not_an_error(tmp_path: Path) -> None:
    path = write_log(tmp_path, HELD, held_session(), close=False)
    path.write_bytes(path.read_bytes() + b"\x00\x00\x01")
    session = load(path)
    assert session.torn == "3 bytes of an unfinished record at byte %d" % (path.stat().st_size - 3)
    assert session.state == "open" and len(session.statements) == 4 and session.damage is None


def test_damage_ends_the_transcript_where_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_log(tmp_path, HELD, held_session())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    session = load(path)
    assert session.damage is not None and session.damage.startswith("record ")
    status, text = run(capsys, "--dir", str(tmp_path), "show", HELD)
    assert status == 0 and "DAMAGED: record " in text


def test_a_file_that_is_not_a_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pgglog").write_bytes(b"")
    status, text = run(capsys, "--dir", str(tmp_path), "show", "junk")
    assert status == 2 and "not a session log" in text
    status, text = run(capsys, "--dir", str(tmp_path), "list", "--json")
    assert status == 0 and json.loads(text) == []
    status, text = run(capsys, "--dir", str(tmp_path / "missing"), "list")
    assert status == 2 and "no session directory" in text


# What an agent might put in the log to act on the responder's terminal: clear the screen, a
# hyperlink hiding its target, a carriage return and a line break forging an earlier or a new
# line, a C1 escape (CSI), a right-to-left override reversing what follows.
HOSTILE = "\x1b[2J\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\ ok\rREFUSED\n[14:13:21.000] #9 ALLOWED \x9b2J \u202egnp.exe"
HOSTILE_SHOWN = ("\\x1B[2J\\x1B]8;;http://evil.example\\x1B\\link\\x1B]8;;\\x1B\\ ok\\rREFUSED\\n"
                 "[14:13:21.000] #9 ALLOWED \\u009B2J \\u202Egnp.exe")


def hostile_session() -> list[Record]:
    rows = RowCapture(Limits())
    rows.add([HOSTILE.encode()])
    return [
        records.statement(protocol="extended", sql=f"SELECT '{HOSTILE}'", decision="allowed",
                          parameters=[HOSTILE], reason=HOSTILE, limits=Limits(), at=START + 1),
        records.result(statement=1, columns=[(HOSTILE, 25, 0)], rows=rows, command_tag=HOSTILE, duration_ms=1,
                       limits=Limits(), at=START + 2),
        records.notice(statement=1, severity="NOTICE", sqlstate="00000", message=HOSTILE, limits=Limits(),
                       at=START + 3),
        records.approval(statement=1, request=HOSTILE, event="approved", by=HOSTILE, reason=HOSTILE, at=START + 4),
        records.result(statement=None, error=("42P01", f'relation "{HOSTILE}" does not exist'), duration_ms=0,
                       limits=Limits(), at=START + 5),
    ]


@pytest.mark.parametrize("command", [["show", HELD], ["play", HELD, "--speed", "1000"], ["list"],
                                     ["search", "--sql", "select"], ["verify", HELD]])
def test_no_escape_sequence_or_line_break_from_the_log_reaches_the_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    write_log(tmp_path, HELD, hostile_session(), user=HOSTILE, application=HOSTILE)
    status, text = run(capsys, "--dir", str(tmp_path), "--jwks", str(write_jwks(tmp_path / "jwks.json")), *command)
    assert status == 0, text
    for raw in ("\x1b", "\r", "\x9b", "\u202e"):
        assert raw not in text
    assert not any(line.startswith("[14:13:21.000] #9") for line in text.splitlines())
    if command[0] in ("show", "play"):
        # every value that holds the text, shown with its escapes
        assert text.count(HOSTILE_SHOWN) >= 12, text
    elif command[0] == "list":
        assert text.count(HOSTILE_SHOWN) == 2, text  # user and application
    elif command[0] == "search":
        assert "\\x1B[2J" in text


def test_verify_all_reports_every_log_even_one_without_a_readable_header(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A log whose header was damaged, or that was emptied, is not a session `list` can show; but
    `verify --all` must still fail on it, or spoiling the first byte would hide a whole session."""
    write_jwks(tmp_path / "jwks.json")
    write_log(tmp_path, HELD, held_session())
    damaged = write_log(tmp_path, "20260921T141320Z-bbbbbbbbbbbb", held_session())
    damaged.write_bytes(b"\xff" + damaged.read_bytes()[1:])
    status, text = run(capsys, "--dir", str(tmp_path), "--jwks", str(tmp_path / "jwks.json"), "verify", "--all")
    assert status == 1, text
    assert "FAILED     20260921T141320Z-bbbbbbbbbbbb.pgglog: FAILED at record 0: damaged" in text
    assert f"INTACT     {HELD}" in text and "2 session logs verified" in text

    emptied = tmp_path / "20260921T141320Z-cccccccccccc.pgglog"
    emptied.write_bytes(b"")
    old = START  # long ago: no gateway is about to write its header
    os.utime(emptied, (old, old))
    damaged.unlink()
    status, text = run(capsys, "--dir", str(tmp_path), "--jwks", str(tmp_path / "jwks.json"), "verify", "--all")
    assert status == 3, text
    assert "INCOMPLETE 20260921T141320Z-cccccccccccc.pgglog: INCOMPLETE: 0 records verify" in text

    os.utime(emptied)  # just created: its gateway has yet to write the header
    status, text = run(capsys, "--dir", str(tmp_path), "--jwks", str(tmp_path / "jwks.json"), "verify", "--all")
    assert status == 0 and "LIVE       20260921T141320Z-cccccccccccc.pgglog" in text, text
