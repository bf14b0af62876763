"""The gateway: listeners, the connection limit, and one session per client.

A client connection can only ever hurt itself: every failure in its handler
ends in a log line and a closed connection, never in the accept loop.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path

import trio

from pgguard.config import Config, TargetConfig
from pgguard.errors import GatewayError, fatal
from pgguard.identity.tokens import TokenService
from pgguard.policy.catalog import Catalogs
from pgguard.policy.guard import Policy
from pgguard.relay.cancel import CancelRegistry
from pgguard.relay.handshake import LOCAL, CancelAsk, ClientConnection, authenticate, negotiate
from pgguard.relay.session import Session
from pgguard.relay.socket_stream import SocketStream
from pgguard.relay.reactor import Reactor
from pgguard.relay.streams import PeerClosed
from pgguard.relay.upstream import tls_context
from pgguard.wire import backend
from pgguard.wire.framing import ProtocolViolation

log = logging.getLogger("pgguard.gateway")


def server_tls_context(config: Config) -> ssl.SSLContext | None:
    if config.gateway.tls_cert is None or config.gateway.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.gateway.tls_cert), str(config.gateway.tls_key))
    return context


async def _unix_listener(path: Path) -> trio.SocketListener:
    path.unlink(missing_ok=True)  # left behind by a gateway that was killed
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(str(path))
    path.chmod(0o777)  # as PostgreSQL's default unix_socket_permissions
    sock.listen()
    return trio.SocketListener(sock)


def _peer_host(stream: trio.abc.Stream) -> str:
    sock = getattr(stream, "socket", None)
    if sock is None:
        return "unknown"
    try:
        address = sock.getpeername()
    except OSError:  # already reset by the peer
        return "unknown"
    return address[0] if isinstance(address, tuple) else LOCAL


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.tokens = TokenService(config.identity)
        self.cancels = CancelRegistry()
        self.ssl_context = server_tls_context(config)
        self._upstream_tls: dict[str, ssl.SSLContext | None] = {
            name: tls_context(target) for name, target in config.targets.items()
        }
        self.connections = 0
        self.reactor = Reactor()
        self.policy = Policy(config)
        self.catalogs = Catalogs()

    def upstream_tls(self, target: TargetConfig) -> ssl.SSLContext | None:
        return self._upstream_tls[target.name]

    async def serve(self, *, task_status: trio.TaskStatus[Sequence[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every configured address; reports the listeners once bound."""
        listeners: list[trio.SocketListener] = []
        for address in self.config.gateway.listen:
            listeners.extend(await trio.open_tcp_listeners(address.port, host=address.host))
        if self.config.gateway.unix_socket_dir is not None:
            port = listeners[0].socket.getsockname()[1]
            listeners.append(await _unix_listener(self.config.gateway.unix_socket_dir / f".s.PGSQL.{port}"))
        for listener in listeners:
            log.info("listening on %s", listener.socket.getsockname())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reactor.run)
            nursery.start_soon(self.catalogs.keep_fresh)
            task_status.started(listeners)
            await trio.serve_listeners(self.handle, listeners)

    async def handle(self, raw_stream: trio.SocketStream) -> None:
        peer = _peer_host(raw_stream)
        connection = ClientConnection(SocketStream.adopt(raw_stream), peer)
        self.connections += 1
        try:
            if self.connections > self.config.gateway.max_connections:
                raise fatal("53300", "too many connections to the gateway")
            await self._handle(connection)
        except GatewayError as exc:
            log.info("connection from %s refused: %s", peer, exc.message)
            await _report(connection.stream, exc)
        except ProtocolViolation as exc:
            log.warning("connection from %s dropped: protocol violation: %s", peer, exc)
            await _report(connection.stream, fatal("08P01", f"protocol violation: {exc}"))
        except trio.TooSlowError:
            log.warning("connection from %s dropped: login timed out", peer)
            await _report(connection.stream, fatal("08P01", "login timed out"))
        except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("connection from %s closed during startup", peer)
        except Exception:
            log.exception("connection from %s failed", peer)
        finally:
            self.connections -= 1
            connection.stream.close()

    async def _handle(self, connection: ClientConnection) -> None:
        with trio.fail_after(self.config.gateway.login_timeout):
            framer, hello = await negotiate(connection, self.ssl_context)
            if isinstance(hello, CancelAsk):
                forwarded = await self.cancels.cancel(hello.process_id, hello.secret_key)
                log.info("cancel request from %s for session %d %s", connection.peer, hello.process_id,
                         "forwarded" if forwarded else "ignored: no such session or wrong key")
                return
            client = await authenticate(connection, framer, hello, self.config, self.tokens)
        await Session(client, connection.peer, self.cancels, self.reactor, self.upstream_tls(client.target),
                      self.policy, self.catalogs).run()


async def _report(stream: trio.abc.SendStream, error: GatewayError) -> None:
    """Send an ErrorResponse if the client is still there to read it."""
    message = backend.ErrorResponse.build(error.severity, error.sqlstate, error.message, hint=error.hint)
    with trio.move_on_after(1):
        try:
            await stream.send_all(message.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
