"""Failed logins are limited per client address: a flood from one host costs only that host.

Loopback has many addresses: the attacker binds its connections to
127.0.0.2, everyone else comes from 127.0.0.1.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest

from pgguard.demo.data import DATABASE
from pgguard.wire import backend, frontend
from rawclient import Closed, LogCursor, RawConnection, Refused, config_edit, login_as

if TYPE_CHECKING:
    from conftest import RunningGateway

ATTACKER = "127.0.0.2"
LIMIT = 10
ATTEMPTS = 1000
ATTACKERS = 8  # threads, each with one connection in flight


@pytest.fixture
def limited(gateway_factory: Callable[..., RunningGateway]) -> RunningGateway:
    return gateway_factory(config_edit({"gateway": {"max_failed_logins": LIMIT, "failed_login_window": 60}}))


def bad_login(gateway: RunningGateway, source: str | None = ATTACKER) -> str:
    """One login with a forged token (from the attacker's address); the SQLSTATE it earned."""
    ident = gateway.identities["analyst"]
    try:
        with RawConnection.open(gateway.host, gateway.port, source=source) as conn:
            conn.login(ident.user, ident.token[:-8] + "AAAAAAAA", DATABASE)
    except Refused as refused:
        return refused.error.code
    except (Closed, OSError) as exc:
        return type(exc).__name__
    return "accepted"


def test_a_thousand_bad_logins_from_one_address_leave_others_unaffected(limited: RunningGateway) -> None:
    log = LogCursor(limited)
    answers: Counter[str] = Counter()
    lock = threading.Lock()

    def attack(count: int) -> None:
        for _ in range(count):
            code = bad_login(limited)
            with lock:
                answers[code] += 1

    threads = [threading.Thread(target=attack, args=(ATTEMPTS // ATTACKERS,)) for _ in range(ATTACKERS)]
    for thread in threads:
        thread.start()
    # Meanwhile, from 127.0.0.1: logins and queries go on as usual.
    rounds = 0
    while any(thread.is_alive() for thread in threads) or rounds < 5:
        with psycopg.connect(limited.dsn("support")) as conn:
            assert conn.execute("SELECT count(*) FROM tickets").fetchone()[0] > 0  # type: ignore[index]
        rounds += 1
    for thread in threads:
        thread.join()
    assert sum(answers.values()) == ATTEMPTS
    # The token is checked LIMIT times (a few more may have been in flight as
    # the door closed); every other attempt is turned away at accept.
    assert LIMIT <= answers["28P01"] <= LIMIT + ATTACKERS, answers
    assert answers["53300"] == ATTEMPTS - answers["28P01"], answers
    log.wait_for(rf"too many failed logins from {ATTACKER.replace('.', '[.]')}: refusing its connections")


def test_a_throttled_client_is_told_why_before_tls(limited: RunningGateway) -> None:
    """From 127.0.0.1 this time: libpq cannot choose its source address."""
    for _ in range(LIMIT):
        assert bad_login(limited, source=None) == "28P01"
    # On the wire: an ErrorResponse is the first and only thing the gateway says.
    with RawConnection.to(limited) as conn:
        said = conn.wait_closed()
    assert len(said) == 1 and isinstance(said[0], backend.ErrorResponse), said
    assert (said[0].severity, said[0].code) == ("FATAL", "53300")
    assert said[0].message.startswith("pgguard: too many failed logins from 127.0.0.1; try again in ")
    with pytest.raises(psycopg.OperationalError, match="too many failed logins from 127.0.0.1; try again in"):
        psycopg.connect(limited.dsn("analyst", sslmode="disable")).close()
    # Asked for TLS first, libpq since 17.2 and 16.6 (CVE-2024-10977) reports only that
    # an error came, not its text, which is unauthenticated; older ones print it.
    with pytest.raises(psycopg.OperationalError, match="too many failed logins|error response during SSL exchange"):
        psycopg.connect(limited.dsn("analyst", sslmode="require")).close()
    # A valid token is turned away too: what is limited is the address.
    with pytest.raises(Refused, match="53300"):
        login_as(limited, "analyst").close()


def cancel(gateway: RunningGateway, process_id: int, secret_key: int) -> None:
    with RawConnection.open(gateway.host, gateway.port, source=ATTACKER) as conn:
        conn.send(frontend.CancelRequest(process_id, secret_key))
        conn.wait_closed()


def test_guessing_cancel_keys_counts_as_failed_logins(limited: RunningGateway) -> None:
    """A CancelRequest needs no token: without a limit, a session's 31-bit secret could be guessed
    at the gateway's pace, and its statements cancelled or its held requests withdrawn."""
    ident = limited.identities["analyst"]
    with RawConnection.to(limited) as victim:
        key = next(m for m in victim.login(ident.user, ident.token, DATABASE) if isinstance(m, backend.BackendKeyData))
        for _ in range(LIMIT + 2):  # the right key is no failure, however often it comes
            cancel(limited, key.process_id, key.secret_key)
        with RawConnection.open(limited.host, limited.port, source=ATTACKER) as conn:
            conn.login(ident.user, ident.token, DATABASE)
        for guess in range(LIMIT):
            cancel(limited, key.process_id, key.secret_key ^ (guess + 1))
        with pytest.raises(Refused, match="53300"):
            with RawConnection.open(limited.host, limited.port, source=ATTACKER) as conn:
                conn.login(ident.user, ident.token, DATABASE)
        assert victim.query("SELECT 1")[1].status == "I"  # the victim's session, untouched
