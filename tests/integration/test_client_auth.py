"""How clients log in to the gateway: tokens, user names, targets, TLS, and the startup protocol.

Refusals are checked twice: psycopg must fail with the gateway's message (what
most users see), and a raw login must get a FATAL ErrorResponse with the
SQLSTATE the spec names. psycopg 3 exposes no SQLSTATE for a failed
connection attempt (`exc.sqlstate` is None: libpq keeps no result for it), so
the SQLSTATE is read off the wire.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pgguard.demo.data import DATABASE, READER
from pgguard.wire import backend, frontend
from helpers import unique_name
from rawclient import Closed, LogCursor, RawConnection, assert_refused, config_edit, craft_token, login_as, login_error

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway


def test_valid_token_logs_in(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (READER,)
        assert conn.info.backend_pid != 0
    with login_as(gateway, "analyst", tls=True) as raw:
        _, ready = raw.query("SELECT 1")
        assert ready.status == "I"


def test_a_crafted_token_without_faults_logs_in(gateway: RunningGateway) -> None:
    """The baseline for the faulty tokens below: each of them differs from this in one thing only."""
    with psycopg.connect(gateway.dsn("analyst", token=craft_token(gateway))) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (READER,)


TOKEN_FAULTS: dict[str, tuple[Callable[[RunningGateway], str], str, str]] = {
    "garbage": (lambda gw: "not-a-jwt-" + secrets.token_hex(8), "28P01", "malformed token"),
    "expired": (lambda gw: craft_token(gw, iat=int(time.time()) - 3600, nbf=int(time.time()) - 3600,
                                       exp=int(time.time()) - 120), "28P01", "expired"),
    "other-key-same-kid": (lambda gw: craft_token(gw, key=Ed25519PrivateKey.generate()), "28P01",
                           "signature is invalid"),
    "unknown-kid": (lambda gw: craft_token(gw, kid="someone-elses"), "28P01", "unknown key"),
    "wrong-issuer": (lambda gw: craft_token(gw, iss="https://evil.example"), "28P01", "untrusted issuer"),
    "wrong-audience": (lambda gw: craft_token(gw, aud="another-service"), "28P01", "another audience"),
    "no-role-for-groups": (lambda gw: craft_token(gw, groups=["marketing"]), "28000", "no role"),
}


@pytest.mark.parametrize("fault", TOKEN_FAULTS)
def test_bad_tokens_are_refused(gateway: RunningGateway, fault: str) -> None:
    make, sqlstate, text = TOKEN_FAULTS[fault]
    assert_refused(gateway, sqlstate, text, token=make(gateway))


def test_user_must_match_the_token(gateway: RunningGateway) -> None:
    assert_refused(gateway, "28000", "does not match the token's user",
                   user=gateway.identities["support"].user)


def test_unknown_database_is_3D000(gateway: RunningGateway) -> None:
    assert_refused(gateway, "3D000", "no target database named 'nosuchdb'", dbname="nosuchdb")


def test_tls_is_required_unless_the_config_allows_loopback(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory(config_edit({"gateway": {"allow_plaintext_loopback": False}}))
    # The refusal comes before the token is asked for: login_error sees no password request.
    error = assert_refused(gateway, "28000", "TLS is required", sslmode="disable")
    assert "sslmode=require" in error.fields.get("H", "")
    with psycopg.connect(gateway.dsn("analyst", sslmode="require")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (READER,)
        assert conn.pgconn.ssl_in_use


def test_plaintext_loopback_is_allowed_by_the_demo_config(gateway: RunningGateway) -> None:
    with psycopg.connect(gateway.dsn("analyst", sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == (READER,)


def test_gssenc_request_is_declined_and_startup_continues(gateway: RunningGateway) -> None:
    with RawConnection.to(gateway) as conn:
        conn.send(frontend.GSSENCRequest())
        assert conn.receive_bytes(1) == b"N"
        greeting = conn.login(gateway.identities["analyst"].user, gateway.identities["analyst"].token, DATABASE)
        assert any(isinstance(m, backend.BackendKeyData) for m in greeting)


def test_bytes_after_ssl_request_drop_the_connection(gateway: RunningGateway) -> None:
    log = LogCursor(gateway)
    with RawConnection.to(gateway) as conn:
        # A StartupMessage right behind the SSLRequest, as a man in the middle would inject it.
        conn.send(frontend.SSLRequest(), frontend.StartupMessage(frontend.PROTOCOL_3_0, {"user": "alice"}))
        try:
            first = conn.receive_bytes(1)
        except Closed:
            first = b""
        assert first != b"S", "the gateway went on to TLS with injected plaintext queued"
        conn.wait_closed()
    log.wait_for(r"dropped: protocol violation: data received after SSLRequest before TLS")


def test_upstream_credentials_never_reach_the_client(gateway_factory: Callable[..., RunningGateway],
                                                     postgres: PostgresServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("wrong-" + secrets.token_urlsafe(12))
    gateway = gateway_factory(config_edit({f"targets.{DATABASE}.logins.reader": {"password_file": wrong}}))
    secrets_seen = (wrong.read_text(), postgres.login_passwords[READER], READER)

    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(gateway.dsn("analyst")).close()
    text = str(caught.value)
    assert "FATAL" in text and "refused the gateway's login" in text
    error = login_error(gateway, "analyst")
    assert error.severity == "FATAL"
    for secret in secrets_seen:
        assert secret not in text
        assert all(secret not in value for value in error.fields.values()), error.fields
    # Other identities (other logins) are unaffected, and the gateway keeps serving.
    with psycopg.connect(gateway.dsn("support")) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_upstream_login_failure_is_not_blamed_on_the_client_token(
        gateway_factory: Callable[..., RunningGateway], tmp_path: Path) -> None:
    """28P01/28000 tell the client its token or user is wrong (SPEC, errors); here neither is."""
    wrong = tmp_path / "wrong.password"
    wrong.write_text("wrong-" + secrets.token_urlsafe(12))
    gateway = gateway_factory(config_edit({f"targets.{DATABASE}.logins.reader": {"password_file": wrong}}))
    error = login_error(gateway, "analyst")
    assert error.severity == "FATAL"
    assert not error.code.startswith("28"), f"{error.code}: {error.message}"


@pytest.mark.parametrize(("protocol", "extra", "unrecognized"), [
    pytest.param(frontend.PROTOCOL_3_0 | 1, {}, [], id="protocol-3.1"),
    pytest.param(frontend.PROTOCOL_3_0, {"_pq_.foo": "bar"}, ["_pq_.foo"], id="_pq_-option"),
    pytest.param(frontend.PROTOCOL_3_0 | 2, {"_pq_.foo": "bar"}, ["_pq_.foo"], id="both"),
])
def test_protocol_negotiation_then_login(gateway: RunningGateway, protocol: int, extra: dict[str, str],
                                         unrecognized: list[str]) -> None:
    ident = gateway.identities["analyst"]
    with RawConnection.to(gateway) as conn:
        conn.startup(ident.user, DATABASE, protocol=protocol, **extra)
        assert conn.expect(backend.NegotiateProtocolVersion) == backend.NegotiateProtocolVersion(0, unrecognized)
        conn.authenticate(ident.token)
        messages, ready = conn.query("SELECT current_user")
        assert ready.status == "I"
        rows = [m.values for m in messages if isinstance(m, backend.DataRow)]
        assert rows == [[READER.encode()]]


@pytest.mark.parametrize("space", ["\x1c", "\x1f", "\u0085", "\u00a0", "\u3000"])
def test_startup_options_are_split_where_postgresql_splits_them(gateway: RunningGateway, postgres: PostgresServer,
                                                                space: str) -> None:
    """PostgreSQL splits `options` at ASCII white space only. Split at other characters Python
    calls space, `-csearch_path=public<space>--x=a,hidden` was two harmless settings to pgguard,
    while PostgreSQL searched `hidden` for the session's unqualified names: a table the role may
    not read was read under the name of one it may."""
    schema = unique_name("hidden")
    with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        direct.execute(f"CREATE SCHEMA {schema}")
        direct.execute(f"CREATE TABLE {schema}.orders (secret text)")
        direct.execute(f"INSERT INTO {schema}.orders VALUES ('the secret')")
        direct.execute(f"GRANT USAGE ON SCHEMA {schema} TO {READER}")
        direct.execute(f"GRANT SELECT ON {schema}.orders TO {READER}")
    try:
        ident = gateway.identities["analyst"]
        with RawConnection.to(gateway) as conn:
            conn.login(ident.user, ident.token, DATABASE, options=f"-csearch_path=public{space}--x=a,{schema}")
            messages, ready = conn.query("SELECT count(*) FROM orders")
        errors = [m for m in messages if isinstance(m, backend.ErrorResponse)]
        assert [m.values for m in messages if isinstance(m, backend.DataRow)] == []
        assert [e.code for e in errors] == ["42501"] and "may not read" in errors[0].message, errors
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as direct:
            direct.execute(f"DROP SCHEMA {schema} CASCADE")
