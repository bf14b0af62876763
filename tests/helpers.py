"""Small helpers shared by the client-compatibility tests (tests/integration/test_clients_*.py).

Scratch tables are created and dropped over a direct superuser connection and
owned by the engineer's upstream login, so the tests can write into them
through the gateway (as `engineer` or `dba`) without needing DDL rights there,
and every test leaves the shared database as it found it.
"""

from __future__ import annotations

import os
import subprocess
import time

import uuid
from pathlib import Path
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

from pgguard.demo import data
from pgguard.demo.gateway_config import write_config


def unique_name(prefix: str = "scratch") -> str:
    """A table name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


@contextmanager
def scratch_table(direct_dsn: str, columns: str, prefix: str = "scratch") -> Iterator[str]:
    """A fresh `public` table with `columns`, owned by the engineer login, dropped afterwards."""
    name = unique_name(prefix)
    with psycopg.connect(direct_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE public.{name} ({columns})")
        conn.execute(f"ALTER TABLE public.{name} OWNER TO {data.ENGINEER}")
    try:
        yield name
    finally:
        with psycopg.connect(direct_dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS public.{name}")


def fetch_all(dsn: str, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
    """Every row of one query on a fresh connection."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params).fetchall()


def fetch_value(dsn: str, sql: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of one query on a fresh connection."""
    rows = fetch_all(dsn, sql, params)
    assert rows, f"no rows from {sql!r}"
    return rows[0][0]


def run_psql(dsn: str, *commands: str, args: Sequence[str] = (), stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run psql non-interactively with ON_ERROR_STOP, `args`, and each command as a `-c`, whatever its exit status."""
    argv = ["psql", dsn, "-X", "-v", "ON_ERROR_STOP=1", *args]
    for command in commands:
        argv += ["-c", command]
    # Nothing from the environment may change how psql connects or formats.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGCONNECT_TIMEOUT="10", LC_ALL="C.UTF-8", PAGER="", PSQL_PAGER="")
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=30, check=False)


def psql(dsn: str, *commands: str) -> str:
    """Run psql non-interactively with each command as a `-c`; return stdout, failing on any error."""
    result = run_psql(dsn, *commands)
    assert result.returncode == 0, f"psql {commands} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def pipeline_transcript(dsn: str, table: str, failing: str) -> list[str]:
    """INSERT, a failing statement, another INSERT, then Sync, in autocommit: what the client sees."""
    seen: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            with conn.pipeline() as pipeline:
                conn.execute(f"INSERT INTO {table} (id) VALUES (1)")
                conn.execute(failing)
                conn.execute(f"INSERT INTO {table} (id) VALUES (2)")
                pipeline.sync()
            seen.append("no error")
        except psycopg.Error as exc:
            seen.append(f"{type(exc).__name__} {exc.sqlstate}")
        seen.append(conn.info.transaction_status.name)
        seen.append(repr(conn.execute("SELECT 1").fetchone()))
        seen.append(repr(conn.execute(f"SELECT count(*) FROM {table}").fetchone()))
    return seen


def known_to(dsn: str, *relations: str, tries: int = 300) -> None:
    """Wait until the gateway's catalog knows `relations`, made outside it (or by a session it does not analyse):
    until then a role that may not run DDL is refused them, and its first refusal has the catalog read again
    (docs/masking.md, Unknown relations)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for relation in relations:
            for _ in range(tries):
                try:
                    conn.execute(f"SELECT FROM {relation} LIMIT 0", prepare=False)
                    break
                except psycopg.errors.InsufficientPrivilege as exc:
                    if "pgguard is reading the catalog again" not in (exc.diag.message_hint or ""):
                        break  # refused for another reason: known
                    time.sleep(0.05)
            else:
                raise AssertionError(f"the gateway's catalog never knew {relation}")


def without_ddl_approval(config_text: str) -> str:
    """The demo config without the rule that holds engineering's DDL for approval (docs/approvals.md):
    for tests of policy or masking, not of approvals."""
    rule = '    { classes = ["ddl"] },\n'
    assert rule in config_text
    return config_text.replace(rule, "")


def offline_demo_config(directory: Path) -> Path:
    """The demo's pgguard.toml in `directory`, for tests that read it and never connect."""
    for name in ("c", "k", "ca"):
        (directory / name).write_text("not read by these tests\n")
    return write_config(
        directory, host="127.0.0.1", port=6432, admin_port=6433, tls_cert=directory / "c", tls_key=directory / "k",
        pg_host="127.0.0.1", pg_port=5432, pg_ca=directory / "ca", database=data.DATABASE,
        login_passwords={login: "x" for login in data.LOGINS},
    )
