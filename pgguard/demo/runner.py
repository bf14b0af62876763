"""`pgguard demo`: a private PostgreSQL, the sample data and a gateway in front.

Everything lives in one temporary directory that is removed on exit, so the
demo leaves nothing behind but what it printed.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import trio

from pgguard.config import load
from pgguard.demo import data
from pgguard.demo.certs import issue_server_cert, make_ca
from pgguard.demo.cluster import PostgresCluster, free_port
from pgguard.demo.gateway_config import DemoIdentity, issue_tokens, write_config
from pgguard.runtime import Bound, run_gateway, setup_logging

HOST = "127.0.0.1"


def run_demo(port: int, as_json: bool) -> int:
    base = Path(tempfile.mkdtemp(prefix="pgguard-demo-"))
    base.chmod(0o755)  # PostgreSQL runs as another OS user when we are root
    cluster: PostgresCluster | None = None
    try:
        tls_dir = base / "tls"
        ca = make_ca("pgguard demo CA")
        ca_files = ca.write(tls_dir, "ca")
        server_files = issue_server_cert(ca).write(tls_dir, "server")
        cluster = PostgresCluster(base / "postgres", ssl_cert=server_files.cert, ssl_key=server_files.key)
        _log(as_json, f"starting PostgreSQL on port {cluster.port} ...")
        cluster.start()
        passwords = {login: secrets.token_urlsafe(18) for login in data.LOGINS}
        cluster.psql(f"CREATE DATABASE {data.DATABASE}")
        cluster.load(data.demo_data_sql() + data.logins_sql(passwords), data.DATABASE)
        gateway_port = free_port(HOST) if port == 0 else port
        admin_port = free_port(HOST) if port == 0 else port + 1
        config_path = write_config(
            base / "gateway", host=HOST, port=gateway_port, admin_port=admin_port,
            tls_cert=server_files.cert, tls_key=server_files.key,
            pg_host=cluster.host, pg_port=cluster.port, pg_ca=ca_files.cert,
            database=data.DATABASE, login_passwords=passwords,
        )
        identities = issue_tokens(config_path)
        config = load(config_path)
        setup_logging()

        async def ready(bound: Bound) -> None:
            summary = {
                "gateway": {"host": bound.host, "port": bound.port},
                "admin_url": bound.admin_url,
                "database": data.DATABASE,
                "upstream_dsn": cluster.dsn(data.DATABASE),
                "config": str(config_path),
                "session_dir": str(config.gateway.session_dir),
                "ca_cert": str(ca_files.cert),
                "identities": {
                    name: {"user": ident.user, "token": ident.token,
                           "dsn": _dsn(ident, bound, data.DATABASE)}
                    for name, ident in identities.items()
                },
            }
            if as_json:
                print(json.dumps(summary), flush=True)
            else:
                _print_summary(summary)

        trio.run(run_gateway, config, ready)
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def _dsn(identity: DemoIdentity, bound: Bound, database: str) -> str:
    # sslmode=prefer: the demo accepts plaintext on loopback and TLS alike.
    return (f"postgresql://{quote(identity.user, safe='')}:{identity.token}"
            f"@{bound.host}:{bound.port}/{database}?sslmode=prefer")


def _log(quiet: bool, message: str) -> None:
    print(message, file=sys.stderr if quiet else sys.stdout, flush=True)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    gateway = summary["gateway"]
    console.print(f"[bold]pgguard demo[/] is listening on {gateway['host']}:{gateway['port']}"
                  f" (admin {summary['admin_url']})")
    table = Table("identity", "user", "connect with")
    for name, ident in summary["identities"].items():
        table.add_row(name, ident["user"], f"psql '{ident['dsn']}'")
    console.print(table)
    console.print(f"config: {summary['config']}\nupstream (superuser): {summary['upstream_dsn']}")
    console.print(f"approvals: the engineer's DELETEs on orders and DDL wait for the dba, at "
                  f"{summary['admin_url']}/approvals/ui or with PGGUARD_TOKEN=<dba token> "
                  f"pgguard approvals list --admin {summary['admin_url']}")
    console.print("Press Ctrl-C to stop; everything the demo started is removed.")
