"""The client's side of the startup phase, up to a verified identity.

Order matters for safety: TLS is negotiated before anything else, a token is
only asked for once the connection is known to be encrypted (or loopback
where the config allows plaintext), and nothing reaches the target database
before the token has been verified.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace

import trio

from pgguard.config import Config, RoleConfig, TargetConfig, is_loopback
from pgguard.errors import fatal
from pgguard.identity import Identity, TokenError
from pgguard.identity.verifier import Verifier
from pgguard.relay.socket_stream import SocketStream
from pgguard.relay.streams import receive_frames, receive_packet
from pgguard.wire import backend, frontend
from pgguard.wire.framing import MessageFramer, ProtocolViolation, StartupFramer

# The peer name of a client on the Unix-domain socket.
LOCAL = "[local]"
# Parameters the gateway sets itself, or that would change what the
# connection is (replication), are never passed upstream from the client.
_RESERVED_PARAMS = {"user", "database", "replication"}


@dataclass
class ClientHello:
    """What the startup phase learned: a verified caller and where it goes."""

    stream: SocketStream
    framer: MessageFramer
    params: dict[str, str]
    identity: Identity
    roles: list[RoleConfig]
    target: TargetConfig
    tls: bool
    # Wall-clock time at which the session ends: the token's validity plus
    # [identity] expiry_grace.
    ends_at: float

    @property
    def upstream_params(self) -> dict[str, str]:
        return {
            name: value
            for name, value in self.params.items()
            if name not in _RESERVED_PARAMS and not name.startswith("_pq_.")
        }


@dataclass(frozen=True)
class CancelAsk:
    """The connection carried a CancelRequest rather than a session."""

    process_id: int
    secret_key: int


class ClientConnection:
    """A client connection, and where it comes from."""

    def __init__(self, stream: SocketStream, peer: str) -> None:
        self.stream = stream
        self.peer = peer

    @property
    def local(self) -> bool:
        """On this machine: loopback TCP or the Unix-domain socket."""
        return self.peer == LOCAL or is_loopback(self.peer)


async def negotiate(connection: ClientConnection, ssl_context: ssl.SSLContext | None
                    ) -> tuple[StartupFramer, frontend.StartupMessage | CancelAsk]:
    """Handle SSLRequest/GSSENCRequest until a StartupMessage or CancelRequest arrives."""
    framer = StartupFramer()
    while True:
        message = frontend.decode_startup(await receive_packet(connection.stream, framer))
        if isinstance(message, frontend.CancelRequest):
            return framer, CancelAsk(message.process_id, message.secret_key)
        if isinstance(message, frontend.StartupMessage):
            return framer, message
        if isinstance(message, frontend.GSSENCRequest):
            await connection.stream.send_all(b"N")
            continue
        # SSLRequest
        if connection.stream.tls:
            raise ProtocolViolation("SSLRequest inside TLS")
        if ssl_context is None:
            await connection.stream.send_all(b"N")
            continue
        if framer.buffered:
            # Bytes sent before the TLS handshake could be injected by anyone
            # on the path; PostgreSQL refuses them too (CVE-2021-23214).
            raise ProtocolViolation("data received after SSLRequest before TLS")
        await connection.stream.send_all(b"S")
        try:
            await connection.stream.start_tls(ssl_context, server_side=True)
        except trio.BrokenResourceError as exc:
            raise ProtocolViolation(str(exc)) from exc


async def authenticate(connection: ClientConnection, framer: StartupFramer, startup: frontend.StartupMessage,
                       config: Config, verifier: Verifier) -> ClientHello:
    """Check the startup packet, ask for the token and verify it."""
    stream, tls = connection.stream, connection.stream.tls
    if startup.protocol_version >> 16 != 3:
        raise fatal("0A000", f"unsupported frontend protocol {startup.protocol_version >> 16}."
                    f"{startup.protocol_version & 0xFFFF}: pgguard speaks 3.0")
    params = dict(startup.params)
    unknown_options = sorted(name for name in params if name.startswith("_pq_."))
    if startup.protocol_version != frontend.PROTOCOL_3_0 or unknown_options:
        await stream.send_all(backend.NegotiateProtocolVersion(0, unknown_options).encode())
    if "replication" in params and params["replication"].lower() not in ("false", "off", "no", "0"):
        raise fatal("0A000", "replication connections are not supported")
    user = params.get("user", "")
    if not user:
        raise fatal("28000", "no user name given")
    if not tls and not (config.gateway.allow_plaintext_loopback and connection.local):
        raise fatal("28000", "TLS is required", hint="connect with sslmode=require")
    dbname = params.get("database") or user
    target = config.targets.get(dbname)
    if target is None:
        raise fatal("3D000", f"no target database named {dbname!r}")

    await stream.send_all(backend.AuthenticationCleartextPassword().encode())
    messages = MessageFramer(max_size=64 * 1024)
    rest = framer.take_rest()
    _, frames = messages.feed(rest) if rest else (b"", [])
    if not frames:
        frames = await receive_frames(stream, messages)
    if frames[0].tag != ord("p"):
        raise ProtocolViolation(f"expected a password message, got {chr(frames[0].tag)!r}")
    token = frontend.PasswordMessage.decode(frames[0].body).password
    try:
        identity = await verifier.verify(token)
    except TokenError as exc:
        raise fatal("28P01", f"token refused: {exc}") from exc
    if identity.username != user:
        raise fatal("28000", f"user {user!r} does not match the token's user")
    if identity.target is not None and identity.target != target.name:
        raise fatal("28000", f"the token is not valid for target {target.name!r}")
    roles = config.roles_for_groups(list(identity.groups))
    if not roles:
        raise fatal("28000", f"no role is granted to user {user!r}",
                    hint="the token's groups map to no [roles] entry")
    if len(frames) > 1 or messages.buffered:
        raise ProtocolViolation("client sent messages before authentication completed")
    identity = replace(identity, roles=tuple(role.name for role in roles))
    return ClientHello(stream, MessageFramer(config.gateway.max_message_size), params, identity,
                       roles, target, tls, identity.valid_until + config.identity.expiry_grace)
