"""Opening the gateway's own connection to a target database.

TLS follows libpq's `sslmode` (disable, prefer, require, verify-ca,
verify-full); as in libpq, `require` with a root certificate configured
verifies the chain like verify-ca. Authentication uses the credentials the
gateway holds for the chosen login: SCRAM-SHA-256, md5, cleartext or trust.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass

import trio

from pgguard.config import Login, TargetConfig
from pgguard.errors import GatewayError, fatal
from pgguard.relay.socket_stream import SocketStream
from pgguard.relay.streams import close_quietly, receive_exactly, receive_frames
from pgguard.wire import backend, frontend
from pgguard.wire.framing import Frame, MessageFramer, ProtocolViolation
from pgguard.wire.scram import MECHANISM, ScramClient, ScramError

CONNECT_TIMEOUT = 10.0
# The server is trusted to frame correctly, but a single row may legitimately
# approach PostgreSQL's 1 GB value limit.
UPSTREAM_MAX_MESSAGE = (1 << 30) + (1 << 20)


@dataclass
class Upstream:
    """An authenticated upstream connection, ready for the client's first query."""

    stream: trio.abc.Stream
    framer: MessageFramer
    process_id: int
    secret_key: int
    # ParameterStatus and friends as received, to pass on to the client.
    greeting: list[Frame]
    tls: bool


def tls_context(target: TargetConfig) -> ssl.SSLContext | None:
    """The client TLS context for `target`, or None for sslmode=disable."""
    if target.sslmode == "disable":
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = target.sslmode == "verify-full"
    if target.sslrootcert is not None:
        context.load_verify_locations(cafile=str(target.sslrootcert))
    else:
        context.verify_mode = ssl.CERT_NONE
    if target.sslcert is not None:
        context.load_cert_chain(str(target.sslcert), str(target.sslkey) if target.sslkey else None)
    return context


async def open_transport(target: TargetConfig, context: ssl.SSLContext | None) -> tuple[trio.abc.Stream, bool]:
    """TCP to the target, then TLS as its sslmode says. Returns (stream, is_tls)."""
    try:
        stream: trio.abc.Stream = SocketStream.adopt(await trio.open_tcp_stream(target.host, target.port))
    except OSError as exc:
        raise fatal("08001", f"cannot reach target {target.name!r}") from exc
    if context is None:
        return stream, False
    try:
        await stream.send_all(frontend.SSLRequest().encode())
        answer = await receive_exactly(stream, 1)
        if answer == b"N":
            if target.sslmode != "prefer":
                raise fatal("08001", f"target {target.name!r} does not offer TLS (sslmode={target.sslmode})")
            return stream, False
        if answer != b"S":
            raise fatal("08P01", f"target {target.name!r} answered the TLS request with {answer!r}")
        server_hostname = target.host if target.sslmode == "verify-full" else None
        tls_stream = trio.SSLStream(stream, context, server_hostname=server_hostname)
        await tls_stream.do_handshake()
        return tls_stream, True
    except (GatewayError, trio.BrokenResourceError, OSError, ssl.SSLError) as exc:
        await close_quietly(stream)
        if isinstance(exc, GatewayError):
            raise
        raise fatal("08001", f"TLS with target {target.name!r} failed: {exc}") from exc


async def connect(target: TargetConfig, login: Login, params: dict[str, str],
                  context: ssl.SSLContext | None) -> Upstream:
    """Connect, log in as `login` and collect the server's greeting."""
    with trio.fail_after(CONNECT_TIMEOUT):
        stream, tls = await open_transport(target, context)
        try:
            return await _login(stream, tls, target, login, params)
        except BaseException:
            await close_quietly(stream)
            raise


async def _login(stream: trio.abc.Stream, tls: bool, target: TargetConfig,
                 login: Login, params: dict[str, str]) -> Upstream:
    startup = {**params, "user": login.user, "database": target.dbname}
    await stream.send_all(frontend.StartupMessage(196608, startup).encode())
    framer = MessageFramer(UPSTREAM_MAX_MESSAGE)
    auth = _Authenticator(login)
    greeting: list[Frame] = []
    key: backend.BackendKeyData | None = None
    while True:
        for frame in await receive_frames(stream, framer):
            message = backend.decode_backend(frame)
            if isinstance(message, backend.ErrorResponse):
                raise _login_refused(target, login, message)
            if frame.tag == ord("R"):
                reply = auth.answer(message)
                if reply is not None:
                    await stream.send_all(reply)
            elif isinstance(message, backend.BackendKeyData):
                key = message
            elif isinstance(message, backend.ReadyForQuery):
                if not auth.done or key is None:
                    raise fatal("08P01", f"target {target.name!r} skipped authentication")
                return Upstream(stream, framer, key.process_id, key.secret_key, greeting, tls)
            else:
                greeting.append(frame)


def _login_refused(target: TargetConfig, login: Login, error: backend.ErrorResponse) -> GatewayError:
    # The client learns that the gateway's login failed, not the login's name.
    return fatal(
        error.code or "08006",
        f"target {target.name!r} refused the gateway's login: {error.message}".replace(login.user, "<login>"),
    )


class _Authenticator:
    """Answers the upstream's authentication requests for one login."""

    def __init__(self, login: Login) -> None:
        self.login = login
        self.done = False
        self._scram: ScramClient | None = None

    def _password(self) -> str:
        if self.login.password is None:
            raise fatal("28P01", "the target asks for a password the gateway has not been given")
        return self.login.password

    def answer(self, message: object) -> bytes | None:
        try:
            return self._answer(message)
        except ScramError as exc:
            raise fatal("28000", f"SCRAM with the target failed: {exc}") from exc

    def _answer(self, message: object) -> bytes | None:
        if isinstance(message, backend.AuthenticationOk):
            if self._scram is not None:
                raise ScramError("server skipped its final message")
            self.done = True
            return None
        if isinstance(message, backend.AuthenticationCleartextPassword):
            return frontend.PasswordMessage(self._password()).encode()
        if isinstance(message, backend.AuthenticationMD5Password):
            return frontend.PasswordMessage(_md5(self._password(), self.login.user, message.salt)).encode()
        if isinstance(message, backend.AuthenticationSASL):
            if MECHANISM not in message.mechanisms:
                raise fatal("28000", f"target offers no supported SASL mechanism ({', '.join(message.mechanisms)})")
            self._scram = ScramClient(self._password())
            return frontend.SASLInitialResponse(MECHANISM, self._scram.client_first()).encode()
        if isinstance(message, backend.AuthenticationSASLContinue) and self._scram is not None:
            return frontend.SASLResponse(self._scram.client_final(message.data)).encode()
        if isinstance(message, backend.AuthenticationSASLFinal) and self._scram is not None:
            self._scram.verify_server_final(message.data)
            self._scram = None
            return None
        raise fatal("28000", f"target asks for an unsupported authentication method ({type(message).__name__})")


def _md5(password: str, user: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


async def send_cancel(target: TargetConfig, context: ssl.SSLContext | None, process_id: int, secret_key: int) -> None:
    """Forward a CancelRequest to the upstream backend; failures are silent, as in PostgreSQL."""
    with trio.move_on_after(CONNECT_TIMEOUT):
        try:
            stream, _ = await open_transport(target, context)
        except GatewayError:
            return
        try:
            await stream.send_all(frontend.CancelRequest(process_id, secret_key).encode())
            # The server closes the connection once it has read the request.
            await stream.receive_some(1)
        except (trio.BrokenResourceError, ProtocolViolation, OSError, ssl.SSLError):
            pass
        finally:
            await close_quietly(stream)
