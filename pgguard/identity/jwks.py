"""An OIDC provider's signing keys: fetched from its JWKS, cached by kid.

Keys come from an https URL (http only on loopback) or from a file. They are
fetched when first needed, again when a token names a kid the cache does not
know (the provider rotated its keys) or once they are older than
`jwks_max_age` -- but never more than once per `jwks_min_refetch` seconds, so
tokens with made-up kids cannot turn the gateway into a flood against the
provider. A fetch that fails or times out is logged and leaves the cached keys
as they were; a login that needed a key the cache lacks is refused.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.request
from collections.abc import Callable
from http.client import HTTPException
from typing import IO, Any

import jwt
import trio

from pgguard import __version__
from pgguard.config import ASYMMETRIC_ALGORITHMS, ProviderConfig
from pgguard.identity.claims import PublicKey, VerifyingKey

log = logging.getLogger("pgguard.identity")

MAX_JWKS_SIZE = 1 << 20


def parse_jwks(data: bytes) -> tuple[dict[str, VerifyingKey], list[str]]:
    """The usable signing keys by kid, and why each other key was skipped."""
    document = json.loads(data)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS: no 'keys' list")
    keys: dict[str, VerifyingKey] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(document["keys"]):
        key = _verifying_key(jwk)
        if isinstance(key, str):
            skipped.append(f"key {index} skipped: {key}")
        else:
            keys[jwk["kid"]] = key
    return keys, skipped


def _verifying_key(jwk: Any) -> VerifyingKey | str:
    """A JWK as a key that may verify tokens, or why it may not."""
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
        return "no kid"
    if jwk.get("use", "sig") != "sig":
        return "not a signing key"
    if jwk.get("kty") == "oct" or "d" in jwk:
        return "a secret or private key, never used to verify"
    algorithm = jwk.get("alg")
    if algorithm is not None and algorithm not in ASYMMETRIC_ALGORITHMS:
        return f"algorithm {algorithm!r} is not accepted"
    try:
        key = jwt.PyJWK(jwk).key
    except jwt.PyJWTError as exc:
        return str(exc)
    if not isinstance(key, PublicKey):
        return "not a public key"
    return VerifyingKey(key, algorithm)


def _read_capped(stream: IO[bytes]) -> bytes:
    data = stream.read(MAX_JWKS_SIZE + 1)
    if len(data) > MAX_JWKS_SIZE:
        raise ValueError(f"JWKS larger than {MAX_JWKS_SIZE} bytes")
    return data


def fetcher(provider: ProviderConfig) -> Callable[[], bytes]:
    """A blocking read of the provider's JWKS (run in a worker thread)."""
    path, url = provider.jwks_file, provider.jwks_url
    if path is not None:
        def read_file() -> bytes:
            with path.open("rb") as stream:
                return _read_capped(stream)
        return read_file
    assert url is not None
    request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                   "User-Agent": f"pgguard/{__version__}"})

    def fetch_url() -> bytes:
        with urllib.request.urlopen(request, timeout=provider.jwks_timeout) as response:
            return _read_capped(response)
    return fetch_url


class JwksCache:
    """One provider's keys; `key()` fetches when the cache cannot answer."""

    def __init__(self, provider: ProviderConfig, fetch: Callable[[], bytes] | None = None) -> None:
        self.provider = provider
        self.source = provider.jwks_url or str(provider.jwks_file)
        self._fetch = fetch or fetcher(provider)
        self._keys: dict[str, VerifyingKey] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._finished = 0  # fetches done, whether they worked or not
        self._lock = trio.Lock()

    async def key(self, kid: str) -> VerifyingKey | None:
        if kid not in self._keys or trio.current_time() - self._fetched_at > self.provider.jwks_max_age:
            await self.refresh()
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetch the JWKS again, unless that was tried too recently or while this task waited."""
        finished = self._finished
        async with self._lock:
            now = trio.current_time()
            if self._finished != finished or now - self._attempted_at < self.provider.jwks_min_refetch:
                return
            self._attempted_at = now
            try:
                await self._fetch_keys()
            finally:
                self._finished += 1

    async def _fetch_keys(self) -> None:
        name = self.provider.name
        try:
            with trio.fail_after(self.provider.jwks_timeout):
                data = await trio.to_thread.run_sync(self._fetch, abandon_on_cancel=True)
            keys, skipped = parse_jwks(data)
        except (OSError, ValueError, HTTPException, trio.TooSlowError) as exc:
            log.warning("provider %s: cannot fetch its JWKS from %s: %s", name, self.source,
                        str(exc) or type(exc).__name__)
            return
        self._keys, self._fetched_at = keys, trio.current_time()
        log.info("provider %s: %d signing key(s) from %s: %s", name, len(keys), self.source,
                 ", ".join(sorted(keys)) or "none")
        for problem in skipped:
            log.warning("provider %s: JWKS %s", name, problem)
