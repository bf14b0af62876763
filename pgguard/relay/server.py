"""The gateway: listeners, the connection limit, and one session per client.

A client connection can only ever hurt itself: every failure in its handler
ends in a log line and a closed connection, never in the accept loop.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import trio

from pgguard.admin.metrics import Metrics, render
from pgguard.approvals.service import Approvals
from pgguard.audit.sessions import SessionLogs
from pgguard.config import Config, ConfigError, TargetConfig
from pgguard.errors import GatewayError, fatal
from pgguard.identity.revocation import RevocationFile
from pgguard.identity.tokens import TokenService
from pgguard.identity.verifier import Verifier
from pgguard.logging_json import SESSION_ID
from pgguard.masking.session import MaskingConfig
from pgguard.policy.catalog import Catalogs
from pgguard.policy.guard import Policy
from pgguard.relay.cancel import CancelRegistry
from pgguard.relay.handshake import LOCAL, CancelAsk, ClientConnection, authenticate, negotiate
from pgguard.relay.session import Session
from pgguard.relay.socket_stream import SocketStream
from pgguard.relay.reactor import Reactor
from pgguard.relay.streams import PeerClosed
from pgguard.relay.throttle import LoginThrottle
from pgguard.relay.upstream import tls_context
from pgguard.reload import Reloaded, prepare
from pgguard.wire import backend
from pgguard.wire.framing import ProtocolViolation

log = logging.getLogger("pgguard.gateway")

SHUTDOWN_SQLSTATE = "57P01"
SHUTDOWN_MESSAGE = "pgguard: the gateway is shutting down"
# pgguard_logins_total's outcome for a failed login, by exception (others: "refused").
_OUTCOMES: dict[type, str] = {ProtocolViolation: "protocol_violation", trio.TooSlowError: "timeout"}
# How often, while shutting down, the gateway looks whether every session has ended.
_DRAIN_POLL = 0.05


def server_tls_context(config: Config) -> ssl.SSLContext | None:
    if config.gateway.tls_cert is None or config.gateway.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(config.gateway.tls_cert), str(config.gateway.tls_key))
    except OSError as exc:  # ssl.SSLError too: OpenSSL's own words name neither file
        raise ConfigError(f"[gateway] tls_cert {config.gateway.tls_cert}, tls_key {config.gateway.tls_key}: "
                          f"not a certificate and its private key ({exc.strerror or exc})") from exc
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
        self.revocations = RevocationFile(config.identity.revocation_file)
        self.verifier = Verifier(config.identity, self.tokens, self.revocations.current)
        self.throttle = LoginThrottle(config.gateway.max_failed_logins, config.gateway.failed_login_window)
        # Live sessions, so that a revocation can find the ones its token opened.
        self.sessions: set[Session] = set()
        self.cancels = CancelRegistry()
        self.ssl_context = server_tls_context(config)
        self._upstream_tls: dict[str, ssl.SSLContext | None] = {
            name: tls_context(target) for name, target in config.targets.items()
        }
        self.connections = 0
        self.reactor = Reactor()
        self.policy = Policy(config)
        self.masking = MaskingConfig(config)
        self.catalogs = Catalogs()
        self.logs = SessionLogs(config)
        self.approvals = Approvals(config.approvals)
        if not self.logs.enabled:
            log.warning("[audit] enabled = false: sessions are not recorded")
        self.metrics = Metrics()
        # Set once a shutdown begins: no new session starts after it.
        self.stopping = False
        self._accepting: trio.CancelScope | None = None
        self._listeners: list[trio.SocketListener] = []
        self._sessions_done = trio.Event()

    def upstream_tls(self, target: TargetConfig) -> ssl.SSLContext | None:
        return self._upstream_tls[target.name]

    async def serve(self, *, task_status: trio.TaskStatus[Sequence[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every configured address; reports the listeners once bound."""
        listeners: list[trio.SocketListener] = []
        for address in self.config.gateway.listen:
            listeners.extend(await trio.open_tcp_listeners(address.port, host=address.host))
        unix_path = None
        if self.config.gateway.unix_socket_dir is not None:
            port = listeners[0].socket.getsockname()[1]
            unix_path = self.config.gateway.unix_socket_dir / f".s.PGSQL.{port}"
            listeners.append(await _unix_listener(unix_path))
        for listener in listeners:
            log.info("listening on %s", listener.socket.getsockname())
        self._listeners = listeners
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reactor.run)
            nursery.start_soon(self._watch_revocations)
            nursery.start_soon(self.verifier.prefetch)
            nursery.start_soon(self.catalogs.keep_fresh)
            nursery.start_soon(self.logs.keep_pruned)
            nursery.start_soon(self.approvals.webhook.run)
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as self._accepting:
                    task_status.started(listeners)
                    await trio.serve_listeners(self.handle, listeners, handler_nursery=connections)
                for listener in listeners:
                    await listener.aclose()
                if unix_path is not None:
                    unix_path.unlink(missing_ok=True)
            self._sessions_done.set()
            await trio.sleep_forever()  # the caller cancels the rest once it has what it waited for

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; let running statements finish for up to `grace` seconds; end every session.

        Each session ends on a message boundary with FATAL 57P01, and its
        session log is closed with the reason. Returns once every
        connection is gone (connections still logging in are refused
        after their login), or, failing that, a little after the grace.
        """
        self.stopping = True
        if self._accepting is not None:
            self._accepting.cancel()
        log.info("shutting down: %d session(s) open; running statements get up to %g s", len(self.sessions), grace)
        for session in list(self.sessions):
            session.drain(SHUTDOWN_SQLSTATE, "the gateway is shutting down", SHUTDOWN_MESSAGE)
        with trio.move_on_after(grace):
            while self.sessions:
                await trio.sleep(_DRAIN_POLL)
        for session in list(self.sessions):
            if session.terminate(SHUTDOWN_SQLSTATE, "the gateway is shutting down", SHUTDOWN_MESSAGE):
                log.warning("session %s of %s ended with a statement still running: shutdown grace of %g s "
                            "is over", session.id, session.user, grace)
        with trio.move_on_after(self.config.gateway.login_timeout + 2):
            await self._sessions_done.wait()
        log.info("shut down")

    async def reload(self) -> Reloaded | None:
        """Read the config file again and apply it; None, with the reason logged, when it is refused."""
        try:
            reloaded = await trio.to_thread.run_sync(prepare, self.config)
        except ConfigError as exc:
            self.metrics.reloads["rejected"] += 1
            log.error("configuration reload refused, keeping the running configuration: %s", exc)
            raise
        self.apply(reloaded)
        return reloaded

    def apply(self, reloaded: Reloaded) -> None:
        """Swap in a reloaded configuration: new logins and the next statement of every session use it."""
        config = reloaded.config
        previous = self.config.gateway
        self.config, self.policy, self.masking = config, reloaded.policy, reloaded.masking
        self.approvals.reconfigure(config.approvals)
        if (config.gateway.max_failed_logins, config.gateway.failed_login_window) != \
                (previous.max_failed_logins, previous.failed_login_window):
            self.throttle = LoginThrottle(config.gateway.max_failed_logins, config.gateway.failed_login_window)
        ended = 0
        for session in list(self.sessions):
            problem = session.reconfigure(config, self.policy, self.masking)
            if problem is not None and session.terminate("57P01", problem):
                ended += 1
                log.warning("ending the session of %s from %s: %s", session.user, session.peer, problem)
        self.metrics.reloads["ok"] += 1
        log.info("configuration reloaded from %s: %d role(s), %d open session(s) updated, %d ended",
                 config.path, len(config.roles), len(self.sessions) - ended, ended)
        for item in reloaded.ignored:
            log.warning("configuration reload: %s changed; ignored until restart", item)

    def render_metrics(self) -> str:
        live = [session.protocol for session in self.sessions if session.protocol is not None]
        return render(
            self.metrics, connections=self.connections, sessions=len(self.sessions),
            live_bytes_in=sum(protocol.bytes_in for protocol in live),
            live_bytes_out=sum(protocol.bytes_out for protocol in live),
            live_masked_rows=sum(protocol.masking.masked_rows for protocol in live if protocol.masking is not None),
            max_connections=self.config.gateway.max_connections,
            held_requests=self.approvals.pending_count(),
        )

    @property
    def listening(self) -> bool:
        return bool(self._listeners) and not self.stopping

    async def handle(self, raw_stream: trio.SocketStream) -> None:
        peer = _peer_host(raw_stream)
        self.metrics.connections_total += 1
        logins = self.metrics.logins
        wait = self.throttle.retry_after(peer)
        if wait is not None:
            logins["throttled"] += 1
            # Before TLS and before reading a byte: the cheapest possible no.
            await _report(raw_stream, fatal("53300", f"too many failed logins from {peer}; "
                                                     f"try again in {math.ceil(wait)} s"))
            await raw_stream.aclose()
            return
        connection = ClientConnection(SocketStream.adopt(raw_stream), peer)
        self.connections += 1
        try:
            if self.connections > self.config.gateway.max_connections:
                logins["too_many_connections"] += 1
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
        try:
            with trio.fail_after(self.config.gateway.login_timeout):
                framer, hello = await negotiate(connection, self.ssl_context)
                if isinstance(hello, CancelAsk):
                    forwarded = await self.cancels.cancel(hello.process_id, hello.secret_key)
                    log.info("cancel request from %s for session %d %s", connection.peer, hello.process_id,
                             "forwarded" if forwarded else "ignored: no such session or wrong key")
                    if not forwarded:  # a guess at a key counts as a failed login: keys are not guessed at leisure
                        self._failed(connection.peer)
                    return
                client = await authenticate(connection, framer, hello, self.config, self.verifier)
        except (GatewayError, ProtocolViolation, trio.TooSlowError) as exc:
            self.metrics.logins[_OUTCOMES[type(exc)] if type(exc) in _OUTCOMES else "refused"] += 1
            self._failed(connection.peer)
            raise
        except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            self.metrics.logins["disconnected"] += 1
            raise
        if self.stopping:
            self.metrics.logins["shutting_down"] += 1
            raise fatal(SHUTDOWN_SQLSTATE, SHUTDOWN_MESSAGE)
        self.metrics.logins["ok"] += 1
        identity = client.identity
        session = Session(client, connection.peer, self.cancels, self.reactor, self.upstream_tls(client.target),
                          self.policy, self.catalogs, self.masking, self.logs, self.approvals,
                          metrics=self.metrics, idle_timeout=self.config.gateway.idle_timeout)
        SESSION_ID.set(session.id)
        log.info("login: %s from %s via %s (sub %s, jti %s, groups %s), token valid until %s", identity.username,
                 connection.peer, identity.provider, identity.subject, identity.jti or "-",
                 ",".join(identity.groups), _utc(identity.valid_until))
        # Registered before the first checkpoint after the token was checked
        # against the revocation list: no revocation can slip in between.
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def _failed(self, peer: str) -> None:
        if self.throttle.failed(peer):
            log.warning("too many failed logins from %s: refusing its connections for up to %.0f s",
                        peer, self.throttle.window)

    async def _watch_revocations(self) -> None:
        """Apply every change to the revocation file: to new logins, and to the sessions open now."""
        async for revocations in self.revocations.changes():
            self.verifier.revocations = revocations
            log.info("revocation list reloaded: %d entries", len(revocations))
            for session in list(self.sessions):
                entry = revocations.match(session.hello.identity)
                if entry is not None and session.terminate("57P01", "token revoked"):
                    log.warning("ending the session of %s from %s: %s", session.user, session.peer, entry.describe())


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


async def _report(stream: trio.abc.SendStream, error: GatewayError) -> None:
    """Send an ErrorResponse if the client is still there to read it."""
    message = backend.ErrorResponse.build(error.severity, error.sqlstate, error.message, hint=error.hint)
    with trio.move_on_after(1):
        try:
            await stream.send_all(message.encode())
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
