"""One client session: an authenticated client, its upstream, and the relay between.

The session is a task of its own: it logs in upstream, greets the client,
hands both sockets to the reactor and waits. Whatever ends it (either side
closing, an error, the gateway shutting down, `terminate()` on revocation or
token expiry) its finally-block takes the sockets back, closes them and drops
the cancel key.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial

import trio

from pgguard.admin.metrics import Metrics
from pgguard.approvals.service import Approvals, SessionApprovals
from pgguard.approvals.store import Request
from pgguard.audit import records
from pgguard.audit.recorder import SessionRecorder
from pgguard.audit.sessions import SessionLogs, new_session_id
from pgguard.audit.writer import SessionLogWriter
from pgguard.config import Config, Login
from pgguard.relay.cancel import CancelRegistry
from pgguard.relay.handshake import ClientHello
from pgguard.errors import fatal
from pgguard.logging_json import SESSION_ID
from pgguard.masking.session import MaskingConfig
from pgguard.policy.catalog import CatalogUnavailable, Catalogs, session_search_path
from pgguard.policy.classify import Unsupported
from pgguard.policy.guard import Policy, SessionGuard, startup_settings
from pgguard.relay.protocol import SessionProtocol, python_codec, server_setting_problem
from pgguard.relay.reactor import Pipe, Reactor
from pgguard.relay.socket_stream import RECEIVE_SIZE
from pgguard.relay.upstream import Upstream, connect, send_cancel
from pgguard.wire import backend, frontend
from pgguard.wire.framing import Frame

log = logging.getLogger("pgguard.session")

# How long a session ended from outside may take to tell its client why.
FAREWELL_TIMEOUT = 1.0
IDLE_SQLSTATE = "57P05"  # PostgreSQL's own for idle_session_timeout


def upstream_params(params: dict[str, str], login: Login) -> dict[str, str]:
    """The client's startup parameters, plus read-only mode for a read-only login."""
    if not login.read_only:
        return params
    options = " ".join(filter(None, [params.get("options", ""), "-c default_transaction_read_only=on"]))
    return {**params, "options": options}


def client_codec(greeting: list[Frame], guarded: bool, read_only: bool) -> str:
    """The Python codec of the session's client_encoding, from the server's greeting.

    The greeting's settings are checked as later changes are (protocol.py):
    a session pgguard could not guard is refused before it starts.
    """
    codec = "utf-8"
    for frame in greeting:
        if frame.tag == ord("S"):
            status = backend.ParameterStatus.decode(frame.body)
            problem = server_setting_problem(status.name, status.value, guarded, read_only)
            if problem:
                raise fatal("42501", problem)
            if status.name == "client_encoding":
                codec = python_codec(status.value)
    return codec


def choose_login(hello: ClientHello) -> Login:
    """The login of the caller's most privileged role.

    Roles are listed in the config from least to most privileged, so with
    several roles the last one's login can serve the union of their grants.
    """
    return hello.target.logins[hello.roles[-1].login]


def client_address(sock: socket.socket) -> str:
    """`host:port` of a TCP client, the socket's path for a Unix-socket one."""
    try:
        address = sock.getpeername()
    except OSError:
        return "unknown"
    if isinstance(address, tuple):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return sock.getsockname() or "unix socket"


def tls_of(sock: socket.socket) -> tuple[str, str] | None:
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cipher = sock.cipher()
    return sock.version() or "", cipher[0] if cipher else ""


class Session:
    def __init__(self, hello: ClientHello, peer: str, cancels: CancelRegistry, reactor: Reactor,
                 upstream_tls: ssl.SSLContext | None, policy: Policy, catalogs: Catalogs,
                 masking: MaskingConfig, logs: SessionLogs, approvals: Approvals | None = None, *,
                 metrics: Metrics | None = None, idle_timeout: float = 0.0) -> None:
        self.id = new_session_id()
        self.hello = hello
        self.peer = peer
        self.cancels = cancels
        self.reactor = reactor
        self.upstream_tls = upstream_tls
        self.policy = policy
        self.catalogs = catalogs
        self.masking = masking
        self.logs = logs
        self.metrics = metrics if metrics is not None else Metrics()
        # Seconds with no request running and no byte either way before the session ends; 0: never.
        self.idle_timeout = idle_timeout
        self._guard_object: SessionGuard | None = None
        self._counted = False
        # The watcher's wait, cut short when a reload changes the idle timeout.
        self._nap: trio.CancelScope | None = None
        self.approvals = approvals
        self._pipe: Pipe | None = None
        self._protocol: SessionProtocol | None = None
        # Set by terminate(): why the session ends, and the FATAL that says so.
        self._ending: tuple[str, bytes] | None = None

    @property
    def user(self) -> str:
        return self.hello.identity.username

    @property
    def protocol(self) -> SessionProtocol | None:
        """The relay's state while it relays; None before, and once its counts went to the metrics."""
        return None if self._counted else self._protocol

    @property
    def idle(self) -> bool:
        """Relaying, with no request waiting for its answer; or not relaying yet."""
        return self._protocol is None or self._protocol.idle

    async def run(self) -> None:
        SESSION_ID.set(self.id)
        login = choose_login(self.hello)
        guard = await self._guard(login)
        opened = await self._open_log()
        if opened is None:
            await self._relay(login, guard, None)
            return
        writer, recorder = opened
        end_reason = "the gateway stopped the session"
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            try:
                await self._relay(login, guard, recorder)
                end_reason = self._pipe.end_reason if self._pipe is not None else "ended"
            except Exception as exc:
                # Raised once the nursery is done, so that callers see it, not a group around it.
                failure = exc
                end_reason = f"failed: {getattr(exc, 'message', None) or exc}"
            finally:
                protocol = self._protocol
                recorder.close(end_reason, protocol.bytes_in if protocol else 0, protocol.bytes_out if protocol else 0)
        if failure is not None:
            raise failure

    async def _open_log(self) -> tuple[SessionLogWriter, SessionRecorder] | None:
        """The session's log, started before anything reaches the upstream; None when logs are off."""
        if not self.logs.enabled:
            return None
        hello = self.hello
        sock = hello.stream.socket
        header = records.header(session_id=self.id, identity=hello.identity, client_address=client_address(sock),
                                application_name=hello.params.get("application_name"), target=hello.target.name,
                                tls=tls_of(sock), parameters=hello.upstream_params)
        try:
            return await self.logs.open(header)
        except OSError as exc:
            log.error("session %s of %s: cannot open its session log in %s: %s", self.id, self.user,
                      self.logs.directory, exc)
            sqlstate = "53100" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "58030"
            raise fatal(sqlstate, f"pgguard: cannot open the session log: {exc.strerror or exc}") from exc

    async def _relay(self, login: Login, guard: SessionGuard | None, recorder: SessionRecorder | None) -> None:
        hello = self.hello
        started = time.monotonic()
        upstream = await connect(hello.target, login, upstream_params(hello.upstream_params, login),
                                 self.upstream_tls)
        try:
            codec = client_codec(upstream.greeting, guard is not None, login.read_only)
            if guard is not None:  # names resolve on the path the server starts with, not an assumed one
                guard.started(await session_search_path(upstream))
        except BaseException:
            upstream.stream.close()
            raise
        cancel_upstream = partial(send_cancel, hello.target, self.upstream_tls, upstream.process_id,
                                  upstream.secret_key)
        process_id, secret_key = self.cancels.register(partial(self._cancel, cancel_upstream))
        masking = None if guard is None else self.masking.for_session(
            hello.roles, guard, lambda: self.catalogs.current(hello.target.name))
        if masking is not None:
            for frame in upstream.greeting:  # the settings the session starts with: client_encoding, for COPY
                if frame.tag == ord("S"):
                    masking.server(frame.tag, frame.data)
        approvals = None if guard is None or self.approvals is None else SessionApprovals(
            self.approvals, hello.identity, self.id, hello.target.name)
        protocol = self._protocol = SessionProtocol(hello.framer, upstream.framer, guard, codec,
                                                    read_only=login.read_only, masking=masking, recorder=recorder,
                                                    metrics=self.metrics, approvals=approvals)
        pipe = self._pipe = Pipe(hello.stream.socket, upstream.stream.socket, protocol)
        pipe.session_id = self.id
        try:
            await self._greet(upstream, process_id, secret_key)
            log.info("session %d (%s): %s (%s) -> %s as %s", process_id, self.id, self.user, self.peer,
                     hello.target.name, ",".join(r.name for r in hello.roles))
            if self._ending is None:
                async with trio.open_nursery() as holds:
                    # A held statement's wait, and a grant's expiry, are tasks of the session.
                    pipe.on_hold = partial(holds.start_soon, self._await_decision, holds, pipe, protocol)
                    self.reactor.attach(pipe)
                    await self._watch(pipe, protocol)
                    holds.cancel_scope.cancel()
            if self._ending is not None:
                await self._farewell(upstream, pipe, cancel_upstream)
            elif protocol.draining:
                await self._hang_up()  # the protocol sent the FATAL after the last answer
        finally:
            self.reactor.detach(pipe)
            self.cancels.unregister(process_id)
            upstream.stream.close()
            self.metrics.bytes_in += protocol.bytes_in
            self.metrics.bytes_out += protocol.bytes_out
            self.metrics.masked_rows += masking.masked_rows if masking is not None else 0
            self._counted = True
            log.info("session %d ended: %s after %.1fs", process_id, pipe.end_reason, time.monotonic() - started)

    async def _watch(self, pipe: Pipe, protocol: SessionProtocol) -> None:
        """Wait for the pipe to finish; end the session when its token expires or it idles too long.

        Idle means no request waiting for an answer and no byte either way:
        a long statement is never idle, and neither is a COPY.
        """
        expires = trio.current_time() + self.hello.ends_at - time.time()
        traffic = -1
        idle_since = trio.current_time()
        while not pipe.finished.is_set():
            now = trio.current_time()
            if now >= expires:
                self.terminate("57P01", "token expired")
                return
            seen = protocol.bytes_in + protocol.bytes_out
            if seen != traffic or not protocol.idle:
                traffic, idle_since = seen, now
            deadline = expires
            if self.idle_timeout > 0:
                if now - idle_since >= self.idle_timeout:
                    self.terminate(IDLE_SQLSTATE, "idle timeout",
                                   f"pgguard: session ended: idle for {self.idle_timeout:g} s ([gateway] idle_timeout)")
                    return
                # Checked again when the timeout would run out, or every few seconds while busy.
                deadline = min(deadline, idle_since + self.idle_timeout, now + max(self.idle_timeout, 1.0))
            with trio.move_on_at(deadline) as self._nap:
                await pipe.finished.wait()

    def reconfigure(self, config: Config, policy: Policy, masking: MaskingConfig) -> str | None:
        """Take a reloaded configuration from the next statement on; why the session must end, if it must.

        The policy and masking rules are swapped in place. What a session
        cannot change while it runs -- its database login, whether its
        statements are analysed at all, whether its results are masked at
        all -- ends it instead, with a FATAL saying so (fail closed).
        """
        hello = self.hello
        roles = config.roles_for_groups(list(hello.identity.groups))
        names = [role.name for role in roles]
        if config.gateway.idle_timeout != self.idle_timeout:
            self.idle_timeout = config.gateway.idle_timeout
            if self._nap is not None:
                self._nap.cancel()  # the watcher looks again with the new timeout
        if not roles:
            return "the reloaded configuration maps its groups to no role"
        if roles[-1].login != hello.roles[-1].login:
            return "the reloaded configuration needs another database login for it"
        guarded_before = not (self.policy.unrestricted(role.name for role in hello.roles)
                              and not self.masking.active_for(hello.roles))
        guarded = not (policy.unrestricted(names) and not masking.active_for(roles))
        masked_before = self.masking.active_for(hello.roles)
        if guarded != guarded_before or masking.active_for(roles) != masked_before:
            return "the reloaded configuration changes whether its statements are analysed or masked"
        self.hello = replace(hello, roles=roles)
        self.policy, self.masking = policy, masking
        guard = self._guard_object
        if guard is not None:
            guard.reconfigure(policy, names)
            current = self._protocol.masking if self._protocol is not None else None
            if current is not None:
                fresh = masking.for_session(roles, guard, lambda: self.catalogs.current(hello.target.name))
                assert fresh is not None  # active, as checked above
                current.adopt(fresh)
        return None

    async def _await_decision(self, holds: trio.Nursery, pipe: Pipe, protocol: SessionProtocol,
                              request: Request) -> None:
        """Wait for the held statement's outcome, then let the reactor carry on with it.

        If the session ends first (the client left, revocation, shutdown),
        the request is withdrawn and its end recorded.
        """
        assert self.approvals is not None
        decided: Request | None = None
        try:
            decided = await self.approvals.outcome(request.id)
        finally:
            if decided is None:
                reason = pipe.end_reason if pipe.finished.is_set() else "the session ended"
                ended = self.approvals.withdraw(request.id, reason)
                protocol.abandon(ended or self.approvals.store.get(request.id) or request)
        log.info("session %s: request %s %s", self.id, request.id, decided.status)
        self.reactor.resume(pipe, partial(protocol.resume, decided))
        if decided.status == "approved" and decided.grant_seconds is not None:
            holds.start_soon(self._grant_expires, protocol, decided)

    @staticmethod
    async def _grant_expires(protocol: SessionProtocol, request: Request) -> None:
        assert request.decided_at is not None and request.grant_seconds is not None
        await trio.sleep(max(0.0, request.decided_at + request.grant_seconds - time.time()))
        protocol.grant_expired(request)

    async def _cancel(self, cancel_upstream: Callable[[], Awaitable[None]]) -> None:
        """A CancelRequest: withdraws the request of a held statement, else cancels upstream."""
        held = self._protocol.holding if self._protocol is not None else None
        if held is not None and self.approvals is not None and \
                self.approvals.withdraw(held.id, "the client cancelled the statement") is not None:
            return
        await cancel_upstream()  # nothing held, or decided already and about to run

    async def _guard(self, login: Login) -> SessionGuard | None:
        """The session's policy guard, once the startup packet's settings passed it.

        A role allowed everything has no guard: there is nothing to decide,
        and its statements are relayed without being analysed.
        """
        hello = self.hello
        if self.policy.unrestricted(role.name for role in hello.roles) and \
                not self.masking.active_for(hello.roles):
            return None
        target = hello.target.name
        try:
            await self.catalogs.ensure(hello.target, login, self.upstream_tls)
        except CatalogUnavailable as exc:
            if exc.refused is not None:
                raise exc.refused from exc  # what the session's own connection would be told
            # Without a snapshot every name is unknown: refused now, saying why, not statement by statement.
            raise fatal("57P03", f'pgguard: cannot guard the session: the catalog of target "{target}" could not be '
                                 f"read ({exc})", "try again in a moment") from exc
        guard = SessionGuard(self.policy, [role.name for role in hello.roles], login.user,
                             lambda: self.catalogs.current(target),
                             on_ddl=lambda: self.catalogs.mark_stale(target, changed=True),
                             on_unknown=lambda: self.catalogs.mark_stale(target))
        try:
            decision = guard.check_startup(startup_settings(hello.upstream_params))
        except Unsupported as exc:
            raise fatal("42501", f"pgguard: {exc}") from exc
        if not decision.allowed:
            raise fatal("42501", decision.message, decision.hint)
        self._guard_object = guard
        return guard

    def drain(self, sqlstate: str, reason: str, message: str) -> None:
        """End the session once no request runs: now if none does, else right after the last one's answer."""
        protocol = self._protocol
        if protocol is None or protocol.idle:
            self.terminate(sqlstate, reason, message)
        else:
            protocol.end_when_idle(backend.ErrorResponse.build("FATAL", sqlstate, message).encode(), reason)

    def terminate(self, sqlstate: str, reason: str, message: str | None = None) -> bool:
        """End the session from outside (revocation, token expiry), idle or busy.

        The pipe leaves the reactor at once, so not one more byte is relayed;
        the session's own task then tells the client why and stops the upstream.
        False if the session was ending already.
        """
        if self._ending is not None or (self._pipe is not None and self._pipe.finished.is_set()):
            return False
        error = backend.ErrorResponse.build("FATAL", sqlstate, message or f"pgguard: session ended: {reason}")
        self._ending = (reason, error.encode())
        if self._pipe is not None:
            self.reactor.detach(self._pipe)
            self._pipe.finished.set()
        return True

    async def _farewell(self, upstream: Upstream, pipe: Pipe, cancel_upstream: Callable[[], Awaitable[None]]) -> None:
        """Send the client its FATAL, then end whatever it left running upstream."""
        assert self._ending is not None
        pipe.end_reason, error = self._ending
        with trio.move_on_after(FAREWELL_TIMEOUT):
            try:
                # Whatever the reactor still held for the client goes first: it ends on a message boundary.
                await self.hello.stream.send_all(bytes(pipe.client.pending) + error)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if not pipe.upstream.pending:  # else a message is half sent, and a Terminate would garble it
            try:
                upstream.stream.socket.send(frontend.Terminate().encode())
            except OSError:
                pass
        # A statement still running (pg_sleep, a long UPDATE) would go on, and
        # might commit, after its socket closed: cancel it.
        await cancel_upstream()
        await self._hang_up()

    async def _hang_up(self) -> None:
        """Close the client's connection after the FATAL the gateway sent it, without a reset.

        Closing a socket with unread data (the client's next query, sent
        before the FATAL reached it) resets the connection, and on a reset
        the client's system drops the FATAL unread. So the gateway closes its
        side first, then reads and drops what the client still sends until it
        closes too, for FAREWELL_TIMEOUT at most.
        """
        sock = self.hello.stream.socket
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.hello.stream.close()
            return
        with trio.move_on_after(FAREWELL_TIMEOUT):
            while True:
                await trio.lowlevel.wait_readable(sock)
                try:
                    if not sock.recv(RECEIVE_SIZE):
                        break
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
        self.hello.stream.close()

    async def _greet(self, upstream: Upstream, process_id: int, secret_key: int) -> None:
        parts = [backend.AuthenticationOk().encode()]
        parts.extend(frame.data for frame in upstream.greeting)
        parts.append(backend.BackendKeyData(process_id, secret_key).encode())
        parts.append(backend.ReadyForQuery("I").encode())
        parts.extend(frame.data for frame in upstream.trailing)
        await self.hello.stream.send_all(b"".join(parts))
