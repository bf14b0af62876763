"""One client session: an authenticated client, its upstream, and the relay.

Each session runs in a nursery of its own with one task per direction, since
the server speaks whenever it likes (notices, notifications, parameter
changes) and the client may pipeline. Whichever side ends first cancels the
other; the finally-blocks close both connections and drop the cancel key.
"""

from __future__ import annotations

import logging
import ssl
import time
from functools import partial

import trio

from pgguard.config import Login
from pgguard.relay.cancel import CancelRegistry
from pgguard.relay.handshake import ClientHello
from pgguard.relay.streams import PeerClosed, RECEIVE_SIZE, close_quietly
from pgguard.relay.upstream import Upstream, connect, send_cancel
from pgguard.wire import backend, frontend
from pgguard.wire.framing import ProtocolViolation

log = logging.getLogger("pgguard.session")

_TERMINATE = ord("X")


def choose_login(hello: ClientHello) -> Login:
    """The login of the caller's most privileged role.

    Roles are listed in the config from least to most privileged, so with
    several roles the last one's login can serve the union of their grants.
    """
    return hello.target.logins[hello.roles[-1].login]


class Session:
    def __init__(self, hello: ClientHello, peer: str, cancels: CancelRegistry,
                 upstream_tls: ssl.SSLContext | None) -> None:
        self.hello = hello
        self.peer = peer
        self.cancels = cancels
        self.upstream_tls = upstream_tls
        self.started = time.monotonic()
        self.end_reason = "closed"

    @property
    def user(self) -> str:
        return self.hello.identity.username

    async def run(self) -> None:
        hello = self.hello
        upstream = await connect(hello.target, choose_login(hello), hello.upstream_params, self.upstream_tls)
        process_id, secret_key = self.cancels.register(
            partial(send_cancel, hello.target, self.upstream_tls, upstream.process_id, upstream.secret_key)
        )
        try:
            await self._greet(upstream, process_id, secret_key)
            log.info("session %d: %s (%s) -> %s as %s", process_id, self.user, self.peer,
                     hello.target.name, ",".join(r.name for r in hello.roles))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_to_upstream, upstream, nursery.cancel_scope)
                nursery.start_soon(self._upstream_to_client, upstream, nursery.cancel_scope)
        finally:
            self.cancels.unregister(process_id)
            with trio.CancelScope(shield=True):
                await close_quietly(upstream.stream)
            log.info("session %d ended: %s after %.1fs", process_id, self.end_reason,
                     time.monotonic() - self.started)

    async def _greet(self, upstream: Upstream, process_id: int, secret_key: int) -> None:
        parts = [backend.AuthenticationOk().encode()]
        parts.extend(frame.data for frame in upstream.greeting)
        parts.append(backend.BackendKeyData(process_id, secret_key).encode())
        parts.append(backend.ReadyForQuery("I").encode())
        await self.hello.stream.send_all(b"".join(parts))

    async def _client_to_upstream(self, upstream: Upstream, scope: trio.CancelScope) -> None:
        client = self.hello.stream
        framer = self.hello.framer
        try:
            while True:
                data = await client.receive_some(RECEIVE_SIZE)
                if not data:
                    self.end_reason = "client disconnected"
                    await upstream.stream.send_all(frontend.Terminate().encode())
                    return
                raw, frames = framer.feed(data)
                if not frames:
                    continue
                await upstream.stream.send_all(raw)
                if any(frame.tag == _TERMINATE for frame in frames):
                    self.end_reason = "client terminated"
                    return
        except ProtocolViolation as exc:
            self.end_reason = f"client protocol violation: {exc}"
            await _send_quietly(client, backend.ErrorResponse.build("FATAL", "08P01", f"pgguard: {exc}").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError, PeerClosed):
            self.end_reason = "connection lost"
        finally:
            scope.cancel()

    async def _upstream_to_client(self, upstream: Upstream, scope: trio.CancelScope) -> None:
        client = self.hello.stream
        framer = upstream.framer
        try:
            while True:
                data = await upstream.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    self.end_reason = "target closed the connection"
                    return
                raw, frames = framer.feed(data)
                if frames:
                    await client.send_all(raw)
        except ProtocolViolation as exc:
            self.end_reason = f"target protocol violation: {exc}"
            await _send_quietly(client, backend.ErrorResponse.build(
                "FATAL", "08P01", "pgguard: the target database sent an invalid message").encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.end_reason = "connection lost"
        finally:
            scope.cancel()


async def _send_quietly(stream: trio.abc.SendStream, data: bytes) -> None:
    with trio.move_on_after(1):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
