"""A hand-driven PostgreSQL client for tests that must misbehave on the wire.

psycopg can only say what libpq lets it say; these tests need to send exactly
the bytes they choose (garbage, half a packet, a hostile length) and to read
exactly what the gateway answers (every ErrorResponse field, the
NegotiateProtocolVersion message). Messages are built with
`pgguard.wire.frontend` and read with `MessageFramer` + `decode_backend`.
Also here, for the same tests: `craft_token`, a token signed as the gateway
would sign it but with chosen claims, `assert_refused`, which checks a refused
login both through psycopg and on the wire, `LogCursor`, which waits for a line in a
gateway's log, and `config_edit`, which edits the pgguard.toml that
gateway_factory writes.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import jwt
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.config import load
from pgguard.demo.data import DATABASE
from pgguard.wire import backend, frontend
from pgguard.wire.codec import Message
from pgguard.wire.framing import MessageFramer

if TYPE_CHECKING:
    from conftest import RunningGateway

TIMEOUT = 5.0
M = TypeVar("M", bound=Message)


class Closed(Exception):
    """The gateway closed the connection (EOF or reset)."""


class Refused(Exception):
    """The gateway answered a login with an ErrorResponse."""

    def __init__(self, error: backend.ErrorResponse) -> None:
        super().__init__(f"{error.severity} {error.code}: {error.message}")
        self.error = error


class RawConnection:
    """One TCP (optionally TLS) connection to the gateway, spoken to by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self._framer = MessageFramer()
        self._pending: deque[Message] = deque()

    @classmethod
    def open(cls, host: str, port: int, timeout: float = TIMEOUT, source: str | None = None) -> RawConnection:
        """Connect, from the local address `source` when given (e.g. 127.0.0.2: another client host)."""
        return cls(socket.create_connection((host, port), timeout=timeout,
                                            source_address=(source, 0) if source else None))

    @classmethod
    def to(cls, gateway: RunningGateway) -> RawConnection:
        return cls.open(gateway.host, gateway.port)

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST rather than a FIN: the rudest way to vanish."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    # -- sending ---------------------------------------------------------------

    def send(self, *parts: Message | bytes) -> None:
        """Send messages (encoded here) and raw bytes, in one write."""
        self.sock.sendall(b"".join(p if isinstance(p, bytes) else p.encode() for p in parts))

    def start_tls(self, ca_cert: Path | None = None, server_hostname: str = "127.0.0.1") -> None:
        """SSLRequest, expect 'S', and wrap the socket (verifying against `ca_cert` when given)."""
        self.send(frontend.SSLRequest())
        answer = self.receive_bytes(1)
        if answer != b"S":
            raise AssertionError(f"gateway answered the SSLRequest with {answer!r}")
        context = ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
        if ca_cert is None:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)

    def startup(self, user: str, database: str, protocol: int = frontend.PROTOCOL_3_0, **params: str) -> None:
        self.send(frontend.StartupMessage(protocol, {"user": user, "database": database, **params}))

    # -- receiving -------------------------------------------------------------

    def receive_bytes(self, size: int, timeout: float = TIMEOUT) -> bytes:
        """Exactly `size` raw bytes (for the one-byte SSL/GSS answers)."""
        data = b""
        self.sock.settimeout(timeout)
        while len(data) < size:
            chunk = self._recv(size - len(data))
            if not chunk:
                raise Closed(f"closed after {data!r}")
            data += chunk
        return data

    def receive(self, timeout: float = TIMEOUT) -> Message:
        """The next backend message; raises Closed at EOF, socket.timeout if none comes."""
        self.sock.settimeout(timeout)
        while not self._pending:
            data = self._recv(65536)
            if not data:
                raise Closed("connection closed by the gateway")
            _, frames = self._framer.feed(data)
            self._pending.extend(backend.decode_backend(frame) for frame in frames)
        return self._pending.popleft()

    def expect(self, kind: type[M], timeout: float = TIMEOUT) -> M:
        """The next message, which must be a `kind`; an ErrorResponse raises Refused."""
        message = self.receive(timeout)
        if isinstance(message, backend.ErrorResponse) and kind is not backend.ErrorResponse:
            raise Refused(message)
        if not isinstance(message, kind):
            raise AssertionError(f"expected {kind.__name__}, got {message!r}")
        return message

    def receive_until(self, kind: type[M], timeout: float = TIMEOUT) -> tuple[list[Message], M]:
        """Messages up to the first `kind`; an ErrorResponse on the way raises Refused."""
        seen: list[Message] = []
        while True:
            message = self.receive(timeout)
            if isinstance(message, kind):
                return seen, message
            if isinstance(message, backend.ErrorResponse):
                raise Refused(message)
            seen.append(message)

    def wait_closed(self, timeout: float = TIMEOUT) -> list[Message]:
        """Read until the gateway closes; return what it said on the way. Fails on timeout."""
        deadline = time.monotonic() + timeout
        said: list[Message] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout}s; received {said!r}")
            try:
                said.append(self.receive(remaining))
            except Closed:
                return said
            except TimeoutError as exc:
                raise AssertionError(f"connection still open after {timeout}s; received {said!r}") from exc

    def _recv(self, size: int) -> bytes:
        try:
            return self.sock.recv(size)
        except (ConnectionResetError, BrokenPipeError):
            return b""

    # -- logging in --------------------------------------------------------------

    def authenticate(self, token: str) -> list[Message]:
        """Answer the cleartext password request; return the messages up to ReadyForQuery."""
        self.expect(backend.AuthenticationCleartextPassword)
        self.send(frontend.PasswordMessage(token))
        greeting, _ = self.receive_until(backend.ReadyForQuery)
        if not greeting or not isinstance(greeting[0], backend.AuthenticationOk):
            raise AssertionError(f"expected AuthenticationOk first, got {greeting!r}")
        return greeting

    def login(self, user: str, token: str, database: str, **params: str) -> list[Message]:
        """StartupMessage + token; returns the greeting. Refused carries the gateway's error."""
        self.startup(user, database, **params)
        return self.authenticate(token)

    def query(self, sql: str, timeout: float = TIMEOUT) -> tuple[list[Message], backend.ReadyForQuery]:
        """A simple Query; everything up to ReadyForQuery (errors included, not raised)."""
        self.send(frontend.Query(sql))
        seen: list[Message] = []
        while True:
            message = self.receive(timeout)
            if isinstance(message, backend.ReadyForQuery):
                return seen, message
            seen.append(message)


def login_as(gateway: RunningGateway, identity: str = "analyst", *, tls: bool = False,
             token: str | None = None, user: str | None = None, database: str | None = None,
             **params: str) -> RawConnection:
    """A raw connection logged in through `gateway` (plaintext loopback unless `tls`)."""
    ident = gateway.identities[identity]
    conn = RawConnection.to(gateway)
    try:
        if tls:
            conn.start_tls(gateway.ca_cert)
        conn.login(user or ident.user, token or ident.token, database or DATABASE, **params)
    except BaseException:
        conn.close()
        raise
    return conn


def login_error(gateway: RunningGateway, identity: str = "analyst", *, tls: bool = False,
                token: str | None = None, user: str | None = None,
                database: str | None = None) -> backend.ErrorResponse:
    """The ErrorResponse a raw login attempt gets; fails if the login succeeds."""
    try:
        conn = login_as(gateway, identity, tls=tls, token=token, user=user, database=database)
    except Refused as refused:
        return refused.error
    conn.close()
    raise AssertionError("the gateway accepted a login it should have refused")


def craft_token(gateway: RunningGateway, *, key: Ed25519PrivateKey | None = None, kid: str = "demo-1",
                **claims: Any) -> str:
    """A token for the analyst as the gateway would issue it, with `claims` changed (None removes one)."""
    identity = load(gateway.config_path).identity
    if key is None:
        loaded = serialization.load_pem_private_key(identity.signing_keys[0].private_key_file.read_bytes(), None)
        assert isinstance(loaded, Ed25519PrivateKey)
        key = loaded
    now = int(time.time())
    base = {"iss": identity.issuer, "aud": identity.audience, "sub": gateway.identities["analyst"].user,
            identity.groups_claim: ["analysts"], "iat": now, "nbf": now, "exp": now + 600}
    merged = {name: value for name, value in {**base, **claims}.items() if value is not None}
    return jwt.encode(merged, key, algorithm="EdDSA", headers={"kid": kid})


def assert_refused(gateway: RunningGateway, sqlstate: str, text: str, *, identity: str = "analyst",
                   sslmode: str = "verify-full", token: str | None = None, user: str | None = None,
                   dbname: str = DATABASE) -> backend.ErrorResponse:
    """psycopg is refused with `text`; a raw login gets FATAL `sqlstate` with the same text."""
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gateway.dsn(identity, sslmode=sslmode, token=token, user=user, dbname=dbname)).close()
    assert text in str(caught.value)
    assert caught.value.sqlstate in (None, sqlstate)
    error = login_error(gateway, identity, tls=sslmode != "disable", token=token, user=user, database=dbname)
    assert (error.severity, error.code) == ("FATAL", sqlstate), error.fields
    assert error.message.startswith("pgguard:") and text in error.message, error.message
    return error


class LogCursor:
    """Reads only what a gateway logged after the cursor was made."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.offset = len(gateway.log_text())

    def new_text(self) -> str:
        return self.gateway.log_text()[self.offset:]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> list[str]:
        """Wait until `count` new lines match the regex `pattern`; return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.new_text().splitlines() if regex.search(line)]
            if len(lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"expected {count} log line(s) matching {pattern!r}, found {len(lines)}:\n{self.new_text()}"
                )
            time.sleep(0.02)


# -- editing the generated pgguard.toml (for gateway_factory's `edit`) -----------------

TomlValue = str | int | float | bool | Path | None


def _toml(value: str | int | float | bool | Path) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def set_keys(text: str, section: str, values: dict[str, TomlValue]) -> str:
    """Set keys of one `[section]` of a pgguard.toml text; None deletes the key."""
    lines = text.splitlines(keepends=True)
    start = lines.index(f"[{section}]\n") + 1  # ValueError when the section is missing
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    kept = [line for line in lines[start:end] if line.split("=", 1)[0].strip() not in values]
    added = [f"{key} = {_toml(value)}\n" for key, value in values.items() if value is not None]
    return "".join(lines[:start] + added + kept + lines[end:])


def config_edit(sections: dict[str, dict[str, TomlValue]]) -> Callable[[str], str]:
    """An `edit` for gateway_factory: {"gateway": {"login_timeout": 1}, ...}."""

    def edit(text: str) -> str:
        for section, values in sections.items():
            text = set_keys(text, section, values)
        return text

    return edit
