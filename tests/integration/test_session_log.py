"""Session logs written by the real gateway for real clients: their records, their integrity,
a killed gateway, and a full disk that stops statements rather than let them run unrecorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgguard.audit.verify import read_records, verify
from pgguard.config import load
from pgguard.demo.data import DATABASE
from pgguard.identity.tokens import load_signing_key
from pgguard.wire import backend, frontend
from conftest import PostgresServer, RunningGateway
from helpers import scratch_table, unique_name
from rawclient import RawConnection, config_edit, set_keys

Records = list[dict[str, Any]]


def session_dir(gateway: RunningGateway) -> Path:
    return load(gateway.config_path).gateway.session_dir


def public_keys(gateway: RunningGateway) -> dict[str, Any]:
    key = load(gateway.config_path).identity.signing_keys[0]
    return {key.kid: load_signing_key(key).public_key()}


def find_log(gateway: RunningGateway, application: str, *, closed: bool = True, timeout: float = 10) -> Path:
    """The log of the session that set `application_name`, once it has its close record."""
    deadline = time.monotonic() + timeout
    while True:
        for path in session_dir(gateway).glob("*.pgglog"):
            entries = list(read_records(path))
            if entries and entries[0].record.get("application_name") == application:
                if not closed or any(e.record["type"] == "close" for e in entries):
                    return path
        if time.monotonic() > deadline:
            raise AssertionError(f"no {'closed ' if closed else ''}session log for {application}")
        time.sleep(0.05)


def records_of(path: Path) -> Records:
    return [entry.record for entry in read_records(path)]


def story(records: Records) -> list[tuple[Any, ...]]:
    """Each statement with its decision, and each result with its statement, tag and error."""
    told: list[tuple[Any, ...]] = []
    for record in records:
        if record["type"] == "statement":
            told.append(("statement", record["seq"], record["sql"], record["decision"]))
        elif record["type"] == "result":
            error = record["error"]["sqlstate"] if record["error"] else None
            told.append(("result", record["statement"], record["command_tag"], error))
    return told


def test_a_session_of_reads_writes_a_refusal_an_error_copy_and_a_cancel(gateway: RunningGateway) -> None:
    application = unique_name("log")
    with psycopg.connect(gateway.dsn("support", application_name=application), autocommit=True) as conn:
        conn.execute("SELECT id, email FROM customers ORDER BY id LIMIT 2", prepare=False)
        with conn.transaction(force_rollback=True):
            conn.execute("INSERT INTO tickets (customer_id, subject, body, status) "
                         "VALUES (1, 'log test', 'body', 'open')", prepare=False)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM orders", prepare=False)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0", prepare=False)
        with conn.cursor().copy("COPY (SELECT id FROM orders ORDER BY id LIMIT 3) TO STDOUT") as copy:
            copied = b"".join(bytes(block) for block in copy)
        assert copied == b"1\n2\n3\n"
        threading.Timer(0.5, conn.cancel).start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(10)", prepare=False)
    records = records_of(find_log(gateway, application))

    header = records[0]
    assert header["type"] == "header" and header["identity"]["username"] == "sam"
    assert header["identity"]["roles"] == ["support"] and header["target"] == "demo"
    assert header["tls"]["version"].startswith("TLS") and header["client_address"].startswith("127.0.0.1:")
    body = [r for r in records if r["type"] not in ("checkpoint", "notice")]
    assert [r["seq"] for r in records] == list(range(len(records)))
    told = story(body)
    statements = {sql: seq for kind, seq, sql, _ in (t for t in told if t[0] == "statement")}
    select = statements["SELECT id, email FROM customers ORDER BY id LIMIT 2"]
    insert_sql = "INSERT INTO tickets (customer_id, subject, body, status) VALUES (1, 'log test', 'body', 'open')"
    insert = statements[insert_sql]
    delete = statements["DELETE FROM orders"]
    assert told == [
        ("statement", select, "SELECT id, email FROM customers ORDER BY id LIMIT 2", "allowed"),
        ("result", select, "SELECT 2", None),
        ("statement", statements["BEGIN"], "BEGIN", "allowed"),
        ("result", statements["BEGIN"], "BEGIN", None),
        ("statement", insert, insert_sql, "allowed"),
        ("result", insert, "INSERT 0 1", None),
        ("statement", statements["ROLLBACK"], "ROLLBACK", "allowed"),
        ("result", statements["ROLLBACK"], "ROLLBACK", None),
        ("statement", delete, "DELETE FROM orders", "refused"),
        ("result", delete, None, "42501"),
        ("statement", statements["SELECT 1/0"], "SELECT 1/0", "allowed"),
        ("result", statements["SELECT 1/0"], None, "22012"),
        ("statement", told[12][1], "COPY (SELECT id FROM orders ORDER BY id LIMIT 3) TO STDOUT", "allowed"),
        ("result", told[12][1], "COPY 3", None),
        ("statement", told[14][1], "SELECT pg_sleep(10)", "allowed"),
        ("result", told[14][1], None, "57014"),
    ]
    results = [r for r in body if r["type"] == "result"]
    # Support sees emails raw: the rows are recorded as the client received them.
    assert results[0]["columns"] == [["id", 23, 0], ["email", 25, 0]]
    assert results[0]["row_count"] == 2 and results[0]["rows"][0][1].endswith(b".example") is False
    refused = next(r for r in body if r["seq"] == delete)
    assert refused["rule"] and "orders" in refused["reason"] and refused["classes"] == ["write"]
    assert results[6]["rows"] == [[b"1\n"], [b"2\n"], [b"3\n"]]
    assert results[7]["duration_ms"] >= 400
    close = next(r for r in records if r["type"] == "close")
    assert close["counts"]["statements"] == 8 and close["counts"]["refused"] == 1 and close["counts"]["errors"] == 3
    assert close["reason"] == "client terminated" and close["bytes_in"] > 0 and close["bytes_out"] > 0
    assert records[-1]["type"] == "checkpoint"
    assert verify(find_log(gateway, application), public_keys(gateway)).ok


def test_parameters_are_recorded_through_the_detectors(gateway: RunningGateway) -> None:
    application = unique_name("log")
    card = "4111 1111 1111 1111"
    with psycopg.connect(gateway.dsn("dba", application_name=application)) as conn:
        row = conn.execute("SELECT %s::text, %s::text, %s::int", ["x@mail.example", card, 7]).fetchone()
        assert row == ("x@mail.example", card, 7)  # the dba is masked nothing
    records = records_of(find_log(gateway, application))
    statement = next(r for r in records if r["type"] == "statement" and r["protocol"] == "extended")
    assert statement["sql"] == "SELECT $1::text, $2::text, $3::int"
    recorded = statement["parameters"]
    assert "x@mail.example" not in str(recorded) and "1111 1111 1111" not in str(recorded)
    # psycopg sends an int in binary, as the smallest integer type that holds it
    assert recorded[2] == "7" or int.from_bytes(recorded[2], "big") == 7
    result = next(r for r in records if r["type"] == "result" and r["statement"] == statement["seq"])
    assert result["rows"][0][0] == b"x@mail.example"  # rows as the client received them


def test_masked_rows_are_recorded_masked(gateway: RunningGateway, postgres: PostgresServer) -> None:
    application = unique_name("log")
    with psycopg.connect(gateway.dsn("analyst", application_name=application)) as conn:
        conn.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 5").fetchall()
    with psycopg.connect(postgres.dsn()) as direct:
        raw = direct.execute("SELECT email, ssn FROM customers ORDER BY id LIMIT 5").fetchall()
    result = next(r for r in records_of(find_log(gateway, application))
                  if r["type"] == "result" and r["row_count"] == 5)
    logged = b"".join(cell or b"" for row in result["rows"] for cell in row)
    for email, ssn in raw:
        assert email.split("@")[0].encode() not in logged and ssn.encode() not in logged


def test_every_statement_of_a_session_is_in_its_log_in_order(gateway: RunningGateway) -> None:
    application = unique_name("log")
    with psycopg.connect(gateway.dsn("analyst", application_name=application), autocommit=True) as conn:
        with conn.pipeline():
            for n in range(20):
                conn.execute("SELECT %s::int", [n])
    records = records_of(find_log(gateway, application))
    executed = [r for r in records if r["type"] == "statement"]
    values = [int(v) if isinstance(v, str) else int.from_bytes(v, "big") for v in (r["parameters"][0] for r in executed)]
    assert values == list(range(20))
    results = [r for r in records if r["type"] == "result"]
    assert [r["statement"] for r in results] == [r["seq"] for r in executed]


@pytest.mark.parametrize("identity", ["analyst", "dba"])
def test_no_statement_runs_whose_text_the_log_no_longer_holds(gateway: RunningGateway, identity: str) -> None:
    """A client that prepared more than 1,000 statements runs one it prepared before them, with no
    Parse. It ran with an empty statement record (the agent's way to run a statement the log cannot
    show). The policy guard follows every name the server holds, so a guarded session's record
    names it; a session nothing guards (dba) has only the recorder's memory, and is refused."""
    application = unique_name("log")
    hidden = "SELECT full_name FROM customers WHERE id = %s"
    with psycopg.connect(gateway.dsn(identity, application_name=application), autocommit=True) as conn:
        conn.prepared_max = 2000
        conn.execute(hidden, [1], prepare=True)
        for n in range(1000):
            conn.execute(f"SELECT {n} AS n", prepare=True)
        if identity == "dba":
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as caught:
                conn.execute(hidden, [2], prepare=True)
            assert "the session log does not hold the text of prepared statement '_pg3_0'" in str(caught.value)
        else:
            assert conn.execute(hidden, [2], prepare=True).fetchone() is not None
        conn.execute("SELECT 1000 AS n", prepare=True)  # the last ones still run, and the session goes on
        assert conn.execute("SELECT 1", prepare=False).fetchone() == (1,)
    statements = [r for r in records_of(find_log(gateway, application)) if r["type"] == "statement"]
    assert len(statements) == 1004
    assert all(r["sql"] for r in statements), [r for r in statements if not r["sql"]]
    if identity == "dba":
        assert statements[-3]["decision"] == "refused" and "_pg3_0" in statements[-3]["sql"]
    else:
        assert (statements[-3]["decision"], statements[-3]["sql"]) == ("allowed", hidden.replace("%s", "$1"))
    assert [r["decision"] for r in statements[-2:]] == ["allowed", "allowed"]


def test_a_statement_prepared_again_under_its_name_is_logged_as_either(gateway: RunningGateway) -> None:
    """A Parse of a name the server holds fails, and the name keeps its statement: the log took the
    failed Parse's text for what ran, and the text of what ran appeared nowhere. Which one runs is
    not known for sure when the Bind goes, so the record holds both."""
    application = unique_name("log")
    hidden = "SELECT full_name FROM customers ORDER BY id LIMIT 1"
    ident = gateway.identities["analyst"]
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.send(frontend.Parse("m", hidden, []), frontend.Sync(),
                  frontend.Parse("m", "SELECT 'harmless' AS full_name", []), frontend.Sync(),
                  frontend.Bind("", "m", [], [], []), frontend.Execute("", 0), frontend.Sync())
        answers: list[list[object]] = []
        for _ in range(3):
            messages = []
            while not isinstance(message := conn.receive(), backend.ReadyForQuery):
                messages.append(message)
            answers.append(messages)
    assert [m.code for m in answers[1] if isinstance(m, backend.ErrorResponse)] == ["42P05"]
    assert [m.values for m in answers[2] if isinstance(m, backend.DataRow)] != [[b"harmless"]]
    statements = [r for r in records_of(find_log(gateway, application)) if r["type"] == "statement"]
    assert [r["decision"] for r in statements] == ["allowed"]
    assert statements[0]["sql"] == ("-- prepared statement 'm' holds one of these (a Parse of it failed, or may have):\n"
                                    f"{hidden}\n-- or:\nSELECT 'harmless' AS full_name")


def test_a_statement_made_with_sql_prepare_is_logged_with_its_text_when_bound(gateway: RunningGateway) -> None:
    """DEALLOCATE and PREPARE in SQL change what a name holds; the log named the Parse it held before."""
    application = unique_name("log")
    ident = gateway.identities["analyst"]
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.send(frontend.Parse("s", "SELECT 'harmless' AS word", []), frontend.Sync())
        conn.receive_until(backend.ReadyForQuery)
        conn.query("DEALLOCATE s; PREPARE s AS SELECT full_name AS word FROM customers ORDER BY id LIMIT 1")
        conn.send(frontend.Bind("", "s", [], [], []), frontend.Execute("", 0), frontend.Sync())
        rows, _ = conn.receive_until(backend.ReadyForQuery)
        assert [m for m in rows if isinstance(m, backend.DataRow)] != []
    statements = [r for r in records_of(find_log(gateway, application)) if r["type"] == "statement"]
    # the PREPARE that made what runs
    assert statements[-1]["sql"] == "PREPARE s AS SELECT full_name AS word FROM customers ORDER BY id LIMIT 1"


def test_an_execute_of_a_portal_from_an_ended_transaction_is_not_logged_as_its_old_statement(
        gateway: RunningGateway) -> None:
    """A portal ends with its transaction; a cursor DECLAREd later under its name is another
    statement. Its Execute was logged with the old portal's harmless SQL, beside the rows the
    cursor returned; the record names the DECLARE now."""
    application = unique_name("log")
    ident = gateway.identities["analyst"]
    declare = "DECLARE p CURSOR FOR SELECT full_name FROM customers ORDER BY id"
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.send(frontend.Parse("s", "SELECT 'harmless' AS word", []), frontend.Bind("p", "s", [], [], []),
                  frontend.Execute("p", 0), frontend.Sync())
        _, ready = conn.receive_until(backend.ReadyForQuery)
        assert ready.status == "I"  # the transaction, and portal p, are over
        _, ready = conn.query(f"BEGIN; {declare}")
        assert ready.status == "T"
        conn.send(frontend.Execute("p", 1), frontend.Sync())
        rows, _ = conn.receive_until(backend.ReadyForQuery)
        assert len([m for m in rows if isinstance(m, backend.DataRow)]) == 1
        conn.query("ROLLBACK")
    statements = [r for r in records_of(find_log(gateway, application)) if r["type"] == "statement"]
    assert [r["sql"] for r in statements] == ["SELECT 'harmless' AS word", f"BEGIN; {declare}", declare, "ROLLBACK"]


@pytest.mark.parametrize("identity", ["analyst", "dba"])
def test_an_execute_of_a_portal_the_log_cannot_name_is_refused(gateway: RunningGateway, identity: str) -> None:
    """Without a guard (dba), or for a name the guard does not know either, the Execute is refused."""
    application = unique_name("log")
    ident = gateway.identities[identity]
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.query("BEGIN; DECLARE q CURSOR FOR SELECT 1" if identity == "dba" else "BEGIN")
        conn.send(frontend.Execute("q", 1), frontend.Sync())
        messages = []
        while not isinstance(message := conn.receive(), backend.ReadyForQuery):
            messages.append(message)
        assert [m.code for m in messages if isinstance(m, backend.ErrorResponse)] == ["42501"], messages
        conn.query("ROLLBACK")
    statements = [r for r in records_of(find_log(gateway, application)) if r["type"] == "statement"]
    assert statements[1]["decision"] == "refused" and "portal 'q'" in statements[1]["sql"]


def test_a_killed_gateway_leaves_a_log_that_verifies_up_to_its_end(
        gateway_factory: Callable[..., RunningGateway]) -> None:
    running = gateway_factory()
    application = unique_name("log")
    conn = psycopg.connect(running.dsn("analyst", application_name=application), autocommit=True)
    try:
        for n in range(50):
            conn.execute("SELECT %s::int", [n])
        running.process.send_signal(signal.SIGKILL)
        running.process.wait(10)
    finally:
        conn.close()
    path = find_log(running, application, closed=False)
    report = verify(path, public_keys(running))
    kinds = [problem.kind for problem in report.problems]
    assert kinds and set(kinds) <= {"torn", "open", "unsigned"}, report.problems
    assert sum(1 for r in records_of(path) if r["type"] == "statement") >= 1


def test_a_torn_tail_is_reported_and_the_records_before_it_verify(
        gateway: RunningGateway, tmp_path: Path) -> None:
    application = unique_name("log")
    with psycopg.connect(gateway.dsn("analyst", application_name=application)) as conn:
        conn.execute("SELECT 1")
    original = find_log(gateway, application)
    torn = tmp_path / original.name
    torn.write_bytes(original.read_bytes()[:-7])
    report = verify(torn, public_keys(gateway))
    assert [p.kind for p in report.problems][0] == "torn"
    assert report.problems[0].index == len(records_of(original)) - 1


def fill(directory: Path) -> Path:
    """Takes every free byte of the filesystem under `directory`; the file to remove to give them back."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_refuses_statements_and_nothing_unrecorded_runs(
        gateway_factory: Callable[..., RunningGateway], small_disk: Path, postgres: PostgresServer) -> None:
    sessions = small_disk / "sessions"

    def edit(text: str) -> str:
        return set_keys(set_keys(text, "gateway", {"session_dir": str(sessions)}), "audit", {"reserve_bytes": 16384})

    running = gateway_factory(edit)
    padding = "x" * 3000  # each statement record is over 3 KB: the reservation runs out fast
    with scratch_table(postgres.dsn(), "id int PRIMARY KEY") as table:
        application = unique_name("log")
        with psycopg.connect(running.dsn("dba", application_name=application), autocommit=True) as conn:
            filler = fill(small_disk)
            refused: psycopg.Error | None = None
            n = 0
            while n < 200:
                try:
                    conn.execute(f"INSERT INTO {table} VALUES ({n}) -- {padding}", prepare=False)
                    n += 1
                except psycopg.Error as exc:
                    refused = exc
                    if exc.sqlstate == "53100":
                        break
                    # Refused while the writer was still reserving space: for now, try again.
                    assert exc.sqlstate == "53000" and "reserving disk space" in str(exc), exc
                    time.sleep(0.05)
            assert refused is not None and refused.sqlstate == "53100", "a full disk never stopped a statement"
            assert str(refused).startswith("pgguard: statement not run: no disk space for the session log")
            stopped_at = n
            with pytest.raises(psycopg.Error) as again:
                conn.execute(f"INSERT INTO {table} VALUES (1000) -- {padding}", prepare=False)
            assert again.value.sqlstate == "53100"
            filler.unlink()
            time.sleep(0.2)
            # Space is back: statements run again, once the writer has reserved some.
            for _ in range(50):
                try:
                    conn.execute(f"INSERT INTO {table} VALUES (2000)", prepare=False)
                    break
                except psycopg.Error as exc:
                    assert exc.sqlstate in ("53100", "53000")
                    time.sleep(0.1)
            else:
                raise AssertionError("statements stayed refused after space came back")
        with psycopg.connect(postgres.dsn()) as direct:
            stored = {row[0] for row in direct.execute(f"SELECT id FROM {table}")}
        path = find_log(running, application)
        recorded = {int(r["sql"].split("VALUES (")[1].split(")")[0]) for r in records_of(path)
                    if r["type"] == "statement" and r["sql"].startswith("INSERT")}
        assert stored == set(range(stopped_at)) | {2000}
        assert stored <= recorded and 1000 not in recorded
        assert verify(path, public_keys(running)).ok


def test_a_gateway_that_cannot_create_logs_refuses_sessions(
        gateway_factory: Callable[..., RunningGateway], tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")

    running = gateway_factory(config_edit({"gateway": {"session_dir": f"{blocked}/sessions"}}))
    with pytest.raises(psycopg.OperationalError, match="cannot open the session log"):
        psycopg.connect(running.dsn("analyst")).close()
    assert "cannot open its session log" in running.log_text()


def test_logs_can_be_turned_off(gateway_factory: Callable[..., RunningGateway]) -> None:
    running = gateway_factory(config_edit({"audit": {"enabled": False}}))
    with psycopg.connect(running.dsn("analyst")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not list(session_dir(running).glob("*.pgglog"))
    assert "sessions are not recorded" in running.log_text()


def test_prune_removes_finished_logs_older_than_the_retention(gateway: RunningGateway, tmp_path: Path) -> None:
    application = unique_name("log")
    with psycopg.connect(gateway.dsn("analyst", application_name=application)) as conn:
        conn.execute("SELECT 1")
    path = find_log(gateway, application)
    copy = tmp_path / "sessions" / path.name
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())
    old = time.time() - 3 * 86400
    os.utime(copy, (old, old))
    config = tmp_path / "pgguard.toml"
    config.write_text(config_edit({"gateway": {"session_dir": str(copy.parent)}, "audit": {"retention": "2d"}})(
        gateway.config_path.read_text()))
    done = subprocess.run([sys.executable, "-m", "pgguard.cli", "sessions", "prune", "-c", str(config)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not copy.exists() and path.name in done.stdout


@pytest.mark.parametrize("identity", ["engineer", "dba"])
def test_results_after_copy_from_stdin_in_the_extended_protocol_are_logged_with_their_statements(
        gateway: RunningGateway, identity: str) -> None:
    """libpq sends a Sync right after the Execute of a COPY FROM STDIN, which the server ignores. The log counted it,
    and from then on recorded each statement with the result of the one after it (for the dba too, whose statements
    are not analysed)."""
    application = unique_name("log")
    ident = gateway.identities[identity]
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.query("BEGIN")
        conn.send(frontend.Parse("", "COPY orders (id, customer_id, total, status, created_at) FROM STDIN", []),
                  frontend.Bind("", "", [], [], []), frontend.Execute("", 0), frontend.Sync())
        conn.expect(backend.ParseComplete)
        conn.expect(backend.BindComplete)
        conn.expect(backend.CopyInResponse)
        conn.send(frontend.CopyData(b"999101\t1\t1.00\tnew\t2024-01-01\n"), frontend.CopyDone(), frontend.Sync())
        conn.receive_until(backend.ReadyForQuery)
        for word in ("first", "second"):
            conn.query(f"SELECT '{word}'")
        conn.query("ROLLBACK")
    records = records_of(find_log(gateway, application))
    sql = {r["seq"]: r["sql"] for r in records if r["type"] == "statement"}
    told = [(sql[r["statement"]], r["command_tag"], r["rows"]) for r in records if r["type"] == "result"]
    assert told[-3:] == [("SELECT 'first'", "SELECT 1", [[b"first"]]), ("SELECT 'second'", "SELECT 1", [[b"second"]]),
                         ("ROLLBACK", "ROLLBACK", [])], told


def test_results_after_a_query_inside_a_failed_batch_are_logged_with_their_statements(gateway: RunningGateway) -> None:
    """The server skips a Query sent inside a batch after an error; in a session whose statements are not analysed
    (the dba's), the log counted it, and recorded the next statement with the skipped one's result."""
    application = unique_name("log")
    ident = gateway.identities["dba"]
    with RawConnection.to(gateway) as conn:
        conn.login(ident.user, ident.token, DATABASE, application_name=application)
        conn.send(frontend.Parse("", "SELECT 'x'::int4", []), frontend.Query("SELECT 'skipped?'"), frontend.Sync())
        conn.receive_until(backend.ErrorResponse)
        conn.receive_until(backend.ReadyForQuery)
        conn.receive_until(backend.ReadyForQuery)
        conn.query("SELECT 'after'")
    records = records_of(find_log(gateway, application))
    sql = {r["seq"]: r["sql"] for r in records if r["type"] == "statement"}
    told = [(sql[r["statement"]], r["rows"]) for r in records if r["type"] == "result"]
    assert told[-1] == ("SELECT 'after'", [[b"after"]]), told
