"""The targets every benchmark reaches the database through, built side by side from one private PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pgguard.demo import data
from pgguard.demo.certs import issue_server_cert, make_ca
from pgguard.demo.cluster import HOST, PostgresCluster, free_port
from pgguard.demo.gateway_config import issue_tokens, write_config

from procs import START_TIMEOUT_SECONDS, BenchError, background, http_ok, port_open, stop, wait_until

REPO = Path(__file__).resolve().parent.parent
PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "pgbouncer")
SERVER_OS_USER = "postgres"  # PgBouncer, like PostgreSQL, refuses to run as root
UPSTREAM_ROLE = data.ADMIN  # the role pgguard logs in with for `dba`; direct and pgbouncer use it too
PGBENCH_SCALE = 10  # 1M rows in pgbench_accounts

# The large-SELECT benchmark's table: customers-like rows, two of whose columns the bench's
# gateway config classifies as sensitive. `analyst` gets them masked (and the content
# detectors over `name`); `dba` is cleared for everything and gets every row untouched.
PEOPLE_TABLE = "bench_people"
PEOPLE_ROWS = 1_000_000
PEOPLE_MASKS = {"email": "email", "phone": "partial"}
# The bench's lines in the gateway config's [masking.columns]: the large SELECT's two columns, and
# one of pgbench's, so that pgbench's statements have their lineage traced against a masked table.
BENCH_MASKS = (*((PEOPLE_TABLE, column, function) for column, function in PEOPLE_MASKS.items()),
               ("pgbench_accounts", "filler", "redact"))
# PostgreSQL's max_connections (the demo cluster's), and the room left over beyond idle clients.
MIN_BACKENDS = 400
BACKEND_MARGIN = 100

# The targets, in the order runs are interleaved and columns printed. Everything per-target
# (the environment, the table, the JSON) follows from these names.
DIRECT, PGBOUNCER, PGGUARD, PGGUARD_POLICY = "direct", "pgbouncer", "pgguard", "pgguard+policy"
PGGUARD_NOLOG = "pgguard-nolog"
TARGET_NAMES = (DIRECT, PGBOUNCER, PGGUARD_NOLOG, PGGUARD, PGGUARD_POLICY)
# The targets with a process in between, whose CPU time is charged to each run.
PROXIES = (PGBOUNCER, PGGUARD_NOLOG, PGGUARD, PGGUARD_POLICY)
# The gateway targets: one pgguard process, one demo identity each. `dba` may run every
# statement class, so it is relayed unanalysed (policy off); `analyst` has every statement
# parsed and checked (policy on). Both sessions are recorded in session logs.
GATEWAY_IDENTITIES = {PGGUARD: "dba", PGGUARD_POLICY: "analyst"}
# A second gateway process, with session logs off ([audit] enabled = false): `dba` again.
UNLOGGED_IDENTITIES = {PGGUARD_NOLOG: "dba"}


@dataclass(frozen=True)
class Target:
    """One way for a client to reach the database, and the process to charge its CPU to.

    `pid` is None when no proxy sits in between (direct to PostgreSQL).
    """

    name: str
    host: str
    port: int
    user: str
    password: str
    dbname: str = data.DATABASE
    pid: int | None = None

    def conninfo(self, **extra: str) -> str:
        """A libpq key=value string without the password (that goes in PGPASSWORD, off argv)."""
        params = {"host": self.host, "port": str(self.port), "user": self.user,
                  "dbname": self.dbname, "sslmode": "disable", **extra}
        return " ".join(f"{key}={_conninfo_quote(value)}" for key, value in params.items())

    def env(self) -> dict[str, str]:
        """The caller's environment minus PG* (which could redirect libpq), plus the password."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**clean, "PGPASSWORD": self.password}


def _conninfo_quote(value: str) -> str:
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def pgbench(target: Target, *args: str, timeout: float | None = None) -> str:
    """Run pgbench against a target and return its stdout; raise with its output if it fails."""
    cmd = ["pgbench", *args, target.conninfo()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=target.env(), timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"pgbench {' '.join(args)} against {target.name} timed out after {timeout}s") from exc
    if proc.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args)} against {target.name} exited {proc.returncode}:\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout



@dataclass
class Environment:
    """Everything a benchmark may use: the server (for superuser SQL) and the targets.

    `targets` maps each of TARGET_NAMES to its Target, in that order; `roles`
    says which database role each target's sessions run as, asked through the
    target itself, so the JSON records what was compared rather than what was meant.
    """

    cluster: PostgresCluster
    superuser: Target
    targets: dict[str, Target]
    roles: dict[str, str]
    gateway_config: Path
    gateway_log: Path
    passwords: dict[str, str] = field(repr=False)


@contextlib.contextmanager
def environment(base: Path, *, scale: int = PGBENCH_SCALE, people: int = 0, idle_clients: int = 0,
                log: Callable[[str], None] = print) -> Iterator[Environment]:
    """PostgreSQL with the demo data, pgbench's tables (scale 0: none) and `people` rows in
    PEOPLE_TABLE (0: none), PgBouncer and pgguard in front of it; all of them with room for
    `idle_clients` connections at once."""
    # PgBouncer keeps its server connections after its clients leave, so PostgreSQL must hold
    # PgBouncer's idle clients' and then a gateway's at the same time.
    backends = max(MIN_BACKENDS, 2 * idle_clients + BACKEND_MARGIN)
    with contextlib.ExitStack() as stack:
        log("starting PostgreSQL ...")
        cluster = stack.enter_context(private_postgres(base / "postgres", backends))
        superuser = Target("superuser", cluster.host, cluster.port, cluster.superuser, cluster.superuser_password)
        passwords = {login: secrets.token_urlsafe(18) for login in data.LOGINS}
        log(f"loading demo data, pgbench's tables (scale {scale}) and {people:,} rows of {PEOPLE_TABLE} ...")
        load_data(cluster, superuser, passwords, scale, people)
        direct = Target(DIRECT, cluster.host, cluster.port, UPSTREAM_ROLE, passwords[UPSTREAM_ROLE])
        log("starting PgBouncer ...")
        bouncer = stack.enter_context(pgbouncer(base / "pgbouncer", cluster, {UPSTREAM_ROLE: passwords[UPSTREAM_ROLE]},
                                                idle_clients + BACKEND_MARGIN))
        log("starting pgguard ...")
        gateways, config_path, gateway_log = stack.enter_context(
            pgguard(base / "gateway", cluster, passwords, GATEWAY_IDENTITIES))
        unlogged, _, _ = stack.enter_context(
            pgguard(base / "gateway-nolog", cluster, passwords, UNLOGGED_IDENTITIES, session_logs=False))
        by_name = {DIRECT: direct, PGBOUNCER: bouncer, **gateways, **unlogged}
        targets = {name: by_name[name] for name in TARGET_NAMES}
        roles = {name: database_role(target) for name, target in targets.items()}
        log("database roles: " + ", ".join(f"{name} {role}" for name, role in roles.items()))
        if roles[PGGUARD] != UPSTREAM_ROLE:
            # pgguard/pgbouncer compares proxies only if both reach PostgreSQL as the same role.
            raise BenchError(f"pgguard's `{GATEWAY_IDENTITIES[PGGUARD]}` identity runs as {roles[PGGUARD]}, "
                             f"not {UPSTREAM_ROLE} like direct and pgbouncer: check the demo config's roles")
        yield Environment(cluster, superuser, targets, roles, config_path, gateway_log, passwords)


@contextlib.contextmanager
def private_postgres(directory: Path, max_connections: int) -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL without TLS: the clients and both proxies talk plaintext over loopback."""
    cluster = PostgresCluster(directory)
    try:
        cluster.start()
        if max_connections > MIN_BACKENDS:  # a setting read only at start
            cluster.psql(f"ALTER SYSTEM SET max_connections = {max_connections}")
            cluster.stop()
            cluster.start()
        yield cluster
    finally:
        try:
            cluster.remove()
        except Exception as exc:  # noqa: BLE001 - cleanup must go on; say why it could not
            print(f"bench: stopping PostgreSQL: {exc}", file=sys.stderr)


def load_data(cluster: PostgresCluster, superuser: Target, passwords: Mapping[str, str], scale: int,
              people: int) -> None:
    """The demo's tables and logins (what pgguard's config expects), then the benchmarks' tables."""
    cluster.psql(f"CREATE DATABASE {data.DATABASE}")
    cluster.load(data.demo_data_sql() + data.logins_sql(dict(passwords)), data.DATABASE)
    if scale > 0:
        pgbench(superuser, "-i", "-s", str(scale), "-q", timeout=600)
        tables = "pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
        cluster.psql(f"GRANT SELECT ON {tables} TO {', '.join(data.LOGINS)}", data.DATABASE)
    if people > 0:
        cluster.load(people_sql(people) + f"GRANT SELECT ON {PEOPLE_TABLE} TO {', '.join(data.LOGINS)};\n",
                     data.DATABASE)
        # Frozen and analysed up front, so that no read pays for setting hint bits.
        cluster.psql(f"VACUUM (FREEZE, ANALYZE) {PEOPLE_TABLE}", data.DATABASE)


def people_sql(rows: int) -> str:
    """PEOPLE_TABLE with `rows` rows: an id, a name, an email address, a phone number, a date.

    The values look like what they stand for, so the masks do their real
    work: `email` keeps the domain, `partial` the phone's last four digits.
    """
    return f"""\
CREATE TABLE {PEOPLE_TABLE} (id integer NOT NULL, name text NOT NULL, email text NOT NULL,
                             phone text NOT NULL, signup date NOT NULL);
INSERT INTO {PEOPLE_TABLE}
SELECT g, 'Customer ' || g, 'customer' || g || '@example.com', '+1 555 ' || lpad(g::text, 7, '0'),
       date '2020-01-01' + g % 1500
FROM generate_series(1, {rows}) AS g;
"""


@contextlib.contextmanager
def pgbouncer(directory: Path, cluster: PostgresCluster, users: Mapping[str, str], clients: int
              ) -> Iterator[Target]:
    """PgBouncer in session mode, SCRAM with a plaintext auth_file, as `postgres` when we are root."""
    binary = next((path for name in PGBOUNCER_CANDIDATES if (path := shutil.which(name))), None)
    if binary is None:
        raise BenchError("pgbouncer not found: install the apt package `pgbouncer` (./dev bench does)")
    os_user = pwd.getpwnam(SERVER_OS_USER) if os.geteuid() == 0 else None
    directory.mkdir(parents=True)
    port = free_port(HOST)
    pidfile, log_path = directory / "pgbouncer.pid", directory / "pgbouncer.log"
    ini = directory / "pgbouncer.ini"
    userlist = directory / "userlist.txt"
    userlist.write_text("".join(f'"{user}" "{password}"\n' for user, password in users.items()))
    ini.write_text(f"""\
[databases]
{data.DATABASE} = host={cluster.host} port={cluster.port} dbname={data.DATABASE}

[pgbouncer]
listen_addr = {HOST}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
pool_mode = session
max_client_conn = {max(clients, 200)}
default_pool_size = {max(clients, 50)}
logfile = {log_path}
pidfile = {pidfile}
""")
    for path, mode in ((directory, 0o700), (ini, 0o600), (userlist, 0o600)):
        path.chmod(mode)
        if os_user is not None:
            os.chown(path, os_user.pw_uid, os_user.pw_gid)
    cmd = [binary, str(ini)]
    if os_user is not None:
        cmd = ["runuser", "-u", os_user.pw_name, "--", *cmd]
    # Its stdout/stderr (startup errors before the logfile opens) go next to the logfile.
    with background(cmd, directory / "stderr.log", cwd=directory) as proc:
        wait_until(lambda: port_open(HOST, port) and pidfile.exists(), proc, "pgbouncer",
                   directory / "stderr.log")
        # Under runuser, proc is runuser; the CPU and the signal belong to pgbouncer itself.
        pid = int(pidfile.read_text().strip())
        try:
            user = next(iter(users))
            yield Target("pgbouncer", HOST, port, user, users[user], pid=pid)
        finally:
            stop(proc, pid=pid, sig=signal.SIGTERM)  # SIGTERM: immediate shutdown


@contextlib.contextmanager
def pgguard(directory: Path, cluster: PostgresCluster, passwords: Mapping[str, str],
            identities_by_target: Mapping[str, str], *, session_logs: bool = True
            ) -> Iterator[tuple[dict[str, Target], Path, Path]]:
    """The demo gateway with plaintext upstream, as a subprocess, and one target per entry of
    `identities_by_target` (target name -> demo identity).

    The targets share the process (and so its CPU counter) and differ only
    in the identity whose token is the password: that way the policy's cost
    is measured on the same gateway instance that measures the bare relay.
    The gateway needs a TLS certificate even though the clients use the
    loopback plaintext allowance, so a throwaway CA signs one.
    """
    tls = make_ca("pgguard bench CA")
    ca_files = tls.write(directory / "tls", "ca")
    server_files = issue_server_cert(tls).write(directory / "tls", "server")
    port, admin_port = free_port(HOST), free_port(HOST)
    config_path = write_config(
        directory, host=HOST, port=port, admin_port=admin_port,
        tls_cert=server_files.cert, tls_key=server_files.key,
        pg_host=cluster.host, pg_port=cluster.port, pg_ca=ca_files.cert,
        database=data.DATABASE, login_passwords=dict(passwords),
    )
    text = _replace_once(config_path, config_path.read_text(), 'sslmode = "verify-full"', 'sslmode = "disable"')
    masked = "".join(f'"public.{table}.{column}" = "{function}"\n' for table, column, function in BENCH_MASKS)
    text = _replace_once(config_path, text, "[masking.columns]\n", "[masking.columns]\n" + masked)
    if not session_logs:
        text = _replace_once(config_path, text, "[audit]\n", "[audit]\nenabled = false\n")
    config_path.write_text(text)
    identities = issue_tokens(config_path)
    log_path = directory / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    cmd = [sys.executable, "-m", "pgguard.cli", "serve", "-c", str(config_path)]
    with background(cmd, log_path, cwd=REPO, env=env) as proc:
        wait_until(lambda: http_ok(f"http://{HOST}:{admin_port}/healthz"), proc, "pgguard", log_path)
        targets = {name: Target(name, HOST, port, identities[identity].user, identities[identity].token,
                                pid=proc.pid)
                   for name, identity in identities_by_target.items()}
        try:
            yield targets, config_path, log_path
        finally:
            stop(proc, sig=signal.SIGINT)  # what the gateway handles as "stop"


def _replace_once(path: Path, text: str, old: str, new: str) -> str:
    """`text` with its one `old` replaced: the demo config changed shape if there is not exactly one."""
    if text.count(old) != 1:
        raise BenchError(f"expected one {old.strip()!r} in {path} to replace")
    return text.replace(old, new)


def database_role(target: Target) -> str:
    """`current_user` as seen through `target`: which role its pgbench sessions will run as.

    Through pgguard+policy this is also a first statement the policy must
    allow, so a policy that refuses the benchmark fails here, before any run.
    """
    cmd = ["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", "SELECT current_user", "-d", target.conninfo()]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=target.env(), timeout=START_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"SELECT current_user through {target.name} timed out") from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"SELECT current_user through {target.name} exited {proc.returncode}:\n"
                         f"{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


