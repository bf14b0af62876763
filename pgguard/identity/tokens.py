"""Service-account tokens the gateway signs itself, and the keys that verify them.

Tokens are JWTs signed with Ed25519 (`EdDSA`). Several keys may be configured,
each under its `kid`: the first signs, all verify, so a key can be rotated by
adding a new one first and removing the old one once its tokens expired.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pgguard.config import IdentityConfig, SigningKey
from pgguard.identity import TokenError
from pgguard.identity.claims import IssuerRules, TrustedIssuer, VerifyingKey

# The provider name of the gateway's own tokens, in identities and logs.
OWN_PROVIDER = "pgguard"


def generate_signing_key(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def load_signing_key(key: SigningKey) -> Ed25519PrivateKey:
    """One of the gateway's Ed25519 keys (PKCS8 PEM): it signs tokens and session-log checkpoints."""
    loaded = serialization.load_pem_private_key(key.private_key_file.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"signing key {key.kid!r} is not an Ed25519 key")
    return loaded


class TokenService:
    """Signs the gateway's own tokens and holds their keys (verification is `trusted()`'s)."""

    def __init__(self, config: IdentityConfig) -> None:
        self.config = config
        self._private: dict[str, Ed25519PrivateKey] = {}
        for key in config.signing_keys:
            try:
                self._private[key.kid] = load_signing_key(key)
            except ValueError as exc:
                raise TokenError(str(exc)) from exc
        self._public: dict[str, Ed25519PublicKey] = {
            kid: key.public_key() for kid, key in self._private.items()
        }

    def issue(self, subject: str, groups: list[str], ttl: int, target: str | None = None) -> str:
        if not self._private:
            raise TokenError("no signing key is configured ([identity] signing_keys)")
        kid, key = next(iter(self._private.items()))
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": subject,
            self.config.groups_claim: list(groups),
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
        }
        if self.config.username_claim != "sub":
            claims[self.config.username_claim] = subject
        if target is not None:
            claims["pgguard_target"] = target
        return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})

    async def key(self, kid: str) -> VerifyingKey | None:
        public = self._public.get(kid)
        return None if public is None else VerifyingKey(public, "EdDSA")

    def trusted(self) -> TrustedIssuer:
        """The gateway as one of the issuers its verifier trusts."""
        config = self.config
        rules = IssuerRules(OWN_PROVIDER, config.issuer, (config.audience,), config.username_claim,
                            config.groups_claim, ("EdDSA",), config.leeway)
        return TrustedIssuer(rules, self)

    def jwks(self) -> dict[str, Any]:
        """The public keys, as served at /.well-known/jwks.json."""
        keys = []
        for kid, key in self._public.items():
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"})
        return {"keys": keys}
