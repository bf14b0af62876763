"""One client session: an authenticated client, its upstream, and the relay between.

The session is a task of its own: it logs in upstream, greets the client,
hands both sockets to the reactor and waits. Whatever ends it (either side
closing, an error, the gateway shutting down) its finally-block takes the
sockets back, closes them and drops the cancel key.
"""

from __future__ import annotations

import logging
import ssl
import time
from functools import partial

from pgguard.config import Login
from pgguard.relay.cancel import CancelRegistry
from pgguard.relay.handshake import ClientHello
from pgguard.relay.protocol import SessionProtocol
from pgguard.relay.reactor import Pipe, Reactor
from pgguard.relay.upstream import Upstream, connect, send_cancel
from pgguard.wire import backend

log = logging.getLogger("pgguard.session")


def choose_login(hello: ClientHello) -> Login:
    """The login of the caller's most privileged role.

    Roles are listed in the config from least to most privileged, so with
    several roles the last one's login can serve the union of their grants.
    """
    return hello.target.logins[hello.roles[-1].login]


class Session:
    def __init__(self, hello: ClientHello, peer: str, cancels: CancelRegistry, reactor: Reactor,
                 upstream_tls: ssl.SSLContext | None) -> None:
        self.hello = hello
        self.peer = peer
        self.cancels = cancels
        self.reactor = reactor
        self.upstream_tls = upstream_tls

    @property
    def user(self) -> str:
        return self.hello.identity.username

    async def run(self) -> None:
        hello = self.hello
        started = time.monotonic()
        upstream = await connect(hello.target, choose_login(hello), hello.upstream_params, self.upstream_tls)
        process_id, secret_key = self.cancels.register(
            partial(send_cancel, hello.target, self.upstream_tls, upstream.process_id, upstream.secret_key)
        )
        pipe = Pipe(hello.stream.socket, upstream.stream.socket, SessionProtocol(hello.framer, upstream.framer))
        try:
            await self._greet(upstream, process_id, secret_key)
            log.info("session %d: %s (%s) -> %s as %s", process_id, self.user, self.peer,
                     hello.target.name, ",".join(r.name for r in hello.roles))
            self.reactor.attach(pipe)
            await pipe.finished.wait()
        finally:
            self.reactor.detach(pipe)
            self.cancels.unregister(process_id)
            upstream.stream.close()
            log.info("session %d ended: %s after %.1fs", process_id, pipe.end_reason, time.monotonic() - started)

    async def _greet(self, upstream: Upstream, process_id: int, secret_key: int) -> None:
        parts = [backend.AuthenticationOk().encode()]
        parts.extend(frame.data for frame in upstream.greeting)
        parts.append(backend.BackendKeyData(process_id, secret_key).encode())
        parts.append(backend.ReadyForQuery("I").encode())
        parts.extend(frame.data for frame in upstream.trailing)
        await self.hello.stream.send_all(b"".join(parts))
