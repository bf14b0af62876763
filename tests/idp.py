"""A test OIDC identity provider: its own keys, tokens it signs, and its JWKS served over HTTP on loopback.

Keys are made with `cryptography` (RSA for RS256, P-256 for ES256) and only
published keys appear in the JWKS, so a test can rotate keys at the provider
(publish a new kid) or sign with a key the provider never published. The
tokens look like Keycloak's: the user in `preferred_username`, the groups
nested in `realm_access.roles`.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

_ALGORITHM_CLASSES = {"RS256": jwt.algorithms.RSAAlgorithm, "ES256": jwt.algorithms.ECAlgorithm}


def new_private_key(algorithm: str) -> PrivateKeyTypes:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


@dataclass
class TestIdP:
    """Start with `serving()`; `issuer` and `jwks_url` are known once it listens."""

    __test__ = False  # not a pytest test class, despite its name

    audience: str = "pgguard"
    issuer: str = ""
    jwks_url: str = ""
    keys: dict[str, tuple[str, PrivateKeyTypes]] = field(default_factory=dict)
    published: list[str] = field(default_factory=list)
    jwks_requests: int = 0
    failing: bool = False  # answer the JWKS request with HTTP 500

    def add_key(self, algorithm: str, *, publish: bool = True) -> str:
        kid = f"{algorithm.lower()}-{uuid.uuid4().hex[:8]}"
        self.keys[kid] = (algorithm, new_private_key(algorithm))
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            algorithm, key = self.keys[kid]
            jwk = json.loads(_ALGORITHM_CLASSES[algorithm].to_jwk(key.public_key()))  # type: ignore[union-attr]
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": algorithm})
        return {"keys": keys}

    def claims(self, user: str, groups: list[str], /, **changes: Any) -> dict[str, Any]:
        """A Keycloak-like access token's claims, with `changes` applied (None removes a claim)."""
        now = int(time.time())
        base = {"iss": self.issuer, "aud": self.audience, "sub": f"id-{user}", "preferred_username": user,
                "realm_access": {"roles": groups}, "iat": now, "nbf": now, "exp": now + 600,
                "jti": uuid.uuid4().hex}
        return {name: value for name, value in {**base, **changes}.items() if value is not None}

    def sign(self, claims: dict[str, Any], kid: str, *, headers: dict[str, Any] | None = None) -> str:
        algorithm, key = self.keys[kid]
        return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid, **(headers or {})})

    def token(self, user: str, groups: list[str], kid: str, /, **changes: Any) -> str:
        return self.sign(self.claims(user, groups, **changes), kid)

    def provider_toml(self, name: str, **settings: Any) -> str:
        """An [[identity.providers]] table for this provider, to append to a pgguard.toml (None drops a key)."""
        values = {"name": name, "issuer": self.issuer, "audience": self.audience, "jwks_url": self.jwks_url,
                  "username_claim": "preferred_username", "groups_claim": "realm_access.roles",
                  "jwks_min_refetch": 0, **settings}
        lines = [f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None]
        return "\n[[identity.providers]]\n" + "\n".join(lines) + "\n"

    @contextmanager
    def serving(self, path: str = "/realms/test") -> Iterator[TestIdP]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != f"{path}/certs":
                    self.send_error(404)
                    return
                idp.jwks_requests += 1
                if idp.failing:
                    self.send_error(500)
                    return
                body = json.dumps(idp.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        base = f"http://127.0.0.1:{server.server_address[1]}{path}"
        self.issuer, self.jwks_url = base, f"{base}/certs"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
