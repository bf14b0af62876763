"""pgguard's throughput next to PostgreSQL direct and PgBouncer, on this machine, in one run.

A number for pgguard alone says little: it depends on the CPU, the kernel and
PostgreSQL's own speed. So every run builds four paths side by side from the
same private PostgreSQL, and reports pgguard relative to the others:

    direct          pgbench -> PostgreSQL
    pgbouncer       pgbench -> PgBouncer (session pooling) -> PostgreSQL
    pgguard-nolog   pgbench -> pgguard with session logs off, `dba` identity -> PostgreSQL
    pgguard         pgbench -> pgguard (demo config, `dba` identity) -> PostgreSQL
    pgguard+policy  pgbench -> the same pgguard process, `analyst` identity -> PostgreSQL

`dba` is allowed every statement class, so pgguard relays its statements
without analysing them (policy off). `analyst` (role `analysts`, read
public.*) has every statement parsed with pglast and checked (policy on).
Comparing the two gateway targets isolates what the policy costs. Both
record every session in a session log; pgguard-nolog is a second gateway
process with the log turned off, so pgguard/pgguard-nolog is what the log
costs.

All of them speak plaintext over loopback (pgguard's upstream `sslmode` is set
to `disable`, as PgBouncer's is). direct, pgbouncer and pgguard reach
PostgreSQL as the same database role (`pgguard_admin`, the role pgguard uses
for `dba`), so the only difference between them is the proxy in the middle.
pgguard+policy reaches it as `pgguard_reader`, the analysts' read-only
login. That role is not a superuser, so PostgreSQL checks its privileges.
policy-on/policy-off therefore includes that check as well as pgguard's.
Runs are interleaved per setting so that drift (thermal, noisy neighbours)
hits every target alike.

    .venv/bin/python bench/run.py [--bench select-only,large-select] [--duration S] [--clients 1,8]
                                  [--modes simple,prepared] [--rows N] [--formats text,binary]
                                  [--rounds N] [--json FILE] [--markdown]

Two benchmarks, over the same four targets:

    select-only     pgbench -S: one indexed point SELECT per transaction (TPS, proxy CPU per transaction)
    large-select    SELECT * of a 1,000,000-row table with two columns the gateway's config
                    classifies as sensitive, streamed by libpq in text and in binary format
                    (rows/s, proxy CPU per row, and the proxy's RSS before and at its peak)

In the large SELECT, `pgguard+policy` (analyst) gets `email` and `phone`
masked and the content detectors over `name`; `pgguard` (dba) is cleared for
everything and gets the rows untouched.

Everything started (PostgreSQL, PgBouncer, the gateway, temp dirs) is removed
on exit, on failure and on Ctrl-C alike.

Adding a target: name it in TARGET_NAMES (and in PROXIES if a process of
ours sits in between), build it in `environment()`, and add any ratio worth
reporting to RATIOS. The table and the JSON follow from those.

Adding a benchmark: write a function taking an `Environment` (its `targets`,
by name, carry address, credentials and the proxy PID to charge CPU to) that
calls `measure(target, pgbench_args, duration)`; see `select_only`, or reads
through the targets itself; see `large_select`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgguard.demo import data
from pgguard.demo.certs import issue_server_cert, make_ca
from pgguard.demo.cluster import HOST, PostgresCluster, PostgresError, free_port
from pgguard.demo.gateway_config import IDENTITIES, issue_tokens, write_config
from psycopg import pq

REPO = Path(__file__).resolve().parent.parent
PGBOUNCER_CANDIDATES = ("/usr/sbin/pgbouncer", "pgbouncer")
SERVER_OS_USER = "postgres"  # PgBouncer, like PostgreSQL, refuses to run as root
UPSTREAM_ROLE = data.ADMIN  # the role pgguard logs in with for `dba`; direct and pgbouncer use it too
PGBENCH_SCALE = 10  # 1M rows in pgbench_accounts
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 10
PGBENCH_GRACE_SECONDS = 120  # beyond -T: connection setup, a slow shutdown

# The large-SELECT benchmark's table: customers-like rows, two of whose columns the bench's
# gateway config classifies as sensitive. `analyst` gets them masked (and the content
# detectors over `name`); `dba` is cleared for everything and gets every row untouched.
PEOPLE_TABLE = "bench_people"
PEOPLE_ROWS = 1_000_000
PEOPLE_MASKS = {"email": "email", "phone": "partial"}
# Rows per result the client takes from libpq at a time (chunked rows mode): it streams, as an
# application reading a large result would, instead of holding all of it.
CHUNK_ROWS = 1000
RESULT_FORMATS = {"text": 0, "binary": 1}

SELECT_ONLY, LARGE_SELECT = "select-only", "large-select"
BENCHMARKS = (SELECT_ONLY, LARGE_SELECT)

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
class Ratio:
    """One target's median TPS over another's: the figures that carry over between machines."""

    numerator: str
    denominator: str
    key: str  # in the JSON
    label: str  # the table's column header
    in_table: bool = True


RATIOS = (
    # JSON only: direct's TPS is in the table, and PgBouncer is the reference pgguard is held to.
    Ratio(PGGUARD, DIRECT, "pgguard_vs_direct", "pgguard/direct", in_table=False),
    Ratio(PGGUARD, PGBOUNCER, "pgguard_vs_pgbouncer", "pgguard/pgbouncer"),
    Ratio(PGGUARD_POLICY, PGBOUNCER, "pgguard_policy_vs_pgbouncer", "pgguard+policy/pgbouncer"),
    # What the statement policy costs: the same gateway, policy on over policy off.
    Ratio(PGGUARD_POLICY, PGGUARD, "policy_on_vs_off", "policy on/off"),
    # What the session log costs: the bare relay with its log over one without.
    Ratio(PGGUARD, PGGUARD_NOLOG, "log_on_vs_off", "log on/off"),
)


class BenchError(RuntimeError):
    """Something the benchmark needs did not work; the message says what and where to look."""


# --- targets and pgbench ------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Run:
    """One pgbench run: its throughput and what the proxy spent on it."""

    tps: float
    transactions: int
    cpu_seconds: float | None  # of the target's proxy process; None when direct

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.cpu_seconds is None or self.transactions == 0:
            return None
        return self.cpu_seconds * 1e6 / self.transactions


def measure(target: Target, args: Sequence[str], duration: int) -> Run:
    """Run pgbench for a timed run (`args` includes -T) and charge the proxy's CPU time to it.

    TPS is pgbench's figure "without initial connection time", so login cost
    (token validation, SCRAM) does not blur the per-statement overhead.
    """
    before = process_cpu_seconds(target.pid) if target.pid is not None else None
    output = pgbench(target, *args, timeout=duration + PGBENCH_GRACE_SECONDS)
    after = process_cpu_seconds(target.pid) if target.pid is not None else None
    tps = re.search(r"^tps = ([\d.]+) \(without initial connection time\)", output, re.MULTILINE)
    processed = re.search(r"^number of transactions actually processed: (\d+)", output, re.MULTILINE)
    if tps is None or processed is None:
        raise BenchError(f"could not read tps from pgbench's output against {target.name}:\n{output}")
    failed = re.search(r"^number of failed transactions: (\d+)", output, re.MULTILINE)
    if failed is not None and int(failed.group(1)) > 0:
        raise BenchError(f"{failed.group(1)} transactions failed against {target.name}:\n{output}")
    cpu = after - before if before is not None and after is not None else None
    return Run(float(tps.group(1)), int(processed.group(1)), cpu)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far, from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after "(comm)"; comm may contain spaces, hence rpartition. utime, stime are fields 14, 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (resident now) and VmHWM (the peak of VmRSS) of a process, in KiB, from /proc/PID/status."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(value.split()[0]) for line in status.splitlines()
            for key, _, value in [line.partition(":")] if key in ("VmRSS", "VmHWM")}


def reset_peak_rss(pid: int) -> None:
    """Set a process's VmHWM back to its VmRSS, so the next peak read belongs to what runs in between."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        raise BenchError(f"cannot reset the peak RSS of process {pid}: {exc}") from exc


# --- background processes -----------------------------------------------------------------------


@contextlib.contextmanager
def background(cmd: Sequence[str], log_path: Path, *, cwd: Path | None = None,
               env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-lived process with its output in a log file; make sure it is gone on exit.

    It gets a session of its own so that Ctrl-C reaches only us: we then stop
    it in order (proxies before PostgreSQL) instead of everything dying at once.
    """
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                env=dict(env) if env is not None else None, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes], pid: int | None = None, sig: int = signal.SIGTERM) -> None:
    """Signal `pid` (default: the process itself), wait for `proc` to exit, kill it if it will not."""
    with contextlib.suppress(ProcessLookupError):
        if proc.poll() is None:  # once proc has exited, `pid` may already belong to someone else
            os.kill(pid if pid is not None else proc.pid, sig)
    try:
        proc.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        for victim in {proc.pid, pid or proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        proc.wait()


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], what: str, log_path: Path) -> None:
    """Poll `ready` until true; fail early, with the log's tail, if the process exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}:\n{_tail(log_path)}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{what} not ready after {START_TIMEOUT_SECONDS}s:\n{_tail(log_path)}")


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} not written)"


# --- the targets ----------------------------------------------------------------------------------


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
def environment(base: Path, *, scale: int = PGBENCH_SCALE, people: int = 0, log: Callable[[str], None] = print
                ) -> Iterator[Environment]:
    """PostgreSQL with the demo data, pgbench's tables (scale 0: none) and `people` rows in
    PEOPLE_TABLE (0: none), PgBouncer and pgguard in front of it."""
    with contextlib.ExitStack() as stack:
        log("starting PostgreSQL ...")
        cluster = stack.enter_context(private_postgres(base / "postgres"))
        superuser = Target("superuser", cluster.host, cluster.port, cluster.superuser, cluster.superuser_password)
        passwords = {login: secrets.token_urlsafe(18) for login in data.LOGINS}
        log(f"loading demo data, pgbench's tables (scale {scale}) and {people:,} rows of {PEOPLE_TABLE} ...")
        load_data(cluster, superuser, passwords, scale, people)
        direct = Target(DIRECT, cluster.host, cluster.port, UPSTREAM_ROLE, passwords[UPSTREAM_ROLE])
        log("starting PgBouncer ...")
        bouncer = stack.enter_context(pgbouncer(base / "pgbouncer", cluster, {UPSTREAM_ROLE: passwords[UPSTREAM_ROLE]}))
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
def private_postgres(directory: Path) -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL without TLS: the clients and both proxies talk plaintext over loopback."""
    cluster = PostgresCluster(directory)
    try:
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
def pgbouncer(directory: Path, cluster: PostgresCluster, users: Mapping[str, str]) -> Iterator[Target]:
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
max_client_conn = 200
default_pool_size = 50
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
    masked = "".join(f'"public.{PEOPLE_TABLE}.{column}" = "{function}"\n' for column, function in PEOPLE_MASKS.items())
    text = _replace_once(config_path, text, "[masking.columns]\n", "[masking.columns]\n" + masked)
    if not session_logs:
        text = _replace_once(config_path, text, "[audit]\n", "[audit]\nenabled = false\n")
    config_path.write_text(text)
    identities = issue_tokens(config_path)
    log_path = directory / "gateway.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    cmd = [sys.executable, "-m", "pgguard.cli", "serve", "-c", str(config_path)]
    with background(cmd, log_path, cwd=REPO, env=env) as proc:
        wait_until(lambda: _http_ok(f"http://{HOST}:{admin_port}/healthz"), proc, "pgguard", log_path)
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


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# --- benchmarks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One point of a sweep: how pgbench sends its queries and how many clients it runs."""

    mode: str
    clients: int

    @property
    def label(self) -> str:
        return f"{self.mode}, {self.clients} client{'s' if self.clients != 1 else ''}"


@dataclass
class Result:
    """All runs of one setting, per target; medians are what gets reported."""

    setting: Setting
    runs: dict[str, list[Run]] = field(default_factory=lambda: {name: [] for name in TARGET_NAMES})

    def tps(self, target: str) -> float:
        return statistics.median(run.tps for run in self.runs[target])

    def ratio(self, ratio: Ratio) -> float:
        return self.tps(ratio.numerator) / self.tps(ratio.denominator)

    def cpu_us_per_txn(self, target: str) -> float | None:
        values = [v for run in self.runs[target] if (v := run.cpu_us_per_txn) is not None]
        return statistics.median(values) if values else None

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.setting.mode,
            "clients": self.setting.clients,
            "targets": {
                name: {
                    "tps_median": self.tps(name),
                    "cpu_us_per_txn_median": self.cpu_us_per_txn(name),
                    "runs": [asdict(run) | {"cpu_us_per_txn": run.cpu_us_per_txn} for run in runs],
                }
                for name, runs in self.runs.items()
            },
            **{ratio.key: self.ratio(ratio) for ratio in RATIOS},
        }


def select_only_args(setting: Setting, duration: int) -> list[str]:
    """pgbench's built-in SELECT-only script: one indexed point read per transaction.

    -n: no vacuum before the run (done once after `pgbench -i`); -j: pgbench
    threads, capped at 2 so the client does not eat the cores the proxies need.
    """
    return ["-n", "-S", "-M", setting.mode, "-c", str(setting.clients), "-j", str(min(setting.clients, 2)),
            "-T", str(duration)]


def warm_up(env: Environment, seconds: int) -> None:
    """One short unrecorded run per target: page cache, PostgreSQL's buffers, Python's first paths."""
    if seconds <= 0:
        return
    for target in env.targets.values():
        measure(target, select_only_args(Setting("prepared", 1), seconds), seconds)


def select_only(env: Environment, settings: Sequence[Setting], duration: int, rounds: int,
                log: Callable[[str], None] = print) -> list[Result]:
    """The SELECT-only sweep: every setting on every target, interleaved, `rounds` times over."""
    results = [Result(setting) for setting in settings]
    width = max(map(len, env.targets))
    for round_no in range(1, rounds + 1):
        for result in results:
            for name, target in env.targets.items():
                run = measure(target, select_only_args(result.setting, duration), duration)
                result.runs[name].append(run)
                cpu = f", proxy CPU {run.cpu_us_per_txn:.1f} µs/txn" if run.cpu_us_per_txn is not None else ""
                log(f"round {round_no}/{rounds} {result.setting.label:<22} {name:<{width}} "
                    f"{run.tps:>10.0f} tps{cpu}")
    return results


@dataclass(frozen=True)
class ProxyUsage:
    """What the proxy in between spent and held during one read."""

    cpu_seconds: float
    rss_before_kib: int
    rss_peak_kib: int  # VmHWM, reset just before the read


@dataclass(frozen=True)
class Read:
    """One full read of PEOPLE_TABLE: how long it took and what the proxy, if any, spent on it."""

    rows: int
    seconds: float  # from sending the query to the last row, login excluded
    proxy: ProxyUsage | None  # None when direct

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds

    @property
    def cpu_us_per_row(self) -> float | None:
        return None if self.proxy is None else self.proxy.cpu_seconds * 1e6 / self.rows


@dataclass
class ReadResult:
    """All reads in one result format, per target; medians are what gets reported."""

    format: str
    runs: dict[str, list[Read]] = field(default_factory=lambda: {name: [] for name in TARGET_NAMES})

    def rows_per_second(self, target: str) -> float:
        return statistics.median(run.rows_per_second for run in self.runs[target])

    def ratio(self, ratio: Ratio) -> float:
        return self.rows_per_second(ratio.numerator) / self.rows_per_second(ratio.denominator)

    def cpu_us_per_row(self, target: str) -> float | None:
        values = [v for run in self.runs[target] if (v := run.cpu_us_per_row) is not None]
        return statistics.median(values) if values else None

    def rss_mib(self, target: str) -> tuple[float, float] | None:
        """The proxy's RSS before a read and its peak during one, the largest of each over the rounds."""
        usages = [run.proxy for run in self.runs[target] if run.proxy is not None]
        if not usages:
            return None
        return max(u.rss_before_kib for u in usages) / 1024, max(u.rss_peak_kib for u in usages) / 1024

    def to_json(self) -> dict[str, object]:
        return {
            "format": self.format,
            "targets": {
                name: {
                    "rows_per_second_median": self.rows_per_second(name),
                    "cpu_us_per_row_median": self.cpu_us_per_row(name),
                    "runs": [asdict(run) | {"rows_per_second": run.rows_per_second, "cpu_us_per_row": run.cpu_us_per_row}
                             for run in runs],
                }
                for name, runs in self.runs.items()
            },
            **{ratio.key: self.ratio(ratio) for ratio in READ_RATIOS},
        }


READ_RATIOS = (
    Ratio(PGGUARD, DIRECT, "pgguard_vs_direct", "pgguard/direct"),
    Ratio(PGGUARD_POLICY, DIRECT, "pgguard_masked_vs_direct", "masked/direct"),
    Ratio(PGGUARD, PGBOUNCER, "pgguard_vs_pgbouncer", "pgguard/pgbouncer"),
    Ratio(PGGUARD_POLICY, PGBOUNCER, "pgguard_masked_vs_pgbouncer", "masked/pgbouncer"),
    # What masking the rows costs: the same gateway, analyst over dba.
    Ratio(PGGUARD_POLICY, PGGUARD, "masked_vs_unmasked", "masked/unmasked"),
)


def read_people(target: Target, fmt: int) -> tuple[int, float]:
    """`SELECT *` of PEOPLE_TABLE through `target` with libpq, in result format `fmt`: (rows, seconds).

    The client streams (chunked rows mode) and decodes nothing: what is
    timed is the server, the proxy and the transport, not the client's
    conversion to values.
    """
    conn = pq.PGconn.connect(target.conninfo(password=target.password).encode())
    try:
        if conn.status != pq.ConnStatus.OK:
            raise BenchError(f"cannot connect to {target.name}: {conn.get_error_message()}")
        rows = 0
        start = time.perf_counter()
        conn.send_query_params(f"SELECT * FROM {PEOPLE_TABLE}".encode(), None, result_format=fmt)
        conn.set_chunked_rows_mode(CHUNK_ROWS)
        while (result := conn.get_result()) is not None:
            if result.status not in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.TUPLES_OK):
                raise BenchError(f"SELECT * FROM {PEOPLE_TABLE} through {target.name} failed: "
                                 f"{result.get_error_message()}")
            rows += result.ntuples
        return rows, time.perf_counter() - start
    finally:
        conn.finish()


def measure_read(target: Target, fmt: int, expected_rows: int) -> Read:
    """Read PEOPLE_TABLE once through `target`, charging the proxy's CPU time and peak RSS to it."""
    pid = target.pid
    if pid is None:
        rows, seconds = read_people(target, fmt)
        usage = None
    else:
        rss_before = process_memory_kib(pid)["VmRSS"]
        reset_peak_rss(pid)
        cpu_before = process_cpu_seconds(pid)
        rows, seconds = read_people(target, fmt)
        usage = ProxyUsage(process_cpu_seconds(pid) - cpu_before, rss_before, process_memory_kib(pid)["VmHWM"])
    if rows != expected_rows:
        raise BenchError(f"read {rows} rows of {PEOPLE_TABLE} through {target.name}, expected {expected_rows}")
    return Read(rows, seconds, usage)


def large_select(env: Environment, formats: Sequence[str], rows: int, rounds: int,
                 log: Callable[[str], None] = print) -> list[ReadResult]:
    """The large-SELECT benchmark: PEOPLE_TABLE read whole, per format on every target, `rounds` times over."""
    results = [ReadResult(fmt) for fmt in formats]
    width = max(map(len, env.targets))
    read_people(env.targets[DIRECT], RESULT_FORMATS["text"])  # unrecorded: the table into PostgreSQL's cache
    for round_no in range(1, rounds + 1):
        for result in results:
            for name, target in env.targets.items():
                run = measure_read(target, RESULT_FORMATS[result.format], rows)
                result.runs[name].append(run)
                proxy = "" if run.proxy is None else (
                    f", proxy CPU {run.cpu_us_per_row:.2f} µs/row, RSS {run.proxy.rss_before_kib // 1024} MiB "
                    f"before, peak {run.proxy.rss_peak_kib // 1024} MiB")
                log(f"round {round_no}/{rounds} {result.format:<6} {name:<{width}} "
                    f"{run.rows_per_second:>10.0f} rows/s ({run.seconds:.2f} s){proxy}")
    return results


# --- reporting ------------------------------------------------------------------------------------

TABLE_RATIOS = tuple(ratio for ratio in RATIOS if ratio.in_table)
# Built from the target list: TPS for every target, then the ratios, then CPU per proxy.
COLUMNS = ("setting", *(f"{name} TPS" for name in TARGET_NAMES), *(ratio.label for ratio in TABLE_RATIOS),
           *(f"{name} CPU µs/txn" for name in PROXIES))


def table_rows(results: Sequence[Result]) -> list[list[str]]:
    """One row per setting, cell for cell in the order of COLUMNS."""
    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    return [
        [r.setting.label,
         *(f"{r.tps(name):.0f}" for name in TARGET_NAMES),
         *(f"{r.ratio(ratio):.2f}×" for ratio in TABLE_RATIOS),
         *(us(r.cpu_us_per_txn(name)) for name in PROXIES)]
        for r in results
    ]


READ_COLUMNS = ("format", *(f"{name} rows/s" for name in TARGET_NAMES), *(ratio.label for ratio in READ_RATIOS),
                *(f"{name} CPU µs/row" for name in PROXIES), *(f"{name} RSS MiB before→peak" for name in PROXIES))


def read_table_rows(results: Sequence[ReadResult]) -> list[list[str]]:
    """One row per result format, cell for cell in the order of READ_COLUMNS."""
    def us(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    def rss(value: tuple[float, float] | None) -> str:
        return "-" if value is None else f"{value[0]:.0f}→{value[1]:.0f}"

    return [
        [r.format,
         *(f"{r.rows_per_second(name):.0f}" for name in TARGET_NAMES),
         *(f"{r.ratio(ratio):.2f}×" for ratio in READ_RATIOS),
         *(us(r.cpu_us_per_row(name)) for name in PROXIES),
         *(rss(r.rss_mib(name)) for name in PROXIES)]
        for r in results
    ]


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool) -> None:
    if markdown:
        print(f"{title}\n")
        print("| " + " | ".join(columns) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*row)
    # Not a terminal (piped, CI): rich would assume 80 columns and squeeze the table. Given
    # room, it renders the table at its natural width (~220 columns with four targets), no wider.
    Console(width=None if sys.stdout.isatty() else 1000).print(table)


def machine_info(env: Environment) -> dict[str, str]:
    """What the numbers depend on, for whoever compares them with another run."""
    meminfo = Path("/proc/meminfo").read_text()
    mem_kib = int(re.search(r"^MemTotal:\s+(\d+)", meminfo, re.MULTILINE).group(1))  # type: ignore[union-attr]
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "cpus": str(len(os.sched_getaffinity(0))),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgresql": env.cluster.psql("SHOW server_version"),
        "pgbench": _first_line(["pgbench", "--version"]),
        "pgbouncer": _first_line([next(p for n in PGBOUNCER_CANDIDATES if (p := shutil.which(n))), "--version"]),
        "pgguard_source": _first_line(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
        # Other work on the machine skews everything; this says whether there was any.
        "loadavg_at_start": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }


def connection_info(env: Environment) -> dict[str, dict[str, str]]:
    """Per target, who connects and as which database role: what the ratios compare."""
    info: dict[str, dict[str, str]] = {}
    for name, target in env.targets.items():
        entry = {"user": target.user, "database_role": env.roles[name]}
        if (identity := GATEWAY_IDENTITIES.get(name)) is not None:
            entry = {"identity": identity, "groups": ",".join(IDENTITIES[identity][1]), **entry}
        info[name] = entry
    return info


def _first_line(cmd: Sequence[str]) -> str:
    """A tool's first line of output, or "?" (machine info must never fail a finished benchmark)."""
    try:
        lines = subprocess.run(cmd, capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return "?"
    return lines[0].strip() if lines else "?"


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per pgbench run (default 10)")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts (default 1,8)")
    parser.add_argument("--modes", default="simple,prepared",
                        help="comma-separated pgbench query modes: simple, extended, prepared")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the sweep; medians are reported")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of unrecorded warm-up per target (0: none)")
    parser.add_argument("--scale", type=int, default=PGBENCH_SCALE, help="pgbench -i scale (default 10)")
    parser.add_argument("--json", type=Path, help="also write the numbers (every run) to this file")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--keep-logs", type=Path, help="copy the gateway's and PgBouncer's logs here")
    parser.add_argument("--bench", default=",".join(BENCHMARKS),
                        help=f"comma-separated benchmarks to run: {', '.join(BENCHMARKS)} (default: both)")
    parser.add_argument("--rows", type=int, default=PEOPLE_ROWS,
                        help=f"rows the large SELECT reads (default {PEOPLE_ROWS:,})")
    parser.add_argument("--formats", default=",".join(RESULT_FORMATS),
                        help="comma-separated result formats of the large SELECT: text, binary (default both)")
    args = parser.parse_args(argv)
    args.clients = [int(c) for c in args.clients.split(",") if c]
    args.modes = [m for m in args.modes.split(",") if m]
    args.bench = [b for b in args.bench.split(",") if b]
    args.formats = [f for f in args.formats.split(",") if f]
    for option, given, known in (("mode", args.modes, {"simple", "extended", "prepared"}),
                                 ("benchmark", args.bench, set(BENCHMARKS)),
                                 ("format", args.formats, set(RESULT_FORMATS))):
        if bad := set(given) - known:
            parser.error(f"unknown {option}(s): {', '.join(sorted(bad))}")
    if args.rounds < 1 or args.duration <= 0 or not args.clients or args.rows <= 0:
        parser.error("--rounds, --duration, --clients and --rows must be positive")
    if not args.bench or not args.formats:
        parser.error("--bench and --formats need at least one name")
    return args


def _raise_on_sigterm(signum: int, frame: object) -> None:
    # Unwinds through every `finally`, so SIGTERM cleans up exactly as Ctrl-C does.
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    settings = [Setting(mode, clients) for mode in args.modes for clients in args.clients]
    run_select_only, run_large_select = SELECT_ONLY in args.bench, LARGE_SELECT in args.bench
    base = Path(tempfile.mkdtemp(prefix="pgguard-bench-"))
    base.chmod(0o755)  # PostgreSQL and PgBouncer run as another OS user when we are root

    def log(message: str) -> None:
        print(f"bench: {message}", file=sys.stderr, flush=True)

    try:
        with environment(base, scale=args.scale if run_select_only else 0,
                         people=args.rows if run_large_select else 0, log=log) as env:
            machine = machine_info(env)
            report: dict[str, object] = {"machine": machine, "rounds": args.rounds,
                                         "connections": connection_info(env)}
            tables: list[tuple[str, Sequence[str], list[list[str]]]] = []
            if run_select_only:
                log(f"warming up ({args.warmup:g}s per target) ...")
                warm_up(env, args.warmup)
                log(f"{len(settings)} settings × {len(env.targets)} targets × {args.rounds} round(s) "
                    f"× {args.duration:g}s")
                results = select_only(env, settings, args.duration, args.rounds, log)
                tables.append(("pgbench -S: median TPS per target", COLUMNS, table_rows(results)))
                report[SELECT_ONLY] = {"benchmark": "pgbench -S (select only)", "duration_seconds": args.duration,
                                       "scale": args.scale, "results": [r.to_json() for r in results]}
            if run_large_select:
                log(f"{len(args.formats)} format(s) × {len(env.targets)} targets × {args.rounds} round(s) "
                    f"× {args.rows:,} rows")
                reads = large_select(env, args.formats, args.rows, args.rounds, log)
                masked = ", ".join(f"{column} ({function})" for column, function in PEOPLE_MASKS.items())
                tables.append((f"SELECT * of {args.rows:,} rows, {masked} masked for {PGGUARD_POLICY}: "
                               "median rows/s per target", READ_COLUMNS, read_table_rows(reads)))
                report[LARGE_SELECT] = {"benchmark": f"SELECT * FROM {PEOPLE_TABLE}", "rows": args.rows,
                                        "masked_columns": PEOPLE_MASKS, "chunk_rows": CHUNK_ROWS,
                                        "results": [r.to_json() for r in reads]}
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(env.gateway_log, args.keep_logs / "gateway.log")
                shutil.copy(base / "pgbouncer" / "pgbouncer.log", args.keep_logs / "pgbouncer.log")
        for title, columns, rows in tables:
            print_table(title, columns, rows, args.markdown)
        print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()))
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return 0
    except (BenchError, PostgresError) as exc:
        log(f"failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; everything started has been stopped")
        return 130
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
