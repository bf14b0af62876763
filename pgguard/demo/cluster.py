"""A throwaway PostgreSQL server living in one directory.

`pgguard demo` and the tests need a real server they own outright: created in
a temporary directory, configured for speed rather than durability, reachable
on loopback only, and deleted afterwards. Product code must not depend on a
driver, so SQL goes through the `psql` binary.

PostgreSQL refuses to run as root; when we are root its server tools run as
the `postgres` OS user, which must then own everything the server reads.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SERVER_OS_USER = "postgres"
DEBIAN_BIN_DIRS = Path("/usr/lib/postgresql")
LOCAL_HBA = "local all all scram-sha-256"
HOSTSSL_HBA = f"hostssl all all {HOST}/32 scram-sha-256"
HOST_HBA = f"host all all {HOST}/32 scram-sha-256"
START_TIMEOUT_SECONDS = 60
LOG_TAIL_LINES = 40
CONF_FILE = "pgguard.conf"


class PostgresError(RuntimeError):
    """A PostgreSQL tool failed; the message carries what it said."""


def find_bin_dir() -> Path:
    """Where initdb and pg_ctl live: Debian keeps them off PATH, one directory per major version."""
    versioned = [initdb.parent for initdb in DEBIAN_BIN_DIRS.glob("*/bin/initdb")]
    if versioned:
        return max(versioned, key=lambda bin_dir: _version_key(bin_dir.parent.name))
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: "
        "install the apt package `postgresql` (or put initdb on PATH)"
    )


def free_port(host: str = HOST) -> int:
    """An unused TCP port; the short race until a server binds it is fine for throwaway servers."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A private PostgreSQL server: `initdb` on first `start()`, gone after `remove()`.

    `hba_extra` lines come before the defaults, so they win for the users they name.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        superuser_password: str | None = None,
        ssl_cert: str | os.PathLike[str] | None = None,
        ssl_key: str | os.PathLike[str] | None = None,
        hba_extra: Sequence[str] = (),
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if (ssl_cert is None) != (ssl_key is None):
            raise ValueError("ssl_cert and ssl_key must be given together")
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_bin_dir()
        self.psql_path = _find_psql(self.bin_dir)
        self._os_user = _server_os_user()  # checked before a temp dir exists to leak
        if directory is None:
            directory = tempfile.mkdtemp(prefix="pgguard-pg-")
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        self.log_file = self.directory / "postgres.log"
        self.host = HOST
        self.port = port or free_port()
        self.superuser = SUPERUSER
        self.superuser_password = superuser_password or secrets.token_urlsafe(24)
        self.ssl_cert = Path(ssl_cert) if ssl_cert is not None else None
        self.ssl_key = Path(ssl_key) if ssl_key is not None else None
        defaults = [LOCAL_HBA, HOSTSSL_HBA, HOST_HBA] if self.ssl else [LOCAL_HBA, HOST_HBA]
        self.hba_lines = [*hba_extra, *defaults]

    @property
    def ssl(self) -> bool:
        return self.ssl_cert is not None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, (re)write its config, and wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # The socket and log live here too, so the server must be able to write it.
        self._own(self.directory, 0o755)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._configure()
        try:
            self._server_tool(
                "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                "-w", "-t", str(START_TIMEOUT_SECONDS), "start",
            )
        except PostgresError as exc:
            raise PostgresError(f"{exc}\n--- tail of {self.log_file} ---\n{self.log_tail()}") from None

    def stop(self) -> None:
        """Fast shutdown (open sessions are rolled back); nothing to do when not running."""
        if (self.data_dir / "postmaster.pid").exists():
            self._server_tool("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server and delete its directory, even if stopping fails."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log written)"

    # -- clients ---------------------------------------------------------------

    def dsn(
        self,
        dbname: str = "postgres",
        user: str = SUPERUSER,
        password: str | None = None,
        **params: str | int,
    ) -> str:
        """A libpq URI for this server; the superuser's password is filled in when none is given."""
        if password is None and user == self.superuser:
            password = self.superuser_password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        query = f"?{urlencode(params)}" if params else ""
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}{query}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run `sql` as the superuser and return its unaligned, tuples-only output.

        The text is sent as one `-c` string, so several statements share one
        implicit transaction (and CREATE DATABASE must be sent alone).
        """
        return self._psql(dbname, "-c", sql).removesuffix("\n")

    def load(self, sql_text: str, dbname: str = "postgres") -> None:
        """Run a large script (COPY ... FROM STDIN blocks welcome) from stdin, all in one transaction."""
        self._psql(dbname, "--single-transaction", "-f", "-", stdin=sql_text)

    # -- internals -------------------------------------------------------------

    def _psql(self, dbname: str, *args: str, stdin: str | None = None) -> str:
        cmd = [
            self.psql_path, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", self.superuser, "-d", dbname, *args,
        ]
        return _run(cmd, stdin=stdin, env={"PGPASSWORD": self.superuser_password})

    def _initdb(self) -> None:
        pwfile = self.directory / "pwfile"
        self._write(pwfile, self.superuser_password, 0o600)
        try:
            self._server_tool(
                "initdb", "-D", str(self.data_dir), "-U", self.superuser, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)

    def _configure(self) -> None:
        """Our settings go in a file of their own, included once from postgresql.conf."""
        settings: dict[str, str | int] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.directory),
            "password_encryption": "scram-sha-256",
            # Throwaway data: durability buys nothing and costs seconds.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": 400,
        }
        if self.ssl_cert is not None and self.ssl_key is not None:
            # The server insists on a private key it owns with mode 0600.
            self._write(self.data_dir / "server.crt", self.ssl_cert.read_bytes(), 0o600)
            self._write(self.data_dir / "server.key", self.ssl_key.read_bytes(), 0o600)
            settings |= {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
        self._write(self.data_dir / CONF_FILE, _conf_text(settings), 0o600)
        self._write(self.data_dir / "pg_hba.conf", "\n".join(self.hba_lines) + "\n", 0o600)
        main_conf = self.data_dir / "postgresql.conf"
        include = f"include '{CONF_FILE}'\n"
        if include not in main_conf.read_text():
            with main_conf.open("a") as out:
                out.write(include)

    def _server_tool(self, name: str, *args: str) -> str:
        cmd = [str(self.bin_dir / name), *args]
        if self._os_user is not None:
            cmd = ["runuser", "-u", self._os_user.pw_name, "--", *cmd]
        # Run from our own directory: the postgres user may not be able to enter the caller's.
        return _run(cmd, cwd=self.directory, tool=name)

    def _write(self, path: Path, content: str | bytes, mode: int) -> None:
        """Write a file the server reads: as root it has to belong to the server's OS user."""
        data = content.encode() if isinstance(content, str) else content
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with open(fd, "wb") as out:
            out.write(data)
        self._own(path, mode)

    def _own(self, path: Path, mode: int) -> None:
        os.chmod(path, mode)
        if self._os_user is not None:
            os.chown(path, self._os_user.pw_uid, self._os_user.pw_gid)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _find_psql(bin_dir: Path) -> str:
    bundled = bin_dir / "psql"
    found = str(bundled) if bundled.exists() else shutil.which("psql")
    if found is None:
        raise PostgresError("psql not found: install the apt package `postgresql-client`")
    return found


def _server_os_user() -> pwd.struct_passwd | None:
    """The OS user to run server tools as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL will not run as root and there is no OS user `{SERVER_OS_USER}` "
            "(the apt package `postgresql` creates it)"
        ) from None


def _conf_text(settings: Mapping[str, str | int]) -> str:
    def quoted(value: str | int) -> str:
        return "'" + str(value).replace("'", "''") + "'"

    return "".join(f"{name} = {quoted(value)}\n" for name, value in settings.items())


def _run(
    cmd: Sequence[str],
    *,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    tool: str | None = None,
) -> str:
    """Run a tool to completion; on failure raise with its stderr, where PostgreSQL says why.

    Inherited PG* variables are dropped so that nothing in the caller's
    environment (PGHOST, PGSSLMODE, PGSERVICE...) redirects the tool.
    """
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    proc = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**clean, **(env or {})},
        cwd=cwd,
    )
    if proc.returncode != 0:
        said = proc.stderr.strip() or proc.stdout.strip()
        raise PostgresError(f"{tool or Path(cmd[0]).name} failed (exit {proc.returncode}): {said}")
    return proc.stdout
