"""A misbehaving client can only hurt its own connection.

Every attack here runs while a bystander psycopg session, opened before it,
sits on the same gateway; afterwards the bystander must still answer, a new
client must still log in, and the gateway must have logged what it dropped.
"""

from __future__ import annotations

import random
import ssl
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from pgguard.demo.data import DATABASE, READER, SUPPORT
from pgguard.wire import backend, frontend
from pgguard.wire.codec import Message
from helpers import scratch_table
from rawclient import Closed, LogCursor, RawConnection, Refused, config_edit, login_as
from test_session_log import find_log, records_of

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

@contextmanager
def only_this_connection_dropped(gateway: RunningGateway) -> Iterator[LogCursor]:
    """Around an attack: a session opened before it still works after it, and so does a new login."""
    with psycopg.connect(gateway.dsn("analyst")) as bystander:
        assert bystander.execute("SELECT current_user").fetchone() == (READER,)
        log = LogCursor(gateway)
        yield log
        assert bystander.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
    with connect_once_a_slot_is_free(gateway.dsn("support")) as newcomer:
        assert newcomer.execute("SELECT current_user").fetchone() == (SUPPORT,)
    assert gateway.process.poll() is None, "the gateway process exited"


def connect_once_a_slot_is_free(dsn: str, timeout: float = 5) -> psycopg.Connection[Any]:
    """A session ends, and frees its connection slot, only once its session log is closed and
    synced: a client that just closed others may be told 53300 for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def assert_protocol_refusal(said: list[Message]) -> None:
    """What a dropped client may be told: nothing, or one FATAL 08P01."""
    assert len(said) <= 1, said
    for message in said:
        assert isinstance(message, backend.ErrorResponse), message
        assert (message.severity, message.code) == ("FATAL", "08P01"), message.fields


@pytest.mark.parametrize("junk", [
    pytest.param(random.Random(20240601).randbytes(1024), id="random-1KB"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n", id="http"),
])
def test_non_postgres_bytes_drop_only_that_connection(gateway: RunningGateway, junk: bytes) -> None:
    with only_this_connection_dropped(gateway) as log:
        with RawConnection.to(gateway) as conn:
            conn.send(junk)
            assert_protocol_refusal(conn.wait_closed())
        log.wait_for(r"connection from 127\.0\.0\.1 dropped: protocol violation: startup packet declares length")


def test_oversized_startup_length_is_refused_at_once(gateway: RunningGateway) -> None:
    with only_this_connection_dropped(gateway) as log:
        with RawConnection.to(gateway) as conn:
            conn.send(struct.pack("!ii", 0x7FFFFFFF, frontend.PROTOCOL_3_0))
            # Closed on the length alone, long before the login timeout: no waiting for 2 GB
            # that will never come.
            said = conn.wait_closed(timeout=2)
        assert_protocol_refusal(said)
        log.wait_for(r"dropped: protocol violation: startup packet declares length 2147483647")


def test_oversized_message_after_login_is_fatal_08P01(gateway: RunningGateway) -> None:
    with only_this_connection_dropped(gateway) as log:
        with login_as(gateway, "analyst") as conn:
            conn.send(b"Q" + struct.pack("!i", 2**31 - 1) + b"SELECT 1")
            said = conn.wait_closed(timeout=2)  # on the length alone: nothing else will come
        assert len(said) == 1 and isinstance(said[0], backend.ErrorResponse), said
        assert (said[0].severity, said[0].code) == ("FATAL", "08P01")
        assert "2147483647" in said[0].message
        log.wait_for(r"session \d+ ended: client protocol violation: message 'Q' declares length 2147483647")


# Framed right, with bodies that are not what their type says.
MALFORMED = {
    "bind-cut-short": b"B" + struct.pack("!i", 4 + 5) + b"\0\0\0\1\0",  # one format code announced, none sent
    "describe-of-neither": b"D" + struct.pack("!i", 4 + 3) + b"X\0\0",
    "close-unterminated": b"C" + struct.pack("!i", 4 + 3) + b"Ss1",
    "execute-extra-bytes": b"E" + struct.pack("!i", 4 + 9) + b"\0\0\0\0\0junk",
    "parse-unterminated": b"P" + struct.pack("!i", 4 + 9) + b"\0SELECT 1",
}


@pytest.mark.parametrize("malformed", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_message_after_login_is_fatal_08P01_and_nothing_of_its_read_runs(
        gateway: RunningGateway, postgres: PostgresServer, malformed: bytes) -> None:
    """Fixed: such a message went deep into the guards before its decoding failed; the session ended
    as an internal error (XX000, a traceback in the gateway's log), or masking refused it as a statement
    it could not analyse and the session went on."""
    marker = f"malformed-{uuid.uuid4().hex}"
    insert = frontend.Query(f"INSERT INTO tickets (customer_id, subject, body, status) "
                            f"VALUES (1, '{marker}', 'x', 'open')")
    with only_this_connection_dropped(gateway) as log:
        with login_as(gateway, "support", application_name=marker) as conn:
            conn.send(insert.encode() + malformed)
            said = conn.wait_closed()
        assert len(said) == 1 and isinstance(said[0], backend.ErrorResponse), said
        assert (said[0].severity, said[0].code) == ("FATAL", "08P01"), said[0].fields
        assert said[0].message.startswith("pgguard: protocol violation: "), said[0].message
        log.wait_for(r"session \d+ ended: client protocol violation: ")
        assert "session failed" not in log.new_text() and "Traceback" not in log.new_text()
    with psycopg.connect(postgres.dsn()) as direct:
        assert direct.execute("SELECT count(*) FROM tickets WHERE subject = %s", (marker,)).fetchone() == (0,)
    records = records_of(find_log(gateway, marker))
    assert [r["type"] for r in records] == ["header", "statement", "close", "checkpoint"]
    assert records[1]["sql"] == insert.query and records[2]["reason"].startswith("client protocol violation: ")


def test_half_sent_startup_times_out(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"login_timeout": 1}}))
    with only_this_connection_dropped(gateway) as log:
        with RawConnection.to(gateway) as conn:
            conn.send(struct.pack("!i", 64))  # a length, and then nothing
            said = conn.wait_closed(timeout=5)
        assert_protocol_refusal(said)
        log.wait_for(r"connection from 127\.0\.0\.1 dropped: login timed out")


def test_client_vanishing_mid_copy_leaves_no_rows(gateway: RunningGateway, postgres: PostgresServer) -> None:
    with (scratch_table(postgres.dsn(), "id int, note text") as table,
          psycopg.connect(postgres.dsn(), autocommit=True) as direct,
          only_this_connection_dropped(gateway) as log):
        conn = login_as(gateway, "engineer")
        conn.send(frontend.Query(f"COPY {table} FROM STDIN"))
        conn.expect(backend.CopyInResponse)
        conn.send(*(frontend.CopyData(f"{n}\tvanished\n".encode()) for n in range(500)))

        def copy_backends() -> int:
            row = direct.execute("SELECT count(*) FROM pg_stat_activity WHERE query = %s",
                                 [f"COPY {table} FROM STDIN"]).fetchone()
            return row[0] if row else -1

        assert copy_backends() == 1
        conn.close()
        log.wait_for(r"session \d+ ended: (client disconnected|connection lost)")
        # The gateway must also let go of the upstream backend that ran the COPY.
        deadline = time.monotonic() + 5
        while copy_backends() != 0:
            assert time.monotonic() < deadline, "the upstream COPY backend is still there"
            time.sleep(0.05)
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


# -- fifty clients that give up half-way ------------------------------------------------

Abandon = Callable[[RawConnection, "RunningGateway"], None]


def _startup(conn: RawConnection, gateway: RunningGateway) -> None:
    conn.startup(gateway.identities["analyst"].user, DATABASE)


def _tls_then_nothing(conn: RawConnection, gateway: RunningGateway) -> None:
    conn.start_tls(gateway.ca_cert)


def _ssl_then_bad_hello(conn: RawConnection, gateway: RunningGateway) -> None:
    conn.send(frontend.SSLRequest())
    conn.receive_bytes(1)
    conn.send(b"\x16\x03\x01\x00\x05hello")  # a TLS record header and then nonsense


def _half_password(conn: RawConnection, gateway: RunningGateway) -> None:
    _startup(conn, gateway)
    conn.expect(backend.AuthenticationCleartextPassword)
    conn.send(frontend.PasswordMessage(gateway.identities["analyst"].token).encode()[:20])


def _password_then_gone(conn: RawConnection, gateway: RunningGateway) -> None:
    """The whole login sent, nothing read: the gateway opens a session nobody is there for."""
    _startup(conn, gateway)
    conn.send(frontend.PasswordMessage(gateway.identities["analyst"].token))


ABANDON_POINTS: list[Abandon] = [
    lambda conn, gw: None,
    lambda conn, gw: conn.send(b"\x00\x00"),
    lambda conn, gw: conn.send(frontend.StartupMessage(frontend.PROTOCOL_3_0, {"user": "alice"}).encode()[:11]),
    lambda conn, gw: conn.send(frontend.SSLRequest()),
    lambda conn, gw: (conn.send(frontend.GSSENCRequest()), conn.receive_bytes(1)),
    _ssl_then_bad_hello,
    _tls_then_nothing,
    _startup,
    _half_password,
    _password_then_gone,
]
MAX_CONNECTIONS = 8


def _hold_logins(gateway: RunningGateway, count: int) -> list[RawConnection]:
    """`count` sessions at once; once the limit is free they must all get in (retried for 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        held: list[RawConnection] = []
        try:
            for _ in range(count):
                held.append(login_as(gateway, "analyst"))
            return held
        except Refused as refused:
            for conn in held:
                conn.close()
            if refused.error.code != "53300" or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_fifty_abandoned_startups_leave_the_gateway_serving(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"max_connections": MAX_CONNECTIONS}}))
    rng = random.Random(50)
    with only_this_connection_dropped(gateway) as log:
        for _ in range(10):  # batches of five, under the connection limit
            batch = [RawConnection.to(gateway) for _ in range(5)]
            for conn in batch:
                try:
                    rng.choice(ABANDON_POINTS)(conn, gateway)
                except (OSError, Closed, ssl.SSLError, AssertionError):
                    pass  # the gateway may hang up first (e.g. the limit): abandoned all the same
            for conn in rng.sample(batch, len(batch)):
                conn.reset() if rng.random() < 0.5 else conn.close()
        log.wait_for(r"connection from 127\.0\.0\.1 closed during startup")
        # Nothing leaked: with the bystander, MAX_CONNECTIONS - 1 new sessions fit, one more does not.
        held = _hold_logins(gateway, MAX_CONNECTIONS - 1)
        try:
            with RawConnection.to(gateway) as extra:
                extra.startup(gateway.identities["analyst"].user, DATABASE)
                error = extra.expect(backend.ErrorResponse)
            assert error.code == "53300", error.fields
            for conn in held:
                _, ready = conn.query("SELECT 1")
                assert ready.status == "I"
        finally:
            for conn in held:
                conn.close()
