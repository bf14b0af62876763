"""The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL uses it.

A pure state machine: the caller moves the three messages over whatever
transport it has. Channel binding is not used ("n" in the GS2 header), which
PostgreSQL accepts whether or not it offers SCRAM-SHA-256-PLUS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MECHANISM = "SCRAM-SHA-256"
# PBKDF2 at this count takes about half a second; a server asking for more is
# refused rather than allowed to burn the gateway's CPU.
MAX_ITERATIONS = 1 << 20


class ScramError(Exception):
    """The server's SCRAM messages are malformed or it failed to prove itself."""


def _attributes(message: bytes) -> dict[str, str]:
    try:
        return dict(part.split("=", 1) for part in message.decode().split(","))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScramError(f"malformed SCRAM message {message[:100]!r}") from exc


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


class ScramClient:
    def __init__(self, password: str, nonce: str | None = None) -> None:
        # PostgreSQL sends an empty user name in SCRAM; the startup user counts.
        self._password = password.encode()
        self._nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self._first_bare = f"n=,r={self._nonce}"
        self._server_signature: bytes | None = None

    def client_first(self) -> bytes:
        return f"n,,{self._first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = _attributes(server_first)
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s"), attrs.get("i", "")
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce) or salt is None \
                or not iterations.isdigit():
            raise ScramError("server-first-message is invalid")
        if not 0 < int(iterations) <= MAX_ITERATIONS:
            raise ScramError(f"server asks for {iterations} iterations (allowed 1 to {MAX_ITERATIONS})")
        try:
            salt_bytes = base64.b64decode(salt, validate=True)
        except ValueError as exc:
            raise ScramError("server-first-message has an invalid salt") from exc
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt_bytes, int(iterations))
        client_key = _hmac(salted, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_server_final(self, server_final: bytes) -> None:
        attrs = _attributes(server_final)
        if "e" in attrs:
            raise ScramError(f"server reported SCRAM error {attrs['e']}")
        expected = self._server_signature
        try:
            signature = base64.b64decode(attrs.get("v", ""), validate=True)
        except ValueError as exc:
            raise ScramError("server-final-message has an invalid signature") from exc
        if expected is None or not hmac.compare_digest(signature, expected):
            raise ScramError("server signature does not match: not the server we expected")
