"""Checking a JWT against one trusted issuer's rules and reading an Identity out of it.

The gateway's own tokens and every OIDC provider go through the same code, so
both refuse the same faults with the same words. The words are what the
client reads: they say what is wrong with the token, never which keys, issuers
or audiences would have been right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from pgguard.identity import Identity, TokenError

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey
REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "sub"]
_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}


@dataclass(frozen=True)
class VerifyingKey:
    key: PublicKey
    # The algorithm the key was published for (a JWK's `alg`); None: any that fits the key.
    algorithm: str | None = None

    def fits(self, algorithm: str) -> bool:
        """Whether a token claiming `algorithm` may be checked with this key at all."""
        if self.algorithm not in (None, algorithm):
            return False
        if algorithm.startswith(("RS", "PS")):
            return isinstance(self.key, RSAPublicKey)
        if algorithm in _CURVES:
            return isinstance(self.key, EllipticCurvePublicKey) and self.key.curve.name == _CURVES[algorithm]
        return algorithm == "EdDSA" and isinstance(self.key, (Ed25519PublicKey, Ed448PublicKey))


class KeySource(Protocol):
    async def key(self, kid: str) -> VerifyingKey | None:
        """The key published under `kid`, if there is one."""


@dataclass(frozen=True)
class IssuerRules:
    """What a token from one issuer must satisfy, and which claims name the caller."""

    provider: str
    issuer: str
    audience: tuple[str, ...]
    username_claim: str
    groups_claim: str
    algorithms: tuple[str, ...]
    leeway: float

    def algorithm(self, header: dict[str, Any]) -> str:
        """The token's algorithm, checked before any key is looked up (or fetched) for it."""
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise TokenError("token is signed with an algorithm that is not accepted")
        return algorithm

    def identity(self, token: str, algorithm: str, key: VerifyingKey) -> Identity:
        if not key.fits(algorithm):
            raise TokenError("token algorithm does not match its key")
        claims = self._decode(token, algorithm, key.key)
        username = claim(claims, self.username_claim)
        groups = claim(claims, self.groups_claim)
        jti = claims.get("jti")
        if not isinstance(username, str) or not username:
            raise TokenError(f"token lacks the {self.username_claim!r} claim")
        if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
            raise TokenError(f"token lacks the {self.groups_claim!r} claim")
        if jti is not None and not isinstance(jti, str):
            raise TokenError("token has a malformed 'jti' claim")
        target = claims.get("pgguard_target")
        return Identity(
            provider=self.provider,
            issuer=claims["iss"],
            subject=claims["sub"],
            username=username,
            groups=tuple(groups),
            jti=jti,
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
            valid_until=float(claims["exp"]) + self.leeway,
            target=target if isinstance(target, str) else None,
        )

    def _decode(self, token: str, algorithm: str, key: PublicKey) -> dict[str, Any]:
        try:
            return jwt.decode(
                token, key, algorithms=[algorithm], audience=list(self.audience), issuer=self.issuer,
                leeway=self.leeway, options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise TokenError("token is not valid yet") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise TokenError("token is from an untrusted issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise TokenError("token signature is invalid") from exc
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc


@dataclass(frozen=True)
class TrustedIssuer:
    """One issuer the gateway accepts tokens from: its rules and where its keys come from."""

    rules: IssuerRules
    keys: KeySource

    async def verify(self, token: str, header: dict[str, Any]) -> Identity:
        algorithm = self.rules.algorithm(header)
        kid = header.get("kid")
        key = await self.keys.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("token signed by an unknown key")
        return self.rules.identity(token, algorithm, key)


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to choose the issuer that will verify them."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise TokenError("malformed token") from exc
    return header, claims


def claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (`realm_access.roles`).

    A name that exists as it is wins, so URL-named claims
    (`https://example.com/groups`) work too.
    """
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
