"""Upstream trouble: a backend that is terminated, or a connection to the target that drops
without a word, ends that one session with a clear error and a closed log; the gateway and its
other sessions go on."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from helpers import unique_name
from opsclient import find_log
from pgguard.demo.data import READER
from rawclient import config_edit

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway


def backend_pid(postgres: PostgresServer, application: str, running: str | None = None) -> int:
    """The upstream backend of the session that set `application_name` (once it runs `running`)."""
    deadline = time.monotonic() + 10
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        while True:
            row = direct.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                                 "AND (%s::text IS NULL OR (state = 'active' AND query LIKE %s))",
                                 [application, running, f"%{running}%"]).fetchone()
            if row is not None:
                return row[0]
            assert time.monotonic() < deadline, f"no backend for {application}"
            time.sleep(0.05)


def test_terminating_one_sessions_backend_leaves_the_others_alone(
        gateway: RunningGateway, postgres: PostgresServer) -> None:
    victim_app, bystander_app = unique_name("victim"), unique_name("bystander")
    with psycopg.connect(gateway.dsn("analyst", application_name=bystander_app), autocommit=True) as bystander, \
            psycopg.connect(gateway.dsn("analyst", application_name=victim_app), autocommit=True) as victim:
        assert victim.execute("SELECT current_user").fetchone() == (READER,)
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            pid = backend_pid(postgres, victim_app)
            assert direct.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        assert bystander.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as newcomer:
        assert newcomer.execute("SELECT 1").fetchone() == (1,)
    close = next(record for record in find_log(gateway, victim_app) if record["type"] == "close")
    assert close["reason"] == "target ended the session: FATAL 57P01 terminating connection due to administrator command"
    bystander_log = find_log(gateway, bystander_app)
    assert next(r for r in bystander_log if r["type"] == "close")["reason"] == "client terminated"


class CuttingProxy:
    """A TCP relay in front of PostgreSQL that can reset one of its connections, as a network would.

    Each direction of a connection is pumped by a thread that looks at the
    connection's `cut` event between reads; the thread that sees it resets
    both sockets (SO_LINGER 0, then close).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.live: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            pair = (client, upstream, threading.Event())
            self.live.append(pair)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink, pair), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair: Any) -> None:
        source.settimeout(0.05)
        cut = pair[2]
        try:
            while not cut.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    break
                sink.sendall(data)
        except OSError:
            pass
        if cut.is_set():
            for sock in pair[:2]:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass  # the other pump closed it already
                sock.close()
        if pair in self.live:
            self.live.remove(pair)

    def cut_latest(self) -> None:
        """Reset both sides of the newest connection still open."""
        self.live[-1][2].set()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def proxy(postgres: PostgresServer) -> Iterator[CuttingProxy]:
    running = CuttingProxy(postgres.port)
    yield running
    running.close()


def test_a_connection_to_the_target_dropped_without_a_word_gets_a_clear_error(
        gateway_factory: Callable[..., RunningGateway], postgres: PostgresServer, proxy: CuttingProxy) -> None:
    gateway = gateway_factory(config_edit({"targets.demo": {"port": proxy.port}}))
    victim_app = unique_name("cut")
    outcome: dict[str, Any] = {}
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as bystander:
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        with psycopg.connect(gateway.dsn("analyst", application_name=victim_app), autocommit=True) as victim:

            def run() -> None:
                try:
                    victim.execute("SELECT pg_sleep(5)")
                except psycopg.Error as exc:
                    outcome["error"] = exc

            thread = threading.Thread(target=run)
            thread.start()
            backend_pid(postgres, victim_app, running="pg_sleep")
            proxy.cut_latest()
            thread.join(10)
        error = outcome.get("error")
        assert isinstance(error, psycopg.OperationalError), outcome
        assert error.sqlstate == "08006"
        assert "pgguard: the target database closed the connection unexpectedly" in str(error)
        assert bystander.execute("SELECT count(*) FROM customers").fetchone() == (1200,)
    with psycopg.connect(gateway.dsn("analyst"), autocommit=True) as newcomer:
        assert newcomer.execute("SELECT 1").fetchone() == (1,)
    close = next(record for record in find_log(gateway, victim_app) if record["type"] == "close")
    assert close["reason"] == "target closed the connection unexpectedly"
