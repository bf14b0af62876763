"""Logging in with tokens from OIDC providers, through the real gateway.

Two test providers serve their JWKS over HTTP on loopback: `keycloak` (RS256
and ES256 keys, groups nested in `realm_access.roles`, refetches at once on
an unknown kid) and `okta` (its groups in `groups`, its user in `email`, and
the default rate limit on refetching). A third, `filed`, has its JWKS in a
file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from conftest import start_gateway, stop_gateway
from idp import TestIdP
from pgguard.demo.data import READER, SUPPORT
from rawclient import LogCursor, assert_refused, config_edit, login_as

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway, TLSFiles


@pytest.fixture(scope="module")
def keycloak() -> Iterator[TestIdP]:
    idp = TestIdP()
    with idp.serving("/realms/test"):
        idp.add_key("RS256")
        idp.add_key("ES256")
        yield idp


@pytest.fixture(scope="module")
def okta() -> Iterator[TestIdP]:
    idp = TestIdP(audience="api://pgguard")
    with idp.serving("/oauth2/default"):
        idp.add_key("RS256")
        yield idp


@pytest.fixture(scope="module")
def filed() -> TestIdP:
    """A provider whose keys the gateway reads from a file; it serves nothing."""
    idp = TestIdP(issuer="https://idp.example/filed")
    idp.add_key("ES256")
    return idp


@pytest.fixture(scope="module")
def oidc_gateway(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer, test_ca: TLSFiles,
                 keycloak: TestIdP, okta: TestIdP, filed: TestIdP) -> Iterator[RunningGateway]:
    directory = tmp_path_factory.mktemp("oidc")
    jwks_file = directory / "filed-jwks.json"
    jwks_file.write_text(json.dumps(filed.jwks()))
    providers = keycloak.provider_toml("keycloak") + okta.provider_toml(
        "okta", username_claim="email", groups_claim="groups", audience=["api://pgguard", "api://other"],
        jwks_min_refetch=30) + filed.provider_toml("filed", jwks_url=None, jwks_file=str(jwks_file))
    # Dozens of refusals from 127.0.0.1 here: the failed-login limit has tests of its own.
    no_limit = config_edit({"gateway": {"max_failed_logins": 0}})
    running = start_gateway(directory, postgres, test_ca, lambda text: no_limit(text) + providers)
    yield running
    stop_gateway(running)


def kid_of(idp: TestIdP, algorithm: str) -> str:
    return next(kid for kid in idp.published if idp.keys[kid][0] == algorithm)


def current_user(gateway: RunningGateway, user: str, token: str) -> str:
    with psycopg.connect(gateway.dsn(user=user, token=token)) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_valid_token_with_nested_groups_logs_in(oidc_gateway: RunningGateway, keycloak: TestIdP,
                                                  algorithm: str) -> None:
    log = LogCursor(oidc_gateway)
    claims = keycloak.claims("kate", ["analysts"])
    assert current_user(oidc_gateway, "kate", keycloak.sign(claims, kid_of(keycloak, algorithm))) == READER
    log.wait_for(rf"login: kate from 127\.0\.0\.1 via keycloak \(sub id-kate, jti {claims['jti']}, groups analysts\)")


def test_a_second_provider_is_trusted_at_the_same_time(oidc_gateway: RunningGateway, okta: TestIdP) -> None:
    """Its own claims (email, flat groups) and one of the audiences the config lists."""
    claims = okta.claims("ola", [], email="ola@example.com", groups=["analysts", "support"],
                         realm_access=None, aud="api://other")
    # Several roles: the login of the most privileged one serves their union.
    assert current_user(oidc_gateway, "ola@example.com", okta.sign(claims, kid_of(okta, "RS256"))) == SUPPORT


def tampered_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[len(raw) // 2] ^= 1
    return ".".join([header, payload, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()])


def tampered_claims(token: str) -> str:
    """Groups raised to dba, the signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["realm_access"]["roles"] = ["dba"]
    return ".".join([header, b64url(json.dumps(claims).encode()), signature])


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(idp: TestIdP, algorithm: str, secret: bytes | None = None) -> str:
    """The analyst's claims under `alg: none`, or HMAC-signed with `secret`."""
    kid = kid_of(idp, "RS256")
    header = b64url(json.dumps({"alg": algorithm, "kid": kid, "typ": "JWT"}).encode())
    payload = b64url(json.dumps(idp.claims("kate", ["analysts"])).encode())
    if secret is None:
        return f"{header}.{payload}."
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(mac)}"


def public_pem(idp: TestIdP) -> bytes:
    key = idp.keys[kid_of(idp, "RS256")][1].public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def signed_by_unpublished(idp: TestIdP) -> str:
    return idp.token("kate", ["analysts"], idp.add_key("RS256", publish=False))


def rs256_under_the_es256_kid(idp: TestIdP) -> str:
    """Signed with a (never published) RSA key, but naming the provider's EC key."""
    claims = idp.claims("kate", ["analysts"])
    return idp.sign(claims, idp.add_key("RS256", publish=False), headers={"kid": kid_of(idp, "ES256")})


NOW = int(time.time())
TOKEN_FAULTS: dict[str, tuple[Callable[[TestIdP], str], str, str]] = {
    "expired": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "RS256"), iat=NOW - 3600, nbf=NOW - 3600,
                                      exp=int(time.time()) - 120), "28P01", "token has expired"),
    "not-yet-valid": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "ES256"), nbf=int(time.time()) + 600,
                                            exp=int(time.time()) + 1200), "28P01", "token is not valid yet"),
    "wrong-issuer": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "RS256"),
                                           iss="https://evil.example/realms/test"), "28P01", "untrusted issuer"),
    "wrong-audience": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "RS256"), aud="another-service"),
                       "28P01", "token is for another audience"),
    "unknown-kid": (signed_by_unpublished, "28P01", "token signed by an unknown key"),
    "tampered-signature": (lambda idp: tampered_signature(idp.token("kate", ["analysts"], kid_of(idp, "ES256"))),
                           "28P01", "token signature is invalid"),
    "tampered-claims": (lambda idp: tampered_claims(idp.token("kate", ["analysts"], kid_of(idp, "RS256"))),
                        "28P01", "token signature is invalid"),
    "alg-none": (lambda idp: unsigned(idp, "none"), "28P01", "algorithm that is not accepted"),
    "hs256-keyed-with-the-public-key": (lambda idp: unsigned(idp, "HS256", public_pem(idp)), "28P01",
                                        "algorithm that is not accepted"),
    "algorithm-of-another-key": (rs256_under_the_es256_kid, "28P01", "token algorithm does not match its key"),
    "missing-groups-claim": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "RS256"), realm_access=None),
                             "28P01", "token lacks the 'realm_access.roles' claim"),
    "missing-iat": (lambda idp: idp.token("kate", ["analysts"], kid_of(idp, "RS256"), iat=None), "28P01",
                    "token lacks the 'iat' claim"),
    "groups-without-a-role": (lambda idp: idp.token("kate", ["marketing"], kid_of(idp, "RS256")), "28000",
                              "no role is granted to user 'kate'"),
}


@pytest.mark.parametrize("fault", TOKEN_FAULTS)
def test_bad_tokens_are_refused_saying_why(oidc_gateway: RunningGateway, keycloak: TestIdP, fault: str) -> None:
    make, sqlstate, text = TOKEN_FAULTS[fault]
    error = assert_refused(oidc_gateway, sqlstate, text, user="kate", token=make(keycloak))
    # Nothing an attacker could use to do better next time: no issuer, key id or audience.
    said = " ".join(error.fields.values())
    for secret in (keycloak.issuer, keycloak.jwks_url, "api://pgguard", *keycloak.keys):
        assert secret not in said, said


def test_user_must_match_the_username_claim(oidc_gateway: RunningGateway, keycloak: TestIdP) -> None:
    token = keycloak.token("kate", ["analysts"], kid_of(keycloak, "RS256"))
    assert_refused(oidc_gateway, "28000", "user 'bob' does not match the token's user", user="bob", token=token)


def test_a_key_rotated_in_at_the_provider_is_fetched(oidc_gateway: RunningGateway, keycloak: TestIdP) -> None:
    fetched = keycloak.jwks_requests
    token = keycloak.token("kate", ["analysts"], keycloak.add_key("ES256"))
    assert current_user(oidc_gateway, "kate", token) == READER
    assert keycloak.jwks_requests == fetched + 1
    # Known now: the next login with it needs no fetch.
    assert current_user(oidc_gateway, "kate", token) == READER
    assert keycloak.jwks_requests == fetched + 1


def test_unknown_kids_refetch_at_most_once_per_interval(oidc_gateway: RunningGateway, okta: TestIdP) -> None:
    """okta's jwks_min_refetch is 30 s, and the gateway fetched its keys at start."""
    fetched = okta.jwks_requests
    for _ in range(20):
        token = okta.token("ola", [], okta.add_key("ES256", publish=False), email="ola@example.com",
                           groups=["analysts"], realm_access=None, aud="api://pgguard")
        with pytest.raises(psycopg.OperationalError, match="unknown key"):
            psycopg.connect(oidc_gateway.dsn(user="ola@example.com", token=token)).close()
    assert okta.jwks_requests <= fetched + 1


def test_a_provider_that_fails_costs_only_its_own_logins(oidc_gateway: RunningGateway, keycloak: TestIdP,
                                                         okta: TestIdP) -> None:
    log = LogCursor(oidc_gateway)
    keycloak.failing = True
    try:
        token = keycloak.token("kate", ["analysts"], keycloak.add_key("RS256"))
        assert_refused(oidc_gateway, "28P01", "token signed by an unknown key", user="kate", token=token)
        log.wait_for(r"provider keycloak: cannot fetch its JWKS from .*500")
        # The gateway's own tokens, the other provider and the keys already known still work.
        with login_as(oidc_gateway, "analyst") as conn:
            _, ready = conn.query("SELECT 1")
            assert ready.status == "I"
        known = keycloak.token("kate", ["analysts"], kid_of(keycloak, "ES256"))
        assert current_user(oidc_gateway, "kate", known) == READER
    finally:
        keycloak.failing = False
    assert current_user(oidc_gateway, "kate", token) == READER


def test_pgguard_check_lists_the_providers(oidc_gateway: RunningGateway, keycloak: TestIdP) -> None:
    result = subprocess.run([sys.executable, "-m", "pgguard.cli", "check", "-c", str(oidc_gateway.config_path)],
                            capture_output=True, text=True, check=True)
    assert f"provider keycloak: issuer {keycloak.issuer}; keys from {keycloak.jwks_url}" in result.stdout


def test_a_jwks_file_serves_as_well(oidc_gateway: RunningGateway, filed: TestIdP) -> None:
    assert current_user(oidc_gateway, "kate", filed.token("kate", ["support"], kid_of(filed, "ES256"))) == SUPPORT
