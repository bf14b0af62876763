"""psycopg 3 through the gateway: every protocol feature it uses, and PostgreSQL's error semantics.

Identities are chosen so the tests keep their meaning once policy lands:
reads of non-sensitive data as `analyst`, writes into scratch tables as
`engineer`, and what only an administrator may run (DO blocks, LISTEN, COPY
of whole tables) as `dba`.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import psycopg
import psycopg.errors
import pytest

from helpers import fetch_all, fetch_value, pipeline_transcript, scratch_table, unique_name

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

CANCEL_REQUEST_CODE = 80877102
ORDERS = "SELECT id, customer_id, total, status, created_at FROM orders ORDER BY id"
# One value of each interesting type, and the SQL type it is sent as.
TYPED_VALUES: list[tuple[Any, str]] = [
    (42, "int"),
    (-(2**62), "bigint"),
    ("héllo, wörld ✓ 'quoted' \\ back", "text"),
    (Decimal("12345678901234567890.123456789"), "numeric"),
    (datetime(2024, 6, 1, 9, 30, 15, 123456, tzinfo=timezone.utc), "timestamptz"),
    (b"\x00\x01\xfe\xff binary", "bytea"),
    (None, "text"),
    (True, "boolean"),
    ([1, 2, None, 4], "int[]"),
    (["a", "b c", None, "{braces}"], "text[]"),
]


@pytest.fixture
def direct(postgres: PostgresServer) -> str:
    """A DSN straight to PostgreSQL as superuser, for comparison and for checking side effects."""
    return postgres.dsn(sslmode="verify-full")


@pytest.fixture
def scratch(direct: str) -> Iterator[str]:
    """A scratch table (id int, label text, amount numeric, at timestamptz, payload bytea)."""
    with scratch_table(direct, "id int PRIMARY KEY, label text, amount numeric, at timestamptz, payload bytea") as name:
        yield name


# --- protocols -----------------------------------------------------------------------------------


def test_simple_query_protocol_with_several_statements(gateway: RunningGateway) -> None:
    """A multi-statement string only works in the simple protocol, so this proves it went that way."""
    with psycopg.connect(gateway.dsn("analyst"), cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.execute("SELECT 1 AS one; SELECT count(*) AS n FROM orders; SELECT 'three'")
        results = [cur.fetchall()]
        while cur.nextset():
            results.append(cur.fetchall())
        assert results == [[(1,)], [(6000,)], [("three",)]]
        # Client-side binding also goes over the simple protocol.
        assert conn.execute("SELECT %s::text || %s", ("a'b", 7)).fetchone() == ("a'b7",)


@pytest.mark.parametrize("placeholder", ["%s", "%b"], ids=["text-params", "binary-params"])
@pytest.mark.parametrize("binary_results", [False, True], ids=["text-results", "binary-results"])
def test_extended_protocol_parameters_round_trip(gateway: RunningGateway, direct: str,
                                                 placeholder: str, binary_results: bool) -> None:
    sql = "SELECT " + ", ".join(f"{placeholder}::{sql_type}" for _, sql_type in TYPED_VALUES)
    values = [value for value, _ in TYPED_VALUES]
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        cur = conn.cursor(binary=binary_results)
        through = cur.execute(sql, values).fetchone()
        assert cur.pgresult is not None and cur.pgresult.fformat(0) == int(binary_results)
    assert list(through) == values
    assert through == fetch_all(direct, sql, values)[0]


def test_binary_results_equal_text_results_and_direct(gateway: RunningGateway, direct: str) -> None:
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        binary_cur = conn.cursor(binary=True)
        binary = binary_cur.execute(ORDERS).fetchall()
        assert binary_cur.pgresult is not None and binary_cur.pgresult.fformat(2) == 1
        text = conn.execute(ORDERS).fetchall()
    assert len(binary) == 6000
    assert binary == text == fetch_all(direct, ORDERS)


def test_server_side_prepared_statement_is_reused(gateway: RunningGateway, direct: str) -> None:
    sql = "SELECT id, total FROM orders WHERE customer_id = %s ORDER BY id"
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        for customer_id in (1, 2, 3, 1):
            rows = conn.execute(sql, (customer_id,), prepare=True).fetchall()
            assert rows == fetch_all(direct, sql, (customer_id,))
        prepared = conn.execute("SELECT statement FROM pg_prepared_statements").fetchall()
    assert [statement for (statement,) in prepared if "customer_id = $1" in statement] == [
        "SELECT id, total FROM orders WHERE customer_id = $1 ORDER BY id"
    ]


def test_pipeline_mode_returns_every_result(gateway: RunningGateway, direct: str, scratch: str) -> None:
    insert = f"INSERT INTO {scratch} (id, label) VALUES (%s, %s)"
    with psycopg.connect(gateway.dsn("engineer"), autocommit=True) as conn:
        with conn.pipeline():
            conn.execute(insert, (1, "one"))
            conn.cursor().executemany(insert, [(2, "two"), (3, "three")])
            counted = conn.execute("SELECT count(*) FROM orders WHERE status = %s", ("paid",))
            labels = conn.execute(f"SELECT array_agg(label ORDER BY id) FROM {scratch}")
            returned = conn.execute(f"UPDATE {scratch} SET amount = id * 10 RETURNING id, amount")
        assert counted.fetchone() == (fetch_value(direct, "SELECT count(*) FROM orders WHERE status = 'paid'"),)
        assert labels.fetchone() == (["one", "two", "three"],)
        assert sorted(returned.fetchall()) == [(1, 10), (2, 20), (3, 30)]
    assert fetch_all(direct, f"SELECT id, label, amount FROM {scratch} ORDER BY id") == [
        (1, "one", 10), (2, "two", 20), (3, "three", 30)]


# --- COPY ----------------------------------------------------------------------------------------


def copy_out(dsn: str, statement: str) -> bytes:
    """Everything a COPY ... TO STDOUT sends, as bytes."""
    with psycopg.connect(dsn) as conn, conn.cursor() as cur, cur.copy(statement) as copy:
        return b"".join(bytes(chunk) for chunk in copy)


@pytest.mark.parametrize("options", ["", "(FORMAT csv, HEADER)", "(FORMAT binary)"])
def test_copy_to_stdout_equals_direct(gateway: RunningGateway, direct: str, options: str) -> None:
    statement = f"COPY ({ORDERS}) TO STDOUT {options}"
    through = copy_out(gateway.dsn("dba"), statement)
    assert len(through) > 100_000
    assert through == copy_out(direct, statement)


def test_copy_to_stdout_binary_rows(gateway: RunningGateway, direct: str) -> None:
    with psycopg.connect(gateway.dsn("dba")) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({ORDERS}) TO STDOUT (FORMAT binary)") as copy:
            copy.set_types(["int4", "int4", "numeric", "text", "timestamptz"])
            rows = list(copy.rows())
    assert rows == fetch_all(direct, ORDERS)


ROWS_IN: list[tuple[Any, ...]] = [
    (i, f"row {i}\twith tab\nand newline, \\ backslash", Decimal(i) / 8,
     datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=i), bytes([i % 256]) * (i % 7))
    for i in range(1, 1001)
] + [(1001, None, None, None, None)]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_copy_from_stdin_writes_every_row(gateway: RunningGateway, direct: str, scratch: str,
                                          binary: bool) -> None:
    statement = f"COPY {scratch} (id, label, amount, at, payload) FROM STDIN"
    with psycopg.connect(gateway.dsn("engineer")) as conn:
        with conn.cursor() as cur:
            with cur.copy(statement + (" (FORMAT binary)" if binary else "")) as copy:
                if binary:
                    copy.set_types(["int4", "text", "numeric", "timestamptz", "bytea"])
                for row in ROWS_IN:
                    copy.write_row(row)
            assert cur.rowcount == len(ROWS_IN)
        conn.commit()
    assert fetch_all(direct, f"SELECT * FROM {scratch} ORDER BY id") == ROWS_IN


# --- asynchronous messages -----------------------------------------------------------------------


def test_listen_notify_between_two_gateway_connections(gateway: RunningGateway) -> None:
    channel = unique_name("channel")
    with psycopg.connect(gateway.dsn("dba"), autocommit=True) as listener, \
            psycopg.connect(gateway.dsn("dba"), autocommit=True) as sender:
        listener.execute(f"LISTEN {channel}")
        sender_pid = sender.execute("SELECT pg_backend_pid()").fetchone()[0]
        sender.execute("SELECT pg_notify(%s, %s)", (channel, "hello ✓"))
        received = list(listener.notifies(timeout=5, stop_after=1))
    assert [(n.channel, n.payload, n.pid) for n in received] == [(channel, "hello ✓", sender_pid)]


def test_notify_from_a_direct_connection_reaches_a_gateway_listener(gateway: RunningGateway, direct: str) -> None:
    channel = unique_name("channel")
    with psycopg.connect(gateway.dsn("dba"), autocommit=True) as listener:
        listener.execute(f"LISTEN {channel}")
        with psycopg.connect(direct, autocommit=True) as sender:
            for payload in ("first", "second"):
                sender.execute(f"NOTIFY {channel}, '{payload}'")
        received = list(listener.notifies(timeout=5, stop_after=2))
    assert [(n.channel, n.payload) for n in received] == [(channel, "first"), (channel, "second")]


def test_named_cursor_fetches_in_batches(gateway: RunningGateway, direct: str) -> None:
    name = unique_name("cursor")
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        with conn.cursor(name=name) as cur:
            cur.itersize = 400
            cur.execute(ORDERS)
            first = cur.fetchmany(250)
            open_cursors = conn.execute("SELECT name FROM pg_cursors").fetchall()
            rest = list(cur)
    assert (name,) in open_cursors
    assert len(first) == 250
    assert first + rest == fetch_all(direct, ORDERS)


def test_notice_response_reaches_the_client(gateway: RunningGateway) -> None:
    notices: list[tuple[str | None, ...]] = []

    def keep(notice: psycopg.errors.Diagnostic) -> None:
        # A Diagnostic is only readable inside the handler.
        notices.append((notice.severity, notice.sqlstate, notice.message_primary, notice.message_hint))

    with psycopg.connect(gateway.dsn("dba"), autocommit=True) as conn:
        conn.add_notice_handler(keep)
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from %', 'plpgsql'; "
                     "RAISE WARNING 'careful' USING HINT = 'a hint'; END $$")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert notices == [
        ("NOTICE", "00000", "hello from plpgsql", None),
        ("WARNING", "01000", "careful", "a hint"),
    ]


def test_parameter_status_changes_reach_the_client(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("engineer", application_name="pgguard-tests"), autocommit=True) as conn:
        status: Callable[[str], str | None] = conn.info.parameter_status
        assert status("application_name") == "pgguard-tests"
        assert (status("server_version") or "").startswith("15")
        conn.execute("SET application_name = 'renamed'")
        assert status("application_name") == "renamed"
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        assert status("TimeZone") == "Asia/Tokyo"
        stamp = conn.execute("SELECT '2024-06-01 09:00:00+00'::timestamptz").fetchone()[0]
        assert stamp.utcoffset() == timedelta(hours=9)
        assert conn.execute("SELECT current_setting('application_name')").fetchone() == ("renamed",)


def test_startup_options_are_passed_upstream(gateway: RunningGateway) -> None:
    options = "-c statement_timeout=1234 -c search_path=pg_catalog,public"
    with psycopg.connect(gateway.dsn("analyst"), options=options) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SHOW search_path").fetchone() == ("pg_catalog,public",)


# --- large values --------------------------------------------------------------------------------


def test_large_result_set_is_intact(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        values = [n for (n,) in conn.execute("SELECT generate_series(1, 200000)")]
    assert values == list(range(1, 200001))


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_ten_megabyte_bytea_round_trip(gateway: RunningGateway, binary: bool) -> None:
    # Seeded: the analyst's detectors rightly mask an md5 whose hex holds a card-like digit run.
    payload = random.Random(10).randbytes(10 * 1024 * 1024)
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        cur = conn.cursor(binary=binary)
        value, digest, size = cur.execute(
            "SELECT v, md5(v), length(v) FROM (SELECT %b::bytea AS v) AS s", (payload,)).fetchone()
    assert size == len(payload)
    assert digest == hashlib.md5(payload).hexdigest()
    assert value == payload


# --- errors --------------------------------------------------------------------------------------


def transaction_error_transcript(dsn: str) -> list[str]:
    """What a client sees after an error inside a transaction block, step by step."""
    seen: list[str] = []
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        for sql in ("SELECT 1/0", "SELECT 1", "SELECT count(*) FROM orders"):
            try:
                conn.execute(sql)
                seen.append("ok")
            except psycopg.Error as exc:
                seen.append(f"{type(exc).__name__} {exc.sqlstate}")
        seen.append(conn.info.transaction_status.name)
        conn.rollback()
        seen.append(conn.info.transaction_status.name)
        seen.append(repr(conn.execute("SELECT count(*) FROM orders").fetchone()))
    return seen


def test_error_in_transaction_block_fails_it_until_rollback(gateway: RunningGateway, direct: str) -> None:
    through = transaction_error_transcript(gateway.dsn("analyst"))
    assert through == [
        "DivisionByZero 22012",
        "InFailedSqlTransaction 25P02",
        "InFailedSqlTransaction 25P02",
        "INERROR",
        "IDLE",
        "(6000,)",
    ]
    assert through == transaction_error_transcript(direct)


def test_error_in_pipeline_skips_the_rest_and_commits_nothing(gateway: RunningGateway, direct: str,
                                                              scratch: str) -> None:
    through = pipeline_transcript(gateway.dsn("engineer"), scratch, "SELECT 1/0")
    assert through == ["DivisionByZero 22012", "IDLE", "(1,)", "(0,)"]
    assert fetch_value(direct, f"SELECT count(*) FROM {scratch}") == 0
    with scratch_table(direct, "id int") as direct_table:
        assert through == pipeline_transcript(direct, direct_table, "SELECT 1/0")


# --- cancel --------------------------------------------------------------------------------------


def run_with_timer(action: Callable[[], object], delay: float) -> tuple[threading.Thread, list[BaseException]]:
    """Start `action` in a thread after `delay`; the list gets what it raised."""
    raised: list[BaseException] = []

    def fire() -> None:
        time.sleep(delay)
        try:
            action()
        except BaseException as exc:  # reported by the test, not lost in the thread
            raised.append(exc)

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread, raised


def cancel_transcript(dsn: str, method: str) -> list[str]:
    """Cancel `SELECT pg_sleep(30)` after 0.3 s with `conn.<method>()`; what the client sees
    (QueryCanceled only if the cancel reached the server: else the sleep ends in its own time)."""
    seen: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        thread, cancel_errors = run_with_timer(getattr(conn, method), 0.3)
        try:
            conn.execute("SELECT pg_sleep(30)")
            seen.append("not cancelled")
        except psycopg.Error as exc:
            seen.append(f"{type(exc).__name__} {exc.sqlstate}")
        thread.join(5)
        seen.extend(f"{method} raised {exc!r}" for exc in cancel_errors)
        seen.append(repr(conn.execute("SELECT 1").fetchone()))
    return seen


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_cancel_interrupts_a_running_query(gateway: RunningGateway, direct: str, method: str) -> None:
    """`cancel` sends a plaintext CancelRequest; libpq's `cancel_safe` one over TLS like the session."""
    expected = ["QueryCanceled 57014", "(1,)"]
    assert cancel_transcript(direct, method) == expected
    assert cancel_transcript(gateway.dsn("analyst"), method) == expected


def send_cancel_request(host: str, port: int, process_id: int, secret_key: int) -> bytes:
    """A hand-built plaintext CancelRequest; returns what the server answers (it should just close)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, process_id, secret_key))
        return sock.recv(64)


def test_cancel_request_with_a_wrong_key_does_nothing(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as conn:
        process_id = conn.info.backend_pid
        answers: list[bytes] = []

        def cancel_wrongly() -> None:
            answers.append(send_cancel_request(gateway.host, gateway.port, process_id, secrets.randbits(31)))
            answers.append(send_cancel_request(gateway.host, gateway.port, process_id ^ 0x5A5A, 0))

        thread, errors = run_with_timer(cancel_wrongly, 0.3)
        # Cancelled, it would raise QueryCanceled.
        assert conn.execute("SELECT 'slept' FROM pg_sleep(1.5)").fetchone() == ("slept",)
        thread.join(5)
    assert errors == []
    assert answers == [b"", b""]
