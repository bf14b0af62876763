"""The docker compose quickstart's one-off jobs (docker/entrypoint.sh runs them).

`setup` makes what the quickstart needs and no file in the repository may
hold: the gateway's signing key, its TLS certificate, the database
passwords, a sample identity provider's key and JWKS, and the SQL that loads
the demo data into the PostgreSQL container on its first start. It keeps
what exists, so running it again changes nothing (the database was
initialised with those passwords). `idp-token` signs a token as that sample
provider would, for a user and groups.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from pgguard.demo import data
from pgguard.demo.certs import issue_server_cert, make_ca
from pgguard.identity.tokens import generate_signing_key

# docker/pgguard.toml names these; tests/integration/test_docker.py checks that they agree.
IDP_ISSUER = "https://idp.example.test"
IDP_AUDIENCE = "pgguard"
IDP_KID = "sample-idp-1"
# The names the gateway's certificate is valid for: the host's, and the compose service's.
GATEWAY_HOSTNAMES = ("localhost", "127.0.0.1", "pgguard")
# Login names in docker/pgguard.toml ([targets.demo.logins.NAME]) -> database role.
LOGINS = {"reader": data.READER, "support": data.SUPPORT, "engineer": data.ENGINEER, "admin": data.ADMIN}


def setup(secrets_dir: Path, initdb_dir: Path) -> list[Path]:
    """Create whatever is missing; returns the files created."""
    created: list[Path] = []

    def missing(path: Path) -> bool:
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        created.append(path)
        return True

    key = secrets_dir / "signing-key.pem"
    if missing(key):
        generate_signing_key(key)
    passwords: dict[str, str] = {}
    for name in (*LOGINS, "postgres"):
        path = secrets_dir / "passwords" / f"{name}.password"
        if missing(path):
            path.write_text(secrets.token_urlsafe(24) + "\n")
        passwords[name] = path.read_text().strip()
        # The PostgreSQL container reads its superuser's password as its own user.
        path.chmod(0o644 if name == "postgres" else 0o600)
    tls = secrets_dir / "tls"
    if missing(tls / "gateway.crt"):
        ca = make_ca("pgguard quickstart CA")
        ca.write(tls, "ca")
        issue_server_cert(ca, GATEWAY_HOSTNAMES).write(tls, "gateway")
    idp_key = secrets_dir / "idp" / "private-key.pem"
    if missing(idp_key):
        generate_signing_key(idp_key)
    jwks = secrets_dir / "idp" / "jwks.json"
    if missing(jwks):
        public = _idp_key(secrets_dir).public_key()
        jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(public))
        jwks.write_text(json.dumps({"keys": [{**jwk, "kid": IDP_KID, "alg": "EdDSA", "use": "sig"}]}, indent=2))
    sql = initdb_dir / "10-demo.sql"
    if missing(sql):
        sql.write_text(data.demo_data_sql() + data.logins_sql({LOGINS[name]: passwords[name] for name in LOGINS}))
        sql.chmod(0o644)
    secrets_dir.chmod(0o711)  # the PostgreSQL container may reach its password file, not list the rest
    return created


def _idp_key(secrets_dir: Path):  # type: ignore[no-untyped-def]
    return serialization.load_pem_private_key((secrets_dir / "idp" / "private-key.pem").read_bytes(), None)


def idp_token(secrets_dir: Path, user: str, groups: Sequence[str], ttl: int = 3600) -> str:
    """A token as the sample identity provider signs them (Keycloak-like claims)."""
    now = int(time.time())
    claims = {"iss": IDP_ISSUER, "aud": IDP_AUDIENCE, "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, user)),
              "preferred_username": user, "groups": list(groups), "iat": now, "exp": now + ttl,
              "jti": uuid.uuid4().hex}
    return jwt.encode(claims, _idp_key(secrets_dir), algorithm="EdDSA", headers={"kid": IDP_KID})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgguard-entrypoint", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    setup_cmd = commands.add_parser("setup", help="create the quickstart's secrets and demo SQL")
    setup_cmd.add_argument("--secrets", type=Path, required=True)
    setup_cmd.add_argument("--initdb", type=Path, required=True)
    token_cmd = commands.add_parser("idp-token", help="a token from the sample identity provider")
    token_cmd.add_argument("--secrets", type=Path, required=True)
    token_cmd.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token_cmd.add_argument("user")
    token_cmd.add_argument("groups", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "setup":
        for path in setup(args.secrets, args.initdb):
            print(f"pgguard-entrypoint: created {path}", file=sys.stderr)
        return 0
    print(idp_token(args.secrets, args.user, args.groups, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
