"""The reactor and the session protocol over real socket pairs, no database."""

from __future__ import annotations

import socket

import trio

from pgguard.relay.protocol import SessionProtocol
from pgguard.relay.reactor import Pipe, Reactor
from pgguard.wire import backend, frontend
from pgguard.wire.framing import MessageFramer


class Harness:
    """A pipe whose far ends we hold: `client` plays the client, `server` the upstream."""

    def __init__(self) -> None:
        self.client, client_near = socket.socketpair()
        self.server, server_near = socket.socketpair()
        for sock in (self.client, self.server):
            sock.setblocking(False)
        self.pipe = Pipe(client_near, server_near, SessionProtocol(MessageFramer(1024 * 1024), MessageFramer()))

    async def read(self, sock: socket.socket, size: int) -> bytes:
        data = b""
        with trio.fail_after(5):
            while len(data) < size:
                await trio.lowlevel.wait_readable(sock)
                chunk = sock.recv(size - len(data))
                if not chunk:
                    break
                data += chunk
        return data

    async def read_all_sent(self, sock: socket.socket, expected: int) -> bytes:
        """Exactly `expected` bytes, then a check that nothing more follows."""
        data = await self.read(sock, expected)
        await trio.sleep(0.1)
        try:
            data += sock.recv(65536)
        except BlockingIOError:
            pass
        return data


async def run_with(harness: Harness, nursery: trio.Nursery) -> Reactor:
    reactor = Reactor()
    nursery.start_soon(reactor.run)
    reactor.attach(harness.pipe)
    return reactor


async def test_messages_flow_both_ways_unchanged():
    harness = Harness()
    async with trio.open_nursery() as nursery:
        await run_with(harness, nursery)
        query = frontend.Query("SELECT 1").encode()
        harness.client.send(query[:3])
        await trio.sleep(0.05)
        harness.client.send(query[3:])
        assert await harness.read(harness.server, len(query)) == query
        answer = backend.CommandComplete("SELECT 1").encode() + backend.ReadyForQuery("I").encode()
        harness.server.send(answer)
        assert await harness.read(harness.client, len(answer)) == answer
        nursery.cancel_scope.cancel()


async def test_terminate_ends_the_pipe_and_drops_what_follows():
    harness = Harness()
    async with trio.open_nursery() as nursery:
        await run_with(harness, nursery)
        terminate = frontend.Terminate().encode()
        harness.client.send(terminate + frontend.Query("DROP TABLE x").encode())
        with trio.fail_after(5):
            await harness.pipe.finished.wait()
        assert harness.pipe.end_reason == "client terminated"
        assert await harness.read_all_sent(harness.server, len(terminate)) == terminate
        nursery.cancel_scope.cancel()


async def test_client_eof_sends_terminate_upstream():
    harness = Harness()
    async with trio.open_nursery() as nursery:
        await run_with(harness, nursery)
        harness.client.close()
        with trio.fail_after(5):
            await harness.pipe.finished.wait()
        assert harness.pipe.end_reason == "client disconnected"
        assert await harness.read_all_sent(harness.server, 5) == frontend.Terminate().encode()
        nursery.cancel_scope.cancel()


async def test_oversized_client_message_gets_fatal_and_nothing_reaches_upstream():
    harness = Harness()
    async with trio.open_nursery() as nursery:
        await run_with(harness, nursery)
        harness.client.send(b"Q" + (2**31 - 1).to_bytes(4, "big") + b"SELECT")
        with trio.fail_after(5):
            await harness.pipe.finished.wait()
        header = await harness.read(harness.client, 5)
        body = await harness.read(harness.client, int.from_bytes(header[1:], "big") - 4)
        _, frames = MessageFramer().feed(header + body)
        error = backend.decode_backend(frames[0])
        assert isinstance(error, backend.ErrorResponse) and error.code == "08P01"
        harness.server.setblocking(False)
        try:
            leaked = harness.server.recv(100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
        nursery.cancel_scope.cancel()


async def test_slow_client_applies_back_pressure_and_loses_nothing():
    """A result far larger than the socket buffers arrives whole, however slowly it is read."""
    harness = Harness()
    harness.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    row = backend.DataRow([b"x" * 8000]).encode()
    total = len(row) * 2000  # 16 MB
    async with trio.open_nursery() as nursery:
        await run_with(harness, nursery)

        async def produce() -> None:
            data = memoryview(row * 2000)
            while data:
                try:
                    data = data[harness.server.send(data):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(harness.server)

        nursery.start_soon(produce)
        await trio.sleep(0.3)
        # While the client reads nothing, the reactor stopped draining the
        # upstream: what it holds stays bounded.
        pending = len(harness.pipe.client.pending)
        assert 0 < pending < total // 2
        assert not harness.pipe.upstream.reading
        received = await harness.read(harness.client, total)
        assert received == row * 2000
        assert harness.pipe.upstream.reading
        nursery.cancel_scope.cancel()


async def test_one_pipe_finishing_leaves_the_other_running():
    first, second = Harness(), Harness()
    async with trio.open_nursery() as nursery:
        reactor = await run_with(first, nursery)
        reactor.attach(second.pipe)
        first.client.close()
        with trio.fail_after(5):
            await first.pipe.finished.wait()
        reactor.detach(first.pipe)
        query = frontend.Query("SELECT 2").encode()
        second.client.send(query)
        assert await second.read(second.server, len(query)) == query
        assert not second.pipe.finished.is_set()
        nursery.cancel_scope.cancel()
