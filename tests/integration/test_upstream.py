"""The gateway's own login to the target: authentication methods and TLS (`sslmode` as libpq has it).

Each test serves the demo config with the analyst's upstream login (`reader`)
or the target's TLS settings edited, connects as the analyst, and looks from
the server's side (pg_stat_activity, pg_stat_ssl) at the backend the gateway
opened.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

from pgguard.config import load
from pgguard.demo.certs import make_ca
from pgguard.demo.data import DATABASE, READER
from pgguard.wire import backend, frontend
from pgguard.wire.framing import MessageFramer, StartupFramer
from rawclient import LogCursor, RawConnection, TomlValue, config_edit, login_as, login_error

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

TARGET = f"targets.{DATABASE}"
READER_LOGIN = f"{TARGET}.logins.reader"  # the analyst's login


@pytest.fixture
def serve(gateway_factory: Callable[..., RunningGateway]) -> Callable[..., RunningGateway]:
    """serve(target={...}, reader={...}): a gateway with those keys of the demo config changed."""

    def start(target: dict[str, TomlValue] | None = None,
              reader: dict[str, TomlValue] | None = None) -> RunningGateway:
        return gateway_factory(config_edit({TARGET: target or {}, READER_LOGIN: reader or {}}))

    return start


@pytest.fixture
def password_file(tmp_path: Path, postgres: PostgresServer) -> Callable[[str], Path]:
    """password_file(user): a file holding that test user's real password."""

    def write(user: str) -> Path:
        path = tmp_path / f"{user}.password"
        password = postgres.password_for(user)
        assert password is not None, user
        path.write_text(password + "\n")
        path.chmod(0o600)
        return path

    return write


def upstream_backend(gateway: RunningGateway, postgres: PostgresServer) -> tuple[str, bool]:
    """Log in as the analyst; return the upstream backend's user and whether it uses TLS."""
    app = f"upstream-test-{secrets.token_hex(4)}"
    with psycopg.connect(gateway.dsn("analyst", application_name=app)) as conn:
        row = conn.execute("SELECT current_user").fetchone()
        assert row is not None
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            seen = direct.execute(
                "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)"
                " WHERE a.application_name = %s", [app]).fetchall()
    assert len(seen) == 1, seen
    assert seen[0][0] == row[0]
    return row[0], seen[0][1]


@pytest.mark.parametrize("user", ["md5_user", "plain_user", READER])
def test_password_methods(serve: Callable[..., RunningGateway], password_file: Callable[[str], Path],
                          postgres: PostgresServer, user: str) -> None:
    """md5, cleartext `password`, and SCRAM-SHA-256 (the demo logins) as the target asks."""
    gateway = serve(reader={"user": user, "password_file": password_file(user)})
    assert upstream_backend(gateway, postgres) == (user, True)


def test_trust_needs_no_password(serve: Callable[..., RunningGateway], postgres: PostgresServer) -> None:
    gateway = serve(reader={"user": "trust_user", "password_file": None})
    assert load(gateway.config_path).targets[DATABASE].logins["reader"].password is None
    assert upstream_backend(gateway, postgres) == ("trust_user", True)


def test_password_asked_but_none_held(serve: Callable[..., RunningGateway]) -> None:
    gateway = serve(reader={"user": "plain_user", "password_file": None})
    error = login_error(gateway, "analyst")
    assert error.severity == "FATAL"
    assert "password the gateway has not been given" in error.message


def test_wrong_md5_password_is_refused(serve: Callable[..., RunningGateway], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    gateway = serve(reader={"user": "md5_user", "password_file": wrong})
    error = login_error(gateway, "analyst")
    assert error.severity == "FATAL"
    assert "md5_user" not in error.message and "not-the-password" not in error.message


@pytest.mark.parametrize(("sslmode", "keep_root", "tls"), [
    ("disable", True, False),
    ("prefer", True, True),
    ("require", False, True),
    ("require", True, True),
    ("verify-ca", True, True),
    ("verify-full", True, True),
])
def test_sslmode(serve: Callable[..., RunningGateway], postgres: PostgresServer,
                 sslmode: str, keep_root: bool, tls: bool) -> None:
    target: dict[str, TomlValue] = {"sslmode": sslmode, "host": "127.0.0.1"}
    if not keep_root:
        target["sslrootcert"] = None
    gateway = serve(target=target)
    assert upstream_backend(gateway, postgres) == (READER, tls)


@pytest.mark.parametrize("sslmode", ["require", "verify-ca", "verify-full"])
def test_server_certificate_from_another_ca_is_refused(serve: Callable[..., RunningGateway], tmp_path: Path,
                                                       sslmode: str) -> None:
    """With a root certificate configured even `require` verifies the chain, as in libpq."""
    other_ca = make_ca("some other CA").write(tmp_path / "other", "ca").cert
    gateway = serve(target={"sslmode": sslmode, "sslrootcert": other_ca})
    log = LogCursor(gateway)
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gateway.dsn("analyst")).close()
    assert "TLS with target 'demo' failed" in str(caught.value)
    for _ in range(2):  # refused cleanly every time: the gateway is still serving
        error = login_error(gateway, "analyst")
        assert error.severity == "FATAL" and error.code.startswith("08"), error.fields
        assert "TLS with target 'demo' failed" in error.message
        assert not error.message.rstrip().endswith(":"), f"no reason given: {error.message!r}"
    assert gateway.process.poll() is None
    # Whatever the client is told, the operator must learn why.
    log.wait_for(r"TLS with target 'demo' failed: .*certificate verify failed")


def test_user_rejected_without_tls(serve: Callable[..., RunningGateway], password_file: Callable[[str], Path],
                                   postgres: PostgresServer) -> None:
    reader = {"user": "nossl_user", "password_file": password_file("nossl_user")}
    plain = serve(target={"sslmode": "disable"}, reader=reader)
    error = login_error(plain, "analyst")
    assert error.severity == "FATAL" and "nossl_user" not in error.message, error.fields
    encrypted = serve(target={"sslmode": "require"}, reader=reader)
    assert upstream_backend(encrypted, postgres) == ("nossl_user", True)


# -- a target that answers SCRAM with hostile parameters -----------------------------------


class HostileTarget:
    """A fake PostgreSQL on loopback: offers SCRAM-SHA-256 and answers with `iterations`, then waits."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.challenged = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(20)
        with self.listener, self.listener.accept()[0] as conn:
            conn.settimeout(20)
            startup = StartupFramer()
            while startup.feed(conn.recv(4096)) is None:
                pass
            conn.sendall(backend.AuthenticationSASL(["SCRAM-SHA-256"]).encode())
            framer, frames = MessageFramer(), []
            while not frames:
                _, frames = framer.feed(conn.recv(4096))
            first = frontend.SASLInitialResponse.decode(frames[0].body).data or b""
            nonce = next(part[2:] for part in first.decode().split(",") if part.startswith("r="))
            server_first = f"r={nonce}hostile,s=c2FsdHNhbHQ=,i={self.iterations}"
            conn.sendall(backend.AuthenticationSASLContinue(server_first.encode()).encode())
            self.challenged.set()
            while conn.recv(4096):
                pass

    def config_tables(self, password_file: Path) -> str:
        """TOML for target `hostile`, with every login the demo roles name."""
        logins = "".join(
            f'\n[targets.hostile.logins.{name}]\nuser = "{name}"\npassword_file = "{password_file}"\n'
            for name in ("reader", "support", "engineer", "admin")
        )
        target = f'\n[targets.hostile]\nhost = "127.0.0.1"\nport = {self.port}\ndbname = "demo"\nsslmode = "disable"\n'
        return target + logins


@pytest.fixture
def hostile_gateway(gateway_factory: Callable[..., RunningGateway], tmp_path: Path,
                    request: pytest.FixtureRequest) -> tuple[RunningGateway, HostileTarget]:
    target = HostileTarget(request.param)
    password = tmp_path / "hostile.password"
    password.write_text("anything")
    return gateway_factory(lambda text: text + target.config_tables(password)), target


@pytest.mark.parametrize("hostile_gateway", [0], indirect=True, ids=["zero-iterations"])
def test_malformed_scram_from_target_is_a_fatal_error(hostile_gateway: tuple[RunningGateway, HostileTarget]) -> None:
    """The client gets an ErrorResponse, not a silently closed connection."""
    gateway, _ = hostile_gateway
    error = login_error(gateway, "analyst", database="hostile")
    assert error.severity == "FATAL", error.fields


@pytest.mark.parametrize("hostile_gateway", [2**31 - 1], indirect=True, ids=["2^31-1-iterations"])
def test_scram_iteration_bomb_does_not_freeze_other_sessions(
        hostile_gateway: tuple[RunningGateway, HostileTarget]) -> None:
    """PBKDF2 with 2^31 iterations takes many minutes: other sessions must not wait for it."""
    gateway, target = hostile_gateway
    ident = gateway.identities["analyst"]
    with login_as(gateway, "analyst") as bystander, RawConnection.to(gateway) as victim:
        victim.startup(ident.user, "hostile")
        victim.expect(backend.AuthenticationCleartextPassword)
        victim.send(frontend.PasswordMessage(ident.token))
        assert target.challenged.wait(5), "the gateway never reached the hostile target's SCRAM challenge"
        time.sleep(0.2)
        try:
            _, ready = bystander.query("SELECT 1", timeout=3)
        except TimeoutError:
            # The gateway's event loop is stuck in C code where SIGTERM cannot reach it:
            # kill our own gateway process now rather than wait for the fixture's timeout.
            gateway.process.kill()
            pytest.fail("another session got no answer within 3 s while the gateway ran PBKDF2")
        assert ready.status == "I"
