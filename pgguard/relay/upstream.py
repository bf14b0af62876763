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
from pgguard.relay.streams import PeerClosed, receive_exactly, receive_frames
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

    stream: SocketStream
    framer: MessageFramer
    process_id: int
    secret_key: int
    # ParameterStatus and friends as received, to pass on to the client.
    greeting: list[Frame]
    # Anything the server sent after ReadyForQuery in the same read.
    trailing: list[Frame]


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


async def open_transport(target: TargetConfig, context: ssl.SSLContext | None) -> SocketStream:
    """TCP to the target, then TLS as its sslmode says."""
    try:
        stream = SocketStream.adopt(await trio.open_tcp_stream(target.host, target.port))
    except OSError as exc:
        raise fatal("08001", f"cannot reach target {target.name!r}") from exc
    if context is None:
        return stream
    try:
        await stream.send_all(frontend.SSLRequest().encode())
        answer = await receive_exactly(stream, 1)
        if answer == b"N":
            if target.sslmode != "prefer":
                raise fatal("08001", f"target {target.name!r} does not offer TLS (sslmode={target.sslmode})")
            return stream
        if answer != b"S":
            raise fatal("08P01", f"target {target.name!r} answered the TLS request with {answer!r}")
        server_hostname = target.host if target.sslmode == "verify-full" else None
        await stream.start_tls(context, server_side=False, server_hostname=server_hostname)
        return stream
    except (trio.BrokenResourceError, PeerClosed) as exc:
        stream.close()
        raise fatal("08001", f"TLS with target {target.name!r} failed: {exc}") from exc
    except GatewayError:
        stream.close()
        raise


async def connect(target: TargetConfig, login: Login, params: dict[str, str],
                  context: ssl.SSLContext | None) -> Upstream:
    """Connect, log in as `login` and collect the server's greeting."""
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await open_transport(target, context)
        try:
            return await _login(stream, target, login, params)
        except BaseException:
            stream.close()
            raise


async def _login(stream: SocketStream, target: TargetConfig,
                 login: Login, params: dict[str, str]) -> Upstream:
    startup = {**params, "user": login.user, "database": target.dbname}
    await stream.send_all(frontend.StartupMessage(frontend.PROTOCOL_3_0, startup).encode())
    framer = MessageFramer(UPSTREAM_MAX_MESSAGE)
    auth = _Authenticator(login)
    greeting: list[Frame] = []
    key: backend.BackendKeyData | None = None
    while True:
        frames = await receive_frames(stream, framer)
        for index, frame in enumerate(frames):
            message = backend.decode_backend(frame)
            if isinstance(message, backend.ErrorResponse):
                raise _login_refused(target, login, message)
            if frame.tag == ord("R"):
                reply = await auth.answer(message)
                if reply is not None:
                    await stream.send_all(reply)
            elif isinstance(message, backend.BackendKeyData):
                key = message
            elif isinstance(message, backend.ReadyForQuery):
                if not auth.done or key is None:
                    raise fatal("08P01", f"target {target.name!r} skipped authentication")
                return Upstream(stream, framer, key.process_id, key.secret_key, greeting, frames[index + 1:])
            else:
                greeting.append(frame)


def _login_refused(target: TargetConfig, login: Login, error: backend.ErrorResponse) -> GatewayError:
    # The client learns that the gateway's login failed, not the login's name.
    # An authentication failure upstream is the gateway's, not the client's
    # token's: it is reported as 08004 so that no one goes hunting a bad token.
    code = error.code or "08006"
    return fatal(
        "08004" if code.startswith("28") else code,
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
            raise fatal("08004", "the target asks for a password the gateway has not been given")
        return self.login.password

    async def answer(self, message: object) -> bytes | None:
        try:
            if isinstance(message, backend.AuthenticationSASLContinue) and self._scram is not None:
                # PBKDF2 is the costly step: a thread keeps the other sessions moving.
                proof = await trio.to_thread.run_sync(self._scram.client_final, message.data,
                                                      abandon_on_cancel=True)
                return frontend.SASLResponse(proof).encode()
            return self._answer(message)
        except ScramError as exc:
            raise fatal("08004", f"SCRAM with the target failed: {exc}") from exc

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
                raise fatal("08004", f"target offers no supported SASL mechanism ({', '.join(message.mechanisms)})")
            self._scram = ScramClient(self._password())
            return frontend.SASLInitialResponse(MECHANISM, self._scram.client_first()).encode()
        if isinstance(message, backend.AuthenticationSASLFinal) and self._scram is not None:
            self._scram.verify_server_final(message.data)
            self._scram = None
            return None
        raise fatal("08004", f"target asks for an unsupported authentication method ({type(message).__name__})")


def _md5(password: str, user: str, salt: bytes) -> str:
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


async def send_cancel(target: TargetConfig, context: ssl.SSLContext | None, process_id: int, secret_key: int) -> None:
    """Forward a CancelRequest to the upstream backend; failures are silent, as in PostgreSQL."""
    with trio.move_on_after(CONNECT_TIMEOUT):
        try:
            stream = await open_transport(target, context)
        except GatewayError:
            return
        try:
            await stream.send_all(frontend.CancelRequest(process_id, secret_key).encode())
            # The server closes the connection once it has read the request.
            await stream.receive_some(1)
        except (trio.BrokenResourceError, ProtocolViolation):
            pass
        finally:
            stream.close()
