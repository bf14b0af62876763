"""Logging in through a target with libpq, as the lightest client there is."""

from __future__ import annotations

from psycopg import pq

from procs import BenchError
from targets import Target


def login(target: Target) -> pq.PGconn:
    """A connection through `target`, logged in and ready; BenchError with libpq's message if not."""
    conn = pq.PGconn.connect(target.conninfo(password=target.password).encode())
    if conn.status != pq.ConnStatus.OK:
        message = conn.get_error_message()
        conn.finish()
        raise BenchError(f"cannot connect to {target.name}: {message}")
    return conn
