"""docker/: the compose quickstart, checked without a Docker engine.

Every path, port, name and variable the compose file wires together is
checked against the Dockerfile, the config it mounts and the entrypoint.
Then the entrypoint runs as the containers would run it: `setup` makes the
secrets and the demo SQL, a private PostgreSQL is loaded with that SQL as
the postgres image would load it, `serve` runs the gateway on the compose
config, and a token from `idp-token` logs in through it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg
import pytest
import yaml

from pgguard.demo import compose
from pgguard.demo.cluster import PostgresCluster, free_port
from pgguard.demo.data import READER
from conftest import _serve, RunningGateway, stop_gateway
from opsclient import request_json

DOCKER = Path(__file__).parents[2] / "docker"
ROOT = DOCKER.parent
ENTRYPOINT = DOCKER / "entrypoint.sh"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]


@pytest.fixture(scope="module")
def dockerfile() -> dict[str, list[str]]:
    """Instructions by name, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            found.setdefault(instruction, []).append(rest.strip())
    return found


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return tomllib.loads((DOCKER / "pgguard.toml").read_text())


def env_of(dockerfile: dict[str, list[str]]) -> dict[str, str]:
    return dict(item.split("=", 1) for line in dockerfile["ENV"] for item in shlex.split(line))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source (volume name or host path)."""
    return {volume.split(":")[1]: volume.split(":")[0] for volume in service["volumes"]}


def port(address: str) -> int:
    return int(address.rpartition(":")[2])


def under(path: str, directory: str) -> str | None:
    """`path` relative to `directory`, or None when it is not inside it."""
    try:
        return str(PurePosixPath(path).relative_to(directory))
    except ValueError:
        return None


def test_the_image_is_slim_non_root_and_runs_the_entrypoint(dockerfile: dict[str, list[str]]) -> None:
    assert dockerfile["FROM"] == ["python:3.11-slim"]
    assert dockerfile["USER"] == ["pgguard"] and "--uid 10001" in dockerfile["RUN"][0]
    source, destination = dockerfile["COPY"][-1].split()
    assert (ROOT / source) == ENTRYPOINT and os.access(ENTRYPOINT, os.X_OK)
    assert dockerfile["ENTRYPOINT"] == [f'["{PurePosixPath(destination).name}"]']
    assert destination.startswith("/usr/local/bin/")
    for line in dockerfile["COPY"][:-1]:
        for item in line.split()[:-1]:
            assert (ROOT / item).exists(), item
    assert "--no-cache-dir" in dockerfile["RUN"][1]


def test_compose_wires_what_exists_and_agrees(services: dict[str, Any], dockerfile: dict[str, list[str]],
                                              config: dict[str, Any]) -> None:
    env = env_of(dockerfile)
    setup, postgres, gateway = services["setup"], services["postgres"], services["pgguard"]
    for service in (setup, gateway):
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    assert gateway["image"] == setup["image"]
    # The config: mounted where the image looks for it, from a file that exists.
    config_source = mounts(gateway)[env["PGGUARD_CONFIG"]]
    assert (DOCKER / config_source).resolve() == DOCKER / "pgguard.toml"
    # Secrets: written by setup where the image says, read from the same volume by the others.
    secrets_volume = mounts(setup)[env["PGGUARD_SECRETS"]]
    assert mounts(gateway)[env["PGGUARD_SECRETS"]] == secrets_volume
    initdb_volume = mounts(setup)[env["PGGUARD_INITDB"]]
    assert mounts(postgres)["/docker-entrypoint-initdb.d"] == initdb_volume
    password_file = postgres["environment"]["POSTGRES_PASSWORD_FILE"]
    postgres_secrets = next(target for target, source in mounts(postgres).items() if source == secrets_volume)
    assert under(password_file, postgres_secrets) == "passwords/postgres.password"
    # Ports: the config's, the compose file's and the image's.
    listen, admin = port(config["gateway"]["listen"][0]), port(config["gateway"]["admin_listen"])
    published = {port(mapping) for mapping in gateway["ports"]}
    assert published == {listen, admin} == {int(p) for p in dockerfile["EXPOSE"][0].split()}
    assert f"127.0.0.1:{admin}/readyz" in dockerfile["HEALTHCHECK"][0]
    # The target is the postgres service, and its database.
    target = config["targets"]["demo"]
    assert (target["host"], target["port"], target["dbname"]) == ("postgres", 5432,
                                                                   postgres["environment"]["POSTGRES_DB"])
    assert {login["user"] for login in target["logins"].values()} == set(compose.LOGINS.values())
    assert set(target["logins"]) == set(compose.LOGINS)
    # Every file the config names is in a volume the gateway mounts.
    gateway_mounts = mounts(gateway)
    named = [config["gateway"]["tls_cert"], config["gateway"]["tls_key"], config["gateway"]["session_dir"],
             config["identity"]["revocation_file"], config["identity"]["signing_keys"][0]["private_key_file"],
             config["identity"]["providers"][0]["jwks_file"],
             *(login["password_file"] for login in target["logins"].values())]
    for path in named:
        assert any(under(path, mount) for mount in gateway_mounts), path
    provider = config["identity"]["providers"][0]
    assert (provider["issuer"], provider["audience"]) == (compose.IDP_ISSUER, compose.IDP_AUDIENCE)
    # Ordering, and time to drain on `docker compose down`.
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert int(gateway["stop_grace_period"].rstrip("s")) > config["gateway"]["shutdown_grace"]


@pytest.fixture(scope="module")
def laid_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """The entrypoint's `setup`, run into a directory that stands for the containers' /var/lib/pgguard."""
    base = tmp_path_factory.mktemp("var-lib-pgguard")
    env = {**os.environ, "PYTHON": sys.executable, "PGGUARD_SECRETS": str(base / "secrets"),
           "PGGUARD_INITDB": str(base / "initdb"), "PGGUARD_CONFIG": str(base / "pgguard.toml")}
    for _ in range(2):  # the second run finds everything and changes nothing
        result = subprocess.run(["sh", str(ENTRYPOINT), "setup"], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    yield base, env


def test_setup_makes_every_file_the_compose_config_names(laid_out: tuple[Path, dict[str, str]],
                                                         config: dict[str, Any]) -> None:
    base, _ = laid_out
    for path in (config["gateway"]["tls_cert"], config["gateway"]["tls_key"],
                 config["identity"]["signing_keys"][0]["private_key_file"],
                 config["identity"]["providers"][0]["jwks_file"],
                 *(login["password_file"] for login in config["targets"]["demo"]["logins"].values())):
        relative = under(path, "/var/lib/pgguard")
        assert relative is not None and (base / relative).is_file(), path
    assert (base / "secrets" / "passwords" / "postgres.password").stat().st_mode & 0o777 == 0o644
    assert (base / "secrets" / "signing-key.pem").stat().st_mode & 0o777 == 0o600
    assert (base / "initdb" / "10-demo.sql").stat().st_mode & 0o777 == 0o644


def test_serve_without_a_config_says_where_to_mount_it(laid_out: tuple[Path, dict[str, str]]) -> None:
    _, env = laid_out
    result = subprocess.run(["sh", str(ENTRYPOINT)], env={**env, "PGGUARD_CONFIG": "/nonexistent.toml"},
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "no configuration at /nonexistent.toml: mount one there" in result.stderr


def test_the_quickstart_runs_through_the_entrypoint(laid_out: tuple[Path, dict[str, str]]) -> None:
    base, env = laid_out
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.psql("CREATE DATABASE demo")
        cluster.load((base / "initdb" / "10-demo.sql").read_text(), "demo")  # as the postgres image does
        gateway_port, admin_port = free_port(), free_port()
        text = (DOCKER / "pgguard.toml").read_text().replace("/var/lib/pgguard", str(base))
        text = text.replace('"0.0.0.0:6432"', f'"127.0.0.1:{gateway_port}"')
        text = text.replace('"0.0.0.0:6433"', f'"127.0.0.1:{admin_port}"')
        text = text.replace('host = "postgres"\nport = 5432', f'host = "{cluster.host}"\nport = {cluster.port}')
        (base / "pgguard.toml").write_text(text)
        log = base / "gateway.log"
        # The image's default command.
        process = _serve(base / "pgguard.toml", log, (gateway_port, admin_port), ["sh", str(ENTRYPOINT)],
                         {**env, "PGGUARD_CONFIG": str(base / "pgguard.toml")})
        running = RunningGateway("127.0.0.1", gateway_port, base / "pgguard.toml", log,
                                 base / "secrets" / "tls" / "ca.crt", {}, process, admin_port)
        try:
            token = _entrypoint(env, "idp-token", "alice", "analysts")
            dsn = (f"host=127.0.0.1 port={gateway_port} dbname=demo user=alice sslmode=verify-full "
                   f"sslrootcert={base / 'secrets' / 'tls' / 'ca.crt'}")
            with psycopg.connect(dsn, password=token) as conn:
                assert conn.execute("SELECT current_user").fetchone() == (READER,)
                email = conn.execute("SELECT email FROM customers ORDER BY id LIMIT 1").fetchone()[0]
            with psycopg.connect(cluster.dsn("demo"), autocommit=True) as direct:
                raw = direct.execute("SELECT email FROM customers ORDER BY id LIMIT 1").fetchone()[0]
            assert email != raw
            dba = _entrypoint(env, "idp-token", "dana", "dba")
            status, body = request_json(running, "/reload", method="POST", token=dba)
            assert (status, body["by"]) == (200, "dana"), body
            assert request_json(running, "/readyz")[0] == 200
        finally:
            stop_gateway(running)
        assert process.returncode == 0
        assert '"message": "shut down"' in log.read_text()  # log_format = "json"
    finally:
        cluster.remove()


def _entrypoint(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(["sh", str(ENTRYPOINT), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()
