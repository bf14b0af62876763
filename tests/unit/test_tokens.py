"""TokenService: the gateway's own Ed25519 JWTs, issued, and verified by the Verifier."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.config import IdentityConfig, SigningKey
from pgguard.identity import Identity, TokenError
from pgguard.config import parse_duration
from pgguard.identity.tokens import TokenService, generate_signing_key
from pgguard.identity.verifier import Verifier

KID = "k1"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "signing.pem"
    generate_signing_key(path)
    return path


def identity_config(*keys: tuple[str, Path], username_claim: str = "sub", groups_claim: str = "groups",
                    leeway: float = 30) -> IdentityConfig:
    return IdentityConfig(
        issuer="pgguard-test", audience="pgguard", username_claim=username_claim, groups_claim=groups_claim,
        signing_keys=tuple(SigningKey(kid, path) for kid, path in keys), leeway=leeway,
        providers=(), revocation_file=Path("/nonexistent/revoked.json"), expiry_grace=0,
    )


@pytest.fixture
def service(key_file: Path) -> TokenService:
    return TokenService(identity_config((KID, key_file)))


async def verify(service: TokenService, token: str) -> Identity:
    return await Verifier(service.config, service).verify(token)


def private_key(key_file: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def sign(key_file: Path, headers: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token as `service` would issue it for alice/analysts, with `claims` changed (None removes)."""
    now = int(time.time())
    base = {"iss": "pgguard-test", "aud": "pgguard", "sub": "alice", "groups": ["analysts"],
            "iat": now, "nbf": now, "exp": now + 300}
    merged = {name: value for name, value in {**base, **claims}.items() if value is not None}
    return jwt.encode(merged, private_key(key_file), algorithm="EdDSA", headers={"kid": KID, **(headers or {})})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def refused(service: TokenService, token: str) -> str:
    with pytest.raises(TokenError) as caught:
        await verify(service, token)
    return str(caught.value)


async def test_issue_verify_round_trip(service: TokenService) -> None:
    before = time.time()
    token = service.issue("alice", ["analysts", "support"], ttl=600, target="demo")
    identity = await verify(service, token)
    assert (identity.username, identity.subject, identity.issuer) == ("alice", "alice", "pgguard-test")
    assert identity.groups == ("analysts", "support")
    assert identity.target == "demo"
    assert identity.jti and len(identity.jti) >= 16
    assert before + 599 <= identity.expires_at <= time.time() + 601
    assert jwt.get_unverified_header(token) == {"alg": "EdDSA", "kid": KID, "typ": "JWT"}


async def test_each_token_has_its_own_jti(service: TokenService) -> None:
    first, second = [await verify(service, service.issue("alice", ["analysts"], 60)) for _ in range(2)]
    assert first.jti != second.jti


async def test_a_hand_signed_token_is_accepted(service: TokenService, key_file: Path) -> None:
    """The baseline for the faulty tokens below."""
    assert (await verify(service, sign(key_file))).username == "alice"


async def test_expired_beyond_leeway_is_refused(service: TokenService, key_file: Path) -> None:
    now = int(time.time())
    assert "expired" in await refused(service, sign(key_file, iat=now - 600, nbf=now - 600, exp=now - 31))


async def test_expiry_within_leeway_is_tolerated(service: TokenService, key_file: Path) -> None:
    now = int(time.time())
    identity = await verify(service, sign(key_file, iat=now - 600, nbf=now - 600, exp=now - 10))
    assert identity.username == "alice" and identity.valid_until == now - 10 + 30


async def test_not_yet_valid_is_refused(service: TokenService, key_file: Path) -> None:
    now = int(time.time())
    assert "not valid yet" in await refused(service, sign(key_file, nbf=now + 600, exp=now + 1200))


async def test_unknown_kid_is_refused(service: TokenService, key_file: Path) -> None:
    assert "unknown key" in await refused(service, sign(key_file, headers={"kid": "k2"}))


async def test_missing_kid_is_refused(service: TokenService, key_file: Path) -> None:
    claims = jwt.decode(sign(key_file), options={"verify_signature": False})
    token = jwt.encode(claims, private_key(key_file), algorithm="EdDSA")
    assert "unknown key" in await refused(service, token)


async def test_another_key_under_the_same_kid_is_refused(service: TokenService, tmp_path: Path) -> None:
    other = tmp_path / "other.pem"
    generate_signing_key(other)
    assert "signature is invalid" in await refused(service, sign(other))


async def test_tampered_payload_is_refused(service: TokenService, key_file: Path) -> None:
    header, payload, signature = sign(key_file).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["dba"]
    forged = ".".join([header, b64url(json.dumps(claims).encode()), signature])
    assert "signature is invalid" in await refused(service, forged)


async def test_alg_none_is_refused(service: TokenService, key_file: Path) -> None:
    header = b64url(json.dumps({"alg": "none", "kid": KID, "typ": "JWT"}).encode())
    payload = sign(key_file).split(".")[1]
    assert "algorithm that is not accepted" in await refused(service, f"{header}.{payload}.")


async def test_hs256_signed_with_the_public_key_is_refused(service: TokenService, key_file: Path) -> None:
    """The algorithm-confusion attack: an HMAC keyed with the (public) verification key."""
    public = private_key(key_file).public_key().public_bytes(serialization.Encoding.Raw,
                                                             serialization.PublicFormat.Raw)
    header = b64url(json.dumps({"alg": "HS256", "kid": KID, "typ": "JWT"}).encode())
    payload = sign(key_file).split(".")[1]
    mac = hmac.new(public, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert "algorithm that is not accepted" in await refused(service, f"{header}.{payload}.{b64url(mac)}")


@pytest.mark.parametrize(("claims", "message"), [
    ({"groups": None}, "lacks the 'groups' claim"),
    ({"groups": "analysts"}, "lacks the 'groups' claim"),
    ({"groups": ["analysts", 7]}, "lacks the 'groups' claim"),
    ({"sub": None}, "lacks the 'sub' claim"),
    ({"exp": None}, "lacks the 'exp' claim"),
    ({"iss": "someone-else"}, "untrusted issuer"),
    ({"aud": "another-service"}, "another audience"),
])
async def test_claim_faults_are_refused(service: TokenService, key_file: Path, claims: dict[str, Any], message: str) -> None:
    assert message in await refused(service, sign(key_file, **claims))


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9"])
async def test_malformed_tokens_are_refused(service: TokenService, token: str) -> None:
    await refused(service, token)


async def test_custom_username_claim(key_file: Path) -> None:
    service = TokenService(identity_config((KID, key_file), username_claim="preferred_username",
                                           groups_claim="roles", leeway=0))
    identity = await verify(service, service.issue("svc-1", ["analysts"], ttl=60))
    assert (identity.username, identity.groups) == ("svc-1", ("analysts",))
    assert "lacks the 'roles' claim" in await refused(service, sign(key_file, groups=None, preferred_username="x"))


async def test_old_keys_verify_until_removed_new_key_signs(key_file: Path, tmp_path: Path) -> None:
    """Rotation: the new key goes first in the config and signs; tokens of the old one stay valid."""
    new_file = tmp_path / "new.pem"
    generate_signing_key(new_file)
    old_token = TokenService(identity_config((KID, key_file))).issue("alice", ["analysts"], 60)
    rotated = TokenService(identity_config(("k2", new_file), (KID, key_file)))
    new_token = rotated.issue("alice", ["analysts"], 60)
    assert jwt.get_unverified_header(new_token)["kid"] == "k2"
    assert [key["kid"] for key in rotated.jwks()["keys"]] == ["k2", KID]
    for token in (old_token, new_token):
        assert (await verify(rotated, token)).username == "alice"
    retired = TokenService(identity_config(("k2", new_file)))
    assert "unknown key" in await refused(retired, old_token)
    assert (await verify(retired, new_token)).username == "alice"


def test_jwks_publishes_the_public_key(service: TokenService, key_file: Path) -> None:
    keys = service.jwks()["keys"]
    assert len(keys) == 1
    jwk = keys[0]
    assert {k: jwk[k] for k in ("kty", "crv", "kid", "alg", "use")} == {
        "kty": "OKP", "crv": "Ed25519", "kid": KID, "alg": "EdDSA", "use": "sig"}
    raw = private_key(key_file).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert jwk["x"] == b64url(raw)
    assert "d" not in jwk, "the JWKS must not carry the private key"
    # A relying party holding only the JWKS can verify the gateway's tokens.
    verified = jwt.decode(service.issue("alice", ["analysts"], 60), jwt.PyJWK(jwk).key,
                          algorithms=["EdDSA"], audience="pgguard")
    assert verified["sub"] == "alice"


def test_issue_without_a_signing_key_is_refused() -> None:
    service = TokenService(identity_config())
    with pytest.raises(TokenError):
        service.issue("alice", ["analysts"], 60)
    assert service.jwks() == {"keys": []}


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("7d", 604800)])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1w", "-5m", "1.5h", "h"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)
