"""Attacks at the protocol level, driven by hand on the wire.

Messages PostgreSQL skips without a word must not shift the gateway's pairing of answers to
requests. Result masking pairs each server answer with the request it answers. A Query the server
skips (sent inside an extended-protocol batch after an error) or a Sync it ignores (sent during COPY
FROM STDIN) left the gateway one request ahead: the next statement's rows were masked with the plan
of the skipped one, and came through raw.

And a FunctionCall message, whose result has no lineage to mask, is refused to a session that may
not see every column; a replication (walsender) connection, whose commands are not SQL, is never
opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal

import asyncpg
import psycopg
import pytest
from conftest import PostgresServer, RunningGateway
from rawclient import RawConnection, config_edit, login_as

from pgguard.wire import backend, frontend

SELECT = "SELECT email, ssn FROM customers ORDER BY id LIMIT 3"


@pytest.fixture(scope="module")
def hidden(postgres: PostgresServer) -> list[str]:
    """The values SELECT returns unmasked, straight from the database."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        return [value for row in conn.execute(SELECT).fetchall() for value in row]


@pytest.fixture
def engineer(gateway: RunningGateway) -> Iterator[RawConnection]:
    """A role that may COPY into public tables, and sees email and ssn masked."""
    with login_as(gateway, "engineer") as conn:
        yield conn


def until_ready(conn: RawConnection) -> list[backend.Message]:
    seen = []
    while not isinstance(message := conn.receive(), backend.ReadyForQuery):
        seen.append(message)
    return seen


def assert_masked(conn: RawConnection, hidden: list[str]) -> None:
    seen, ready = conn.query(SELECT)
    rows = [m for m in seen if isinstance(m, backend.DataRow)]
    assert len(rows) == 3 and ready.status in ("I", "T")
    shown = repr(seen)
    assert not any(value in shown for value in hidden), shown
    assert b"[redacted]" in rows[0].values[1]


@pytest.mark.parametrize("pipelined", [True, False])
def test_a_query_inside_a_batch_that_failed_does_not_unmask_the_next_query(gateway: RunningGateway,
                                                                            hidden: list[str],
                                                                            pipelined: bool) -> None:
    """PostgreSQL skips a Query sent after an error and before Sync; the gateway ends the batch with a Sync
    of its own first, so the Query runs and every answer stays paired with its request."""
    with login_as(gateway, "analyst") as conn:
        conn.send(frontend.Parse("", "SELECT 'x'::int4", []), *([] if pipelined else [frontend.Flush()]))
        if not pipelined:
            assert conn.expect(backend.ErrorResponse).code == "22P02"
        conn.send(frontend.Query("SELECT 1, 2"), frontend.Sync())
        seen = until_ready(conn)
        # It runs; after an error pgguard saw first, its values are NULL (masking cannot tell its plan then).
        assert [m.values for m in seen if isinstance(m, backend.DataRow)] in ([[b"1", b"2"]], [[None, None]])
        assert [m.code for m in seen if isinstance(m, backend.ErrorResponse)] == (["22P02"] if pipelined else [])
        assert until_ready(conn) == []  # the client's own Sync
        assert_masked(conn, hidden)
        assert_masked(conn, hidden)


def test_a_function_call_inside_a_batch_that_failed_is_refused_in_turn(gateway: RunningGateway,
                                                                        hidden: list[str]) -> None:
    with login_as(gateway, "analyst") as conn:
        conn.send(frontend.Parse("", "SELECT 'x'::int4", []), frontend.FunctionCall(1299, [], [], 0),
                  frontend.Sync(), frontend.Query(SELECT))
        seen = until_ready(conn)
        assert [m.code for m in seen if isinstance(m, backend.ErrorResponse)] == ["22P02", "42501"]
        assert until_ready(conn) == []
        rows = [m for m in until_ready(conn) if isinstance(m, backend.DataRow)]
        assert len(rows) == 3 and not any(value in repr(rows) for value in hidden)


def test_asyncpg_copy_after_a_prepare_that_ended_in_flush(gateway: RunningGateway, hidden: list[str]) -> None:
    """asyncpg prepares with Parse, Describe and Flush, then sends a Query without a Sync between."""

    async def work() -> list[str]:
        conn = await asyncpg.connect(gateway.dsn("engineer"))
        try:
            async with conn.transaction():
                await conn.copy_records_to_table("orders", records=[(999003, 1, Decimal(1), "new", datetime.now())],
                                                 columns=["id", "customer_id", "total", "status", "created_at"])
                raise Rollback
        except Rollback:
            pass
        try:
            return [repr(await conn.fetch(SELECT)) for _ in range(2)]
        finally:
            await conn.close()

    shown = asyncio.run(work())
    assert all("[redacted]" in each for each in shown) and not any(v in "".join(shown) for v in hidden)


class Rollback(Exception):
    pass


def test_a_sync_sent_during_copy_from_stdin_does_not_unmask_the_next_query(engineer: RawConnection,
                                                                           hidden: list[str]) -> None:
    engineer.send(frontend.Query("COPY orders FROM STDIN"))
    engineer.expect(backend.CopyInResponse)
    engineer.send(frontend.Sync(), frontend.Sync(), frontend.CopyFail("abandoned"))
    errors = [m for m in until_ready(engineer) if isinstance(m, backend.ErrorResponse)]
    assert [e.code for e in errors] == ["57014"]
    assert_masked(engineer, hidden)
    assert_masked(engineer, hidden)


def test_copy_from_stdin_in_the_extended_protocol_as_libpq_sends_it(engineer: RawConnection,
                                                                     hidden: list[str]) -> None:
    """libpq sends Sync right after the Execute of a COPY, and again after CopyDone; the server ignores the
    first. Rows are copied in a transaction that is rolled back."""
    engineer.query("BEGIN")
    engineer.send(frontend.Parse("", "COPY orders (id, customer_id, total, status, created_at) FROM STDIN", []),
                  frontend.Bind("", "", [], [], []), frontend.Describe("P", ""), frontend.Execute("", 0),
                  frontend.Sync())
    engineer.expect(backend.ParseComplete)
    engineer.expect(backend.BindComplete)
    engineer.expect(backend.NoData)
    engineer.expect(backend.CopyInResponse)
    engineer.send(frontend.CopyData(b"999001\t1\t1.00\tnew\t2024-01-01\n"),
                  frontend.CopyData(b"999002\t1\t2.00\tnew\t2024-01-02\n"),
                  frontend.CopyDone(), frontend.Sync())
    seen = until_ready(engineer)
    assert backend.CommandComplete("COPY 2") in seen, seen
    assert_masked(engineer, hidden)
    seen, ready = engineer.query("SELECT count(*) FROM orders WHERE id IN (999001, 999002)")
    assert backend.DataRow([b"2"]) in seen and ready.status == "T"
    engineer.query("ROLLBACK")
    assert_masked(engineer, hidden)


def test_a_copy_that_fails_to_start_lets_what_followed_it_run(engineer: RawConnection, hidden: list[str]) -> None:
    engineer.send(frontend.Parse("", "COPY orders (no_such_column) FROM STDIN", []),
                  frontend.Bind("", "", [], [], []), frontend.Execute("", 0), frontend.Sync(), frontend.Query(SELECT))
    errors = [m for m in until_ready(engineer) if isinstance(m, backend.ErrorResponse)]
    assert [e.code for e in errors] == ["42703"]
    rows = [m for m in until_ready(engineer) if isinstance(m, backend.DataRow)]
    assert len(rows) == 3 and not any(value in repr(rows) for value in hidden)


def test_a_query_sent_during_copy_from_stdin_ends_the_session(engineer: RawConnection, hidden: list[str]) -> None:
    engineer.send(frontend.Query("COPY orders FROM STDIN"))
    engineer.expect(backend.CopyInResponse)
    engineer.send(frontend.Query(SELECT))
    said = engineer.wait_closed()
    assert [(m.severity, m.code) for m in said if isinstance(m, backend.ErrorResponse)][0] == ("FATAL", "08P01")
    assert not any(value in repr(said) for value in hidden)


def test_a_function_call_is_refused_to_a_role_that_may_run_anything_but_sees_masked_columns(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer, hidden: list[str]) -> None:
    """The FunctionCall message's result has no lineage to mask: query_to_xml by OID returned every value raw."""
    masked_dba = gateway_factory(config_edit({"roles.dba": {"unmasked": None}}))
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        query_to_xml = conn.execute("SELECT 'pg_catalog.query_to_xml'::regproc::oid").fetchone()[0]
    with login_as(masked_dba, "dba") as conn:
        conn.send(frontend.FunctionCall(query_to_xml, [0, 0, 0, 0], [SELECT.encode(), b"true", b"false", b""], 0))
        seen = until_ready(conn)
        errors = [m for m in seen if isinstance(m, backend.ErrorResponse)]
        assert [e.code for e in errors] == ["42501"] and "FunctionCall" in errors[0].message, seen
        assert not any(value in repr(seen) for value in hidden)
        assert_masked(conn, hidden)
    with login_as(gateway_factory(), "dba") as conn:  # sees everything: the message is relayed
        conn.send(frontend.FunctionCall(query_to_xml, [0, 0, 0, 0], [SELECT.encode(), b"true", b"false", b""], 0))
        relayed = repr(until_ready(conn))
        assert all(value in relayed for value in hidden)


@pytest.mark.parametrize("replication", ["database", "true", "on", "yes", "1", "t"])
def test_a_walsender_connection_is_refused_at_login(gateway: RunningGateway, replication: str) -> None:
    """A replication connection takes commands (BASE_BACKUP, START_REPLICATION) that are not SQL: never opened."""
    with RawConnection.to(gateway) as conn:
        ident = gateway.identities["analyst"]
        conn.startup(ident.user, "demo", replication=replication)
        said = conn.wait_closed()
    errors = [m for m in said if isinstance(m, backend.ErrorResponse)]
    assert [(e.severity, e.code) for e in errors] == [("FATAL", "0A000")], said
    assert "replication" in errors[0].message and not any(isinstance(m, backend.AuthenticationOk) for m in said)
