"""ScramClient against the RFC 7677 SCRAM-SHA-256 example, adapted to PostgreSQL.

PostgreSQL's client-first-message carries an empty user name ("n=", the
startup packet names the user), so the AuthMessage, the proof and the server
signature differ from the RFC's. `reference_proof` is RFC 5802 written out
step by step; it reproduces the RFC's own numbers for "n=user", and then
gives the expected values for "n=" (also kept as literals below).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from pgguard.wire.scram import ScramClient, ScramError

PASSWORD = "pencil"
CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
SERVER_FIRST = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
FINAL_WITHOUT_PROOF = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
# RFC 7677 section 3, for client-first-bare "n=user,r=...".
RFC_PROOF = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_SIGNATURE = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
# The same exchange with PostgreSQL's "n=,r=...".
PG_PROOF = "qvT2SWdEH5Q06albL+hjSYuUhCG7VndFyzIb7CK4n9k="
PG_SERVER_SIGNATURE = "3HO6Qt1M4MKJrmlKaoOqLAI0/0TV0HZe7J9H3MBtSOg="


def reference_proof(client_first_bare: str) -> tuple[str, str]:
    """(ClientProof, ServerSignature), base64, computed as RFC 5802 section 3 defines them."""
    salted = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="), 4096)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    auth_message = f"{client_first_bare},{SERVER_FIRST},{FINAL_WITHOUT_PROOF}".encode()
    client_signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(k ^ s for k, s in zip(client_key, client_signature, strict=True))
    server_signature = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256")
    return base64.b64encode(proof).decode(), base64.b64encode(server_signature).decode()


def exchanged() -> ScramClient:
    """A client that has answered the example's server-first-message."""
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.client_first()
    client.client_final(SERVER_FIRST.encode())
    return client


def test_reference_reproduces_rfc_7677() -> None:
    assert reference_proof(f"n=user,r={CLIENT_NONCE}") == (RFC_PROOF, RFC_SERVER_SIGNATURE)
    assert reference_proof(f"n=,r={CLIENT_NONCE}") == (PG_PROOF, PG_SERVER_SIGNATURE)


def test_client_first_has_no_channel_binding_and_an_empty_user() -> None:
    assert ScramClient(PASSWORD, nonce=CLIENT_NONCE).client_first() == f"n,,n=,r={CLIENT_NONCE}".encode()


def test_client_final_carries_the_expected_proof() -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.client_first()
    assert client.client_final(SERVER_FIRST.encode()) == f"{FINAL_WITHOUT_PROOF},p={PG_PROOF}".encode()


def test_random_nonces_differ() -> None:
    first, second = ScramClient(PASSWORD).client_first(), ScramClient(PASSWORD).client_first()
    assert first != second and len(first) > len(b"n,,n=,r=") + 16


def test_the_right_server_signature_is_accepted() -> None:
    exchanged().verify_server_final(f"v={PG_SERVER_SIGNATURE}".encode())


@pytest.mark.parametrize("server_final", [
    pytest.param(f"v={RFC_SERVER_SIGNATURE}", id="signature-for-another-auth-message"),
    pytest.param("v=" + base64.b64encode(b"\0" * 32).decode(), id="zero-signature"),
    pytest.param("e=invalid-proof", id="server-error"),
    pytest.param("nonsense", id="malformed"),
    pytest.param("x=1", id="no-signature"),
    pytest.param(b"v=\xff\xfe", id="not-utf8"),
])
def test_a_wrong_server_final_raises(server_final: str | bytes) -> None:
    """Only ScramError: the upstream login turns it into a FATAL for the client; anything else is a crash."""
    data = server_final if isinstance(server_final, bytes) else server_final.encode()
    with pytest.raises(ScramError):
        exchanged().verify_server_final(data)


def test_server_final_before_client_final_raises() -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.client_first()
    with pytest.raises(ScramError):
        client.verify_server_final(f"v={PG_SERVER_SIGNATURE}".encode())


@pytest.mark.parametrize("server_first", [
    pytest.param("r=someoneElsesNonce,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", id="nonce-not-extending-ours"),
    pytest.param(f"r={CLIENT_NONCE}xyz,i=4096", id="no-salt"),
    pytest.param(f"r={CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=many", id="bad-iterations"),
    pytest.param("garbage", id="malformed"),
    pytest.param(f"r={CLIENT_NONCE}xyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0", id="zero-iterations"),
])
def test_an_invalid_server_first_raises(server_first: str) -> None:
    client = ScramClient(PASSWORD, nonce=CLIENT_NONCE)
    client.client_first()
    with pytest.raises(ScramError):
        client.client_final(server_first.encode())
