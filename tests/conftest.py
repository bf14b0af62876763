"""Session fixtures: one test CA and one real PostgreSQL server for the whole run.

Starting PostgreSQL takes a second or two, so every test shares one server
with the demo data loaded; tests that write must clean up after themselves
(or roll back).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from pgguard.demo import data
from pgguard.demo.certs import CA, CertifiedKey, issue_server_cert, make_ca
from pgguard.demo.cluster import PostgresCluster, free_port
from pgguard.demo.gateway_config import DemoIdentity, issue_tokens, write_config

DATABASE = data.DATABASE

# Extra users for the upstream-auth tests: the pg_hba.conf line deciding how
# each logs in, and the password_encryption its password is stored with
# (md5 auth needs an md5 verifier; with a SCRAM one the server upgrades to SCRAM).
AUTH_TEST_USERS: dict[str, tuple[str, str]] = {
    "md5_user": ("host all md5_user 127.0.0.1/32 md5", "md5"),
    "plain_user": ("host all plain_user 127.0.0.1/32 password", "scram-sha-256"),
    "trust_user": ("host all trust_user 127.0.0.1/32 trust", "scram-sha-256"),
    # Rejected without TLS; over TLS the default hostssl scram line applies.
    "nossl_user": ("hostnossl all nossl_user 127.0.0.1/32 reject", "scram-sha-256"),
}


@dataclass(frozen=True)
class TLSFiles:
    """The test CA and a server certificate it signed for localhost, 127.0.0.1 and ::1."""

    ca: CA
    server: CertifiedKey
    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class PostgresServer:
    """The shared PostgreSQL server, with database `demo` loaded and every password it knows."""

    cluster: PostgresCluster
    host: str
    port: int
    superuser: str
    superuser_password: str
    ca_cert: Path
    login_passwords: dict[str, str]  # the gateway's upstream logins, data.LOGINS
    user_passwords: dict[str, str]  # AUTH_TEST_USERS
    database: str = DATABASE

    def password_for(self, user: str) -> str | None:
        known = {self.superuser: self.superuser_password, **self.login_passwords, **self.user_passwords}
        return known.get(user)

    def dsn(
        self,
        dbname: str = DATABASE,
        user: str = "postgres",
        password: str | None = None,
        sslmode: str = "disable",
        **params: str | int,
    ) -> str:
        """A libpq URI; the user's own password unless one is given, the test CA for verify-* modes."""
        if sslmode.startswith("verify"):
            params = {"sslrootcert": str(self.ca_cert), **params}
        chosen = password if password is not None else self.password_for(user)
        return self.cluster.dsn(dbname, user, chosen, sslmode=sslmode, **params)


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = make_ca("pgguard test CA")
    server = issue_server_cert(ca)
    server_files = server.write(directory, "server")
    return TLSFiles(
        ca=ca,
        server=server,
        ca_cert=ca.write(directory, "ca").cert,
        cert=server_files.cert,
        key=server_files.key,
    )


@contextmanager
def demo_server(test_ca: TLSFiles) -> Iterator[PostgresServer]:
    """A private PostgreSQL server with database `demo` loaded, removed afterwards."""
    # The cluster makes its own temp dir: pytest's are 0700 root-owned, which
    # the `postgres` OS user could not enter when we run as root.
    cluster = PostgresCluster(
        ssl_cert=test_ca.cert,
        ssl_key=test_ca.key,
        hba_extra=[hba for hba, _ in AUTH_TEST_USERS.values()],
    )
    try:
        cluster.start()
        login_passwords = {name: secrets.token_urlsafe(16) for name in data.LOGINS}
        user_passwords = {name: secrets.token_urlsafe(16) for name in AUTH_TEST_USERS}
        cluster.psql(f"CREATE DATABASE {DATABASE}")
        setup = data.demo_data_sql() + data.logins_sql(login_passwords) + _auth_users_sql(user_passwords)
        cluster.load(setup, DATABASE)
        yield PostgresServer(
            cluster=cluster,
            host=cluster.host,
            port=cluster.port,
            superuser=cluster.superuser,
            superuser_password=cluster.superuser_password,
            ca_cert=test_ca.ca_cert,
            login_passwords=login_passwords,
            user_passwords=user_passwords,
        )
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def postgres(test_ca: TLSFiles) -> Iterator[PostgresServer]:
    with demo_server(test_ca) as server:
        yield server


def _auth_users_sql(passwords: dict[str, str]) -> str:
    return "".join(
        f"SET password_encryption = '{stored_as}';\n"
        f"CREATE ROLE {user} LOGIN PASSWORD '{passwords[user]}';\n"
        f"GRANT CONNECT ON DATABASE {DATABASE} TO {user};\n"
        f"GRANT USAGE ON SCHEMA public TO {user};\n"
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {user};\n"
        for user, (_, stored_as) in AUTH_TEST_USERS.items()
    ) + "RESET password_encryption;\n"


@dataclass
class RunningGateway:
    """A `pgguard serve` process in front of the shared PostgreSQL."""

    host: str
    port: int
    config_path: Path
    log_path: Path
    ca_cert: Path
    identities: dict[str, DemoIdentity]
    process: subprocess.Popen[bytes]
    admin_port: int | None = None

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port it listens on: the gateway's, and the admin listener's."""
        return (self.port,) if self.admin_port is None else (self.port, self.admin_port)

    def dsn(self, identity: str = "analyst", *, sslmode: str = "verify-full", token: str | None = None,
            user: str | None = None, dbname: str = DATABASE, **params: str | int) -> str:
        ident = self.identities[identity]
        query = {"sslmode": sslmode, **params}
        if sslmode.startswith("verify"):
            query["sslrootcert"] = str(self.ca_cert)
        auth = f"{quote(user or ident.user, safe='')}:{quote(token or ident.token, safe='')}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}?{urlencode(query, quote_via=quote)}"

    def log_text(self) -> str:
        return self.log_path.read_text()


def start_gateway(directory: Path, postgres: PostgresServer, test_ca: TLSFiles,
                  edit: Callable[[str], str] = lambda text: text) -> RunningGateway:
    """Write the demo's config for the shared server (optionally edited) and serve it.

    A port chosen free can be taken before the gateway binds it (a client's connection may get it as
    its own local port): the gateway then stops with "Address already in use", and is started again
    on other ports, twice at most.
    """
    log_path = directory / "gateway.log"
    retries = 2
    while True:
        port, admin_port = free_port(), free_port()
        config_path = write_config(
            directory, host="127.0.0.1", port=port, admin_port=admin_port,
            tls_cert=test_ca.cert, tls_key=test_ca.key, pg_host=postgres.host, pg_port=postgres.port,
            pg_ca=test_ca.ca_cert, database=DATABASE, login_passwords=postgres.login_passwords,
        )
        config_path.write_text(edit(config_path.read_text()))
        taken = log_path.read_text().count("Address already in use") if log_path.exists() else 0
        try:
            process = _serve(config_path, log_path, (port, admin_port))
        except RuntimeError:
            if retries and log_path.read_text().count("Address already in use") > taken:
                retries -= 1
                continue
            raise
        return RunningGateway("127.0.0.1", port, config_path, log_path, test_ca.ca_cert,
                              issue_tokens(config_path), process, admin_port)


def _serve(config_path: Path, log_path: Path, ports: tuple[int, ...], command: list[str] | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`pgguard serve` (or `command`), logging to `log_path` (appended), once it accepts connections
    on every one of `ports` (the admin listener may open a moment after the gateway's)."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command or [sys.executable, "-m", "pgguard.cli", "serve", "-c", str(config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    deadline = time.monotonic() + 20
    waiting = list(ports)
    while waiting:
        try:
            socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
            waiting.pop(0)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"gateway did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
    return process


def stop_gateway(gateway: RunningGateway) -> None:
    gateway.process.terminate()
    try:
        gateway.process.wait(10)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        gateway.process.wait()


def restart_gateway(gateway: RunningGateway) -> None:
    """Stop the gateway's process and serve the same config again (same port, same files)."""
    stop_gateway(gateway)
    gateway.process = _serve(gateway.config_path, gateway.log_path, gateway.ports)


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer,
            test_ca: TLSFiles) -> Iterator[RunningGateway]:
    """The demo's configuration served in front of the shared PostgreSQL."""
    running = start_gateway(tmp_path_factory.mktemp("gateway"), postgres, test_ca)
    yield running
    stop_gateway(running)


@pytest.fixture
def gateway_factory(tmp_path: Path, postgres: PostgresServer,
                    test_ca: TLSFiles) -> Iterator[Callable[..., RunningGateway]]:
    """Start extra gateways with an edited config; stopped after the test."""
    started: list[RunningGateway] = []

    def start(edit: Callable[[str], str] = lambda text: text) -> RunningGateway:
        running = start_gateway(tmp_path / f"gw{len(started)}", postgres, test_ca, edit)
        started.append(running)
        return running

    yield start
    for running in started:
        stop_gateway(running)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, where the disk really fills up; skipped where it cannot be mounted."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
