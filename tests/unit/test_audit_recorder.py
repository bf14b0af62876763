"""The recorder pairs server answers with the statements that asked for them, as the server does."""

from __future__ import annotations

from pgguard.audit.recorder import SessionRecorder
from pgguard.audit.records import Limits, Record
from pgguard.masking.detectors import Scrubber
from pgguard.policy.guard import Decision
from pgguard.wire import backend
from pgguard.wire.backend import FieldDescription


class FakeLog:
    """A SessionLogWriter's synchronous side, keeping records in a list."""

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.refusal = ""
        self.full = False
        self.out_of_space = False
        self.closed: Record | None = None

    def admit(self, record: Record) -> int | None:
        if self.full:
            self.refusal = "no disk space for the session log (No space left on device)"
            return None
        return self.emit(record)

    def emit(self, record: Record) -> int | None:
        self.records.append(record)
        return len(self.records)  # the header is seq 0

    def close(self, record: Record) -> None:
        self.closed = record

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r["type"] == kind]


def recorder(log: FakeLog, limits: Limits = Limits()) -> SessionRecorder:
    return SessionRecorder(log, limits, Scrubber(["email", "card_number"]))


def serve(rec: SessionRecorder, *messages: object) -> None:
    for message in messages:
        data = message.encode()  # type: ignore[attr-defined]
        rec.server(data[0], data)


def columns(*names: str) -> backend.RowDescription:
    return backend.RowDescription([FieldDescription(name, 0, 0, 25, -1, -1, 0) for name in names])


def test_a_simple_query_with_two_statements_gets_one_statement_and_two_results() -> None:
    log = FakeLog()
    rec = recorder(log)
    assert rec.query("SELECT 1; SELECT 'a', 'b'", ("read",), None, runs=True)
    serve(rec, columns("x"), backend.DataRow([b"1"]), backend.CommandComplete("SELECT 1"),
          columns("a", "b"), backend.DataRow([b"a", b"b"]), backend.CommandComplete("SELECT 1"),
          backend.ReadyForQuery("I"))
    statement, first, second = log.records
    assert statement["sql"] == "SELECT 1; SELECT 'a', 'b'" and statement["decision"] == "allowed"
    assert statement["classes"] == ["read"] and statement["protocol"] == "simple"
    assert [first["statement"], second["statement"]] == [1, 1]
    assert first["columns"] == [["x", 25, 0]] and first["rows"] == [[b"1"]]
    assert second["rows"] == [[b"a", b"b"]] and second["command_tag"] == "SELECT 1"


def test_extended_batch_pairs_each_execute_with_its_result_and_scrubs_parameters() -> None:
    log = FakeLog()
    rec = recorder(log)
    rec.parse("", "SELECT $1::text", ("read",), None)
    rec.bind("", "", [0], [b"alice@example.com"], "utf-8")
    assert rec.execute("")
    rec.parse("s2", "SELECT 2", ("read",), None)
    rec.bind("p", "s2", [], [], "utf-8")
    assert rec.execute("p")
    rec.sync()
    serve(rec, backend.ParseComplete(), backend.BindComplete(), backend.DataRow([b"x"]),
          backend.CommandComplete("SELECT 1"), backend.ParseComplete(), backend.BindComplete(),
          backend.DataRow([b"2"]), backend.CommandComplete("SELECT 1"), backend.ReadyForQuery("I"))
    first, second, result1, result2 = log.records
    assert first["sql"] == "SELECT $1::text" and first["parameters"] == ["*****@example.com"]
    assert second["sql"] == "SELECT 2"
    assert (result1["statement"], result1["rows"]) == (1, [[b"x"]])
    assert (result2["statement"], result2["rows"]) == (2, [[b"2"]])


def test_an_error_skips_the_rest_of_the_batch_to_sync() -> None:
    log = FakeLog()
    rec = recorder(log)
    for sql in ("SELECT 1/0", "SELECT 2"):
        rec.parse("", sql, (), None)
        rec.bind("", "", [], [], "utf-8")
        rec.execute("")
    rec.sync()
    rec.query("SELECT 3", (), None, runs=True)
    serve(rec, backend.ParseComplete(), backend.BindComplete(),
          backend.ErrorResponse.build("ERROR", "22012", "division by zero"), backend.ReadyForQuery("I"),
          columns("x"), backend.DataRow([b"3"]), backend.CommandComplete("SELECT 1"), backend.ReadyForQuery("I"))
    results = log.of("result")
    assert [r["statement"] for r in results] == [1, 3]
    assert results[0]["error"] == {"sqlstate": "22012", "message": "division by zero"}
    assert results[1]["rows"] == [[b"3"]]


def test_a_refused_parse_is_recorded_with_its_rule_and_its_executes_are_not() -> None:
    log = FakeLog()
    rec = recorder(log)
    refusal = Decision(False, None, "roles.analysts", "DELETE is a write; the role may only read")
    rec.parse("", "DELETE FROM orders", ("write",), refusal)
    rec.bind("", "", [], [], "utf-8")
    assert rec.execute("")
    rec.sync()
    serve(rec, backend.ErrorResponse.build("ERROR", "42501", "pgguard: DELETE refused"), backend.ReadyForQuery("I"))
    statement, result = log.records
    assert statement["decision"] == "refused" and statement["rule"] == "roles.analysts"
    assert statement["reason"].startswith("DELETE is a write")
    assert result["statement"] == 1 and result["error"]["sqlstate"] == "42501"
    assert rec.counts["refused"] == 1 and rec.counts["statements"] == 1


def test_a_statement_whose_record_cannot_be_admitted_is_not_to_run() -> None:
    log = FakeLog()
    log.full = True
    log.out_of_space = True
    rec = recorder(log)
    assert not rec.query("DELETE FROM orders", ("write",), None, runs=True)
    assert rec.refusal_sqlstate == "53100"
    serve(rec, backend.ErrorResponse.build("ERROR", "53100", "pgguard: statement not run"), backend.ReadyForQuery("I"))
    assert log.records == []  # neither the statement nor the answer to its stand-in
    log.full = False
    assert rec.query("SELECT 1", (), None, runs=True)
    assert log.records[0]["sql"] == "SELECT 1"


def test_an_error_answering_no_execute_is_recorded_without_a_statement() -> None:
    log = FakeLog()
    rec = recorder(log)
    rec.parse("s", "SELEC 1", (), None)
    rec.sync()
    serve(rec, backend.ErrorResponse.build("ERROR", "42601", "syntax error"), backend.ReadyForQuery("I"))
    (result,) = log.records
    assert result["statement"] is None and result["error"]["sqlstate"] == "42601"


def test_rows_past_the_cap_are_counted_not_kept_and_copy_data_is_rows() -> None:
    log = FakeLog()
    rec = recorder(log, Limits(max_rows=2))
    rec.query("COPY t TO STDOUT", (), None, runs=True)
    serve(rec, *(backend.CopyData(f"{i}\n".encode()) for i in range(5)), backend.CommandComplete("COPY 5"))
    (_, result) = log.records
    assert result["row_count"] == 5 and result["rows"] == [[b"0\n"], [b"1\n"]] and result["rows_truncated"]


def test_notices_belong_to_the_statement_being_answered() -> None:
    log = FakeLog()
    rec = recorder(log)
    rec.query("DO $$ BEGIN RAISE NOTICE 'hi'; END $$", (), None, runs=True)
    serve(rec, backend.NoticeResponse.build("NOTICE", "00000", "hi"), backend.CommandComplete("DO"),
          backend.ReadyForQuery("I"))
    notice = log.of("notice")[0]
    assert (notice["statement"], notice["severity"], notice["message"]) == (1, "NOTICE", "hi")


def test_close_counts_what_happened() -> None:
    log = FakeLog()
    rec = recorder(log)
    rec.query("SELECT 1/0", (), None, runs=True)
    serve(rec, backend.ErrorResponse.build("ERROR", "22012", "division by zero"), backend.ReadyForQuery("I"))
    rec.close("client terminated", 10, 20)
    assert log.closed is not None
    assert log.closed["counts"] == {"statements": 1, "errors": 1}
    assert (log.closed["bytes_in"], log.closed["bytes_out"], log.closed["reason"]) == (10, 20, "client terminated")


def test_an_execute_whose_statement_the_recorder_does_not_hold_is_untold() -> None:
    """Prepared with SQL PREPARE, or before the last 1,000 the session used: its record could not
    say what it runs, so the relay refuses it; one used since stays known however old."""
    log = FakeLog()
    rec = recorder(log)
    rec.parse("kept", "SELECT ssn FROM customers", ("read",), None)
    rec.parse("old", "SELECT full_name FROM customers", ("read",), None)
    for n in range(999):
        rec.parse(f"s{n}", f"SELECT {n}", ("read",), None)
        if n == 500:
            rec.bind("", "kept", [], [], "utf-8")  # used: it goes to the end of the line
    rec.parse("new", "SELECT 2", ("read",), None)  # the 1,002nd: "old" goes
    rec.bind("p1", "old", [], [], "utf-8")
    rec.bind("p2", "kept", [], [], "utf-8")
    rec.bind("p3", "sql_prepared", [], [], "utf-8")
    assert rec.untold("p1") is not None and "'old'" in rec.untold("p1")
    assert rec.untold("p2") is None
    assert rec.untold("p3") is not None and "'sql_prepared'" in rec.untold("p3")
    assert "portal 'declared'" in rec.untold("declared")
    refusal = Decision(False, None, "", rec.untold("p1"))
    assert rec.execute("p1", refusal)
    (record,) = log.of("statement")
    assert record["decision"] == "refused" and "prepared statement 'old'" in record["sql"]
    assert rec.untold("p3") is None  # the server skips the rest of the batch: nothing to refuse
    rec.sync()
    assert rec.execute("p2") and log.of("statement")[-1]["sql"] == "SELECT ssn FROM customers"


def test_a_portal_ends_with_its_transaction_not_before() -> None:
    """Out of any transaction, the server has dropped the portals: an Execute of the name then runs
    something else (a DECLAREd cursor), so the recorder forgets them. A portal of a later request,
    sent before that ReadyForQuery came (a pipeline), lives on."""
    log = FakeLog()
    rec = recorder(log)
    rec.parse("s", "SELECT 'harmless'", ("read",), None)
    rec.bind("p", "s", [], [], "utf-8")
    assert rec.execute("p")
    rec.sync()
    assert rec.query("BEGIN", (), None, runs=True)
    rec.bind("q", "s", [], [], "utf-8")  # in the transaction the BEGIN opens, sent ahead of the answers
    assert rec.execute("q")
    rec.sync()
    serve(rec, backend.CommandComplete("SELECT 1"), backend.ReadyForQuery("I"))
    assert rec.untold("p") is not None and "portal 'p'" in rec.untold("p")
    assert rec.untold("q") is None
    serve(rec, backend.CommandComplete("BEGIN"), backend.ReadyForQuery("T"),
          backend.CommandComplete("SELECT 1"), backend.ReadyForQuery("T"))
    assert rec.untold("q") is None  # still in its transaction
    assert rec.query("COMMIT", (), None, runs=True)
    serve(rec, backend.CommandComplete("COMMIT"), backend.ReadyForQuery("I"))
    assert rec.untold("q") is not None
