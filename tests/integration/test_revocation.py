"""Revocation and expiry end live sessions, through the real gateway and the real CLI.

Every test uses service-account tokens for subjects of its own, so revoking
them leaves the shared gateway's other identities alone.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import jwt
import psycopg
import pytest

from conftest import restart_gateway
from pgguard.config import load
from pgguard.identity.tokens import TokenService
from pgguard.wire import backend, frontend
from rawclient import LogCursor, RawConnection, assert_refused, craft_token, login_as

if TYPE_CHECKING:
    from conftest import PostgresServer, RunningGateway

# The demo config's [identity] leeway: a token counts as valid until exp plus this.
LEEWAY = 30
# What the issue promises: a revoked session is gone within this many seconds.
ENDS_WITHIN = 2.0


def new_subject() -> str:
    return f"bot-{uuid.uuid4().hex[:8]}"


def issue(gateway: RunningGateway, subject: str, ttl: int = 600) -> str:
    return TokenService(load(gateway.config_path).identity).issue(subject, ["analysts"], ttl)


def jti_of(token: str) -> str:
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def revoke(gateway: RunningGateway, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pgguard.cli", "token", "revoke", "-c", str(gateway.config_path), *args],
        capture_output=True, text=True, check=True,
    )
    return result.stdout


def assert_ended(conn: RawConnection, reason: str, within: float = ENDS_WITHIN) -> None:
    """The gateway sends FATAL 57P01 saying why and closes, within `within` seconds."""
    said = conn.wait_closed(timeout=within)
    errors = [message for message in said if isinstance(message, backend.ErrorResponse)]
    assert len(errors) == 1, said
    assert (errors[0].severity, errors[0].code) == ("FATAL", "57P01"), errors[0].fields
    assert errors[0].message == f"pgguard: session ended: {reason}"


def test_revoking_a_token_ends_its_idle_session_and_refuses_it_from_then_on(gateway: RunningGateway) -> None:
    subject = new_subject()
    token = issue(gateway, subject)
    log = LogCursor(gateway)
    with login_as(gateway, user=subject, token=token) as revoked, login_as(gateway, "analyst") as bystander, \
            psycopg.connect(gateway.dsn(user=subject, token=token)) as client:
        output = revoke(gateway, "--jti", jti_of(token), "--reason", "laptop stolen")
        assert f"revoked: jti {jti_of(token)}" in output
        assert_ended(revoked, "token revoked")
        _, ready = bystander.query("SELECT 1")
        assert ready.status == "I"
        # What a libpq client shows on its next statement.
        with pytest.raises(psycopg.OperationalError, match="pgguard: session ended: token revoked"):
            client.execute("SELECT 1")
    log.wait_for(rf"ending the session of {subject} from 127\.0\.0\.1: jti {jti_of(token)} revoked at .*: "
                 r"laptop stolen")
    log.wait_for(r"session \d+ ended: token revoked after")
    assert_refused(gateway, "28P01", "token revoked", user=subject, token=token)
    assert "already revoked" in revoke(gateway, "--jti", jti_of(token))


def test_revoking_ends_a_busy_session_and_cancels_its_statement(gateway: RunningGateway,
                                                                postgres: PostgresServer) -> None:
    subject = new_subject()
    token = issue(gateway, subject)
    application = f"busy-{subject}"
    with login_as(gateway, user=subject, token=token, application_name=application) as conn, \
            psycopg.connect(postgres.dsn(), autocommit=True) as direct:
        conn.send(frontend.Query("SELECT pg_sleep(60)"))
        running = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = 'active'"
        deadline = time.monotonic() + 5
        while direct.execute(running, [application]).fetchone() != (1,):
            assert time.monotonic() < deadline, "pg_sleep never started"
            time.sleep(0.02)
        revoke(gateway, "--jti", jti_of(token))
        assert_ended(conn, "token revoked")
        # The backend does not go on sleeping (or writing) for a caller who is gone.
        deadline = time.monotonic() + ENDS_WITHIN
        while direct.execute(running, [application]).fetchone() != (0,):
            assert time.monotonic() < deadline, "the revoked session's statement is still running"
            time.sleep(0.02)


def test_revoking_a_subject_ends_all_its_sessions_but_not_its_later_tokens(gateway: RunningGateway) -> None:
    subject = new_subject()
    first, second = issue(gateway, subject), issue(gateway, subject)
    with login_as(gateway, user=subject, token=first) as one, login_as(gateway, user=subject, token=second) as two:
        revoke(gateway, "--sub", subject)
        assert_ended(one, "token revoked")
        assert_ended(two, "token revoked")
    assert_refused(gateway, "28P01", "token revoked", user=subject, token=first)
    # revoked_at has whole seconds: a token issued in a later second is a new grant.
    later = craft_token(gateway, sub=subject, iat=int(time.time()) + 2)
    with login_as(gateway, user=subject, token=later) as conn:
        _, ready = conn.query("SELECT 1")
        assert ready.status == "I"


def test_an_expiring_token_ends_its_session(gateway: RunningGateway) -> None:
    subject = new_subject()
    now = int(time.time())
    # Valid for about 1.5 s more: exp is already past, but within the leeway.
    token = craft_token(gateway, sub=subject, iat=now - 120, nbf=now - 120, exp=now - LEEWAY + 2)
    log = LogCursor(gateway)
    with login_as(gateway, user=subject, token=token) as idle, login_as(gateway, user=subject, token=token) as busy:
        busy.send(frontend.Query("SELECT pg_sleep(30)"))
        assert_ended(idle, "token expired", within=4)
        assert_ended(busy, "token expired", within=1)
    log.wait_for(r"session \d+ ended: token expired after", count=2)
    assert_refused(gateway, "28P01", "token has expired", user=subject, token=token)


def test_revocations_survive_a_restart(gateway_factory: Callable[..., RunningGateway]) -> None:
    gateway = gateway_factory()
    subject, other = new_subject(), new_subject()
    issued = subprocess.run(
        [sys.executable, "-m", "pgguard.cli", "token", "issue", "-c", str(gateway.config_path), "--sub", subject,
         "--group", "analysts", "--ttl", "10m"], capture_output=True, text=True, check=True)
    token, kept = issued.stdout.strip(), issue(gateway, other)
    assert f"jti {jti_of(token)}" in issued.stderr  # where an operator learns what to revoke
    revoke(gateway, "--jti", jti_of(token))
    restart_gateway(gateway)
    assert_refused(gateway, "28P01", "token revoked", user=subject, token=token)
    with login_as(gateway, user=other, token=kept) as conn:
        _, ready = conn.query("SELECT 1")
        assert ready.status == "I"
