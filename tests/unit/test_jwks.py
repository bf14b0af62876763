"""Provider keys: which JWKs may verify which algorithms, and when the cache fetches."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pgguard.config import ASYMMETRIC_ALGORITHMS, ProviderConfig
from pgguard.identity.claims import VerifyingKey, claim
from pgguard.identity.jwks import JwksCache, parse_jwks

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
P256_KEY = ec.generate_private_key(ec.SECP256R1()).public_key()
P384_KEY = ec.generate_private_key(ec.SECP384R1()).public_key()
ED_KEY = ed25519.Ed25519PrivateKey.generate().public_key()


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    encoders = {rsa.RSAPublicKey: jwt.algorithms.RSAAlgorithm, ec.EllipticCurvePublicKey: jwt.algorithms.ECAlgorithm,
                ed25519.Ed25519PublicKey: jwt.algorithms.OKPAlgorithm}
    encoder = next(cls for base, cls in encoders.items() if isinstance(key, base))
    return {**json.loads(encoder.to_jwk(key)), "kid": kid, **extra}


def jwks(*keys: dict[str, Any]) -> bytes:
    return json.dumps({"keys": list(keys)}).encode()


def test_public_signing_keys_are_kept_and_everything_else_skipped() -> None:
    keys, skipped = parse_jwks(jwks(
        jwk(RSA_KEY, "rsa", alg="RS256", use="sig"), jwk(P256_KEY, "p256"), jwk(ED_KEY, "ed"),
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {**jwk(RSA_KEY, "private"), "d": "AAAA"},
        jwk(RSA_KEY, "encryption", use="enc"),
        jwk(RSA_KEY, "hs-labelled", alg="HS256"),
        {k: v for k, v in jwk(RSA_KEY, "x").items() if k != "kid"},
        {"kty": "XYZ", "kid": "strange"},
    ))
    assert set(keys) == {"rsa", "p256", "ed"}
    assert keys["rsa"].algorithm == "RS256" and keys["p256"].algorithm is None
    assert len(skipped) == 6, skipped
    assert any("secret or private" in line for line in skipped)


@pytest.mark.parametrize("document", [b"not json", b"[]", b'{"keys": 3}'])
def test_a_document_that_is_no_jwks_is_an_error(document: bytes) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


@pytest.mark.parametrize(("key", "fits"), [
    (VerifyingKey(RSA_KEY), {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    (VerifyingKey(RSA_KEY, "PS256"), {"PS256"}),
    (VerifyingKey(P256_KEY), {"ES256"}),
    (VerifyingKey(P384_KEY), {"ES384"}),
    (VerifyingKey(ED_KEY), {"EdDSA"}),
])
def test_a_key_only_verifies_the_algorithms_of_its_kind(key: VerifyingKey, fits: set[str]) -> None:
    """No key confusion: an RSA key never checks an ECDSA (or HMAC) signature, a P-256 key never ES384."""
    assert {algorithm for algorithm in (*ASYMMETRIC_ALGORITHMS, "HS256", "none") if key.fits(algorithm)} == fits


def test_claims_by_name_or_dotted_path() -> None:
    claims = {"realm_access": {"roles": ["a"]}, "https://example.com/groups": ["b"], "flat": "x"}
    assert claim(claims, "realm_access.roles") == ["a"]
    assert claim(claims, "https://example.com/groups") == ["b"]
    assert claim(claims, "flat.deeper") is None
    assert claim(claims, "realm_access.missing") is None


def provider(**settings: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "name": "test", "issuer": "https://idp.example", "audience": ("pgguard",), "jwks_url": None,
        "jwks_file": Path("/unused"), "username_claim": "preferred_username", "groups_claim": "groups",
        "algorithms": ASYMMETRIC_ALGORITHMS, "leeway": 0, "jwks_timeout": 5, "jwks_min_refetch": 30,
        "jwks_max_age": 3600, **settings}
    return ProviderConfig(**values)


class FakeIdP:
    """A fetch function that serves the current key set and counts the calls."""

    def __init__(self, *kids: str) -> None:
        self.kids = list(kids)
        self.fetches = 0
        self.failing = False

    def __call__(self) -> bytes:
        self.fetches += 1
        if self.failing:
            raise OSError("connection refused")
        return jwks(*(jwk(P256_KEY, kid) for kid in self.kids))


async def test_an_unknown_kid_refetches_at_most_once_per_interval(mock_clock: trio.testing.MockClock) -> None:
    idp = FakeIdP("k1")
    cache = JwksCache(provider(), idp)
    assert await cache.key("k1") is not None and idp.fetches == 1
    assert await cache.key("k1") is not None and idp.fetches == 1
    idp.kids.append("k2")
    assert await cache.key("k2") is None  # refetched too recently: the login is refused
    assert await cache.key("made-up") is None and idp.fetches == 1
    mock_clock.jump(30)
    assert await cache.key("k2") is not None and idp.fetches == 2


async def test_keys_are_refetched_when_old_and_kept_when_the_refetch_fails(mock_clock: trio.testing.MockClock) -> None:
    idp = FakeIdP("k1")
    cache = JwksCache(provider(), idp)
    assert await cache.key("k1") is not None
    idp.failing = True
    mock_clock.jump(3601)
    assert await cache.key("k1") is not None and idp.fetches == 2
    idp.failing, idp.kids = False, ["k2"]  # k1 withdrawn at the provider
    mock_clock.jump(30)
    assert await cache.key("k1") is None and idp.fetches == 3


async def test_logins_waiting_on_the_same_fetch_share_it() -> None:
    idp = FakeIdP("k1")
    cache = JwksCache(provider(jwks_min_refetch=0), idp)
    found: list[VerifyingKey | None] = []

    async def login() -> None:
        found.append(await cache.key("k1"))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(login)
    assert idp.fetches == 1 and all(key is not None for key in found)


async def test_a_provider_that_hangs_costs_a_login_the_timeout_only(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    def hang() -> bytes:
        release.wait(10)
        return jwks()

    cache = JwksCache(provider(jwks_timeout=0.2), hang)
    try:
        with trio.fail_after(2):
            assert await cache.key("k1") is None
    finally:
        release.set()
    assert "cannot fetch its JWKS from /unused: TooSlowError" in caplog.text
