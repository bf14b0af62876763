"""Every issuer the gateway trusts, chosen by the token's own (unverified) `iss`.

A token is only ever checked against the keys and rules of the one issuer it
names: the gateway's own service-account issuer or one of the configured OIDC
providers. Verification is async because a provider's keys may have to be
fetched; everything else is plain computation on the event loop.
"""

from __future__ import annotations

import trio

from pgguard.config import IdentityConfig, ProviderConfig
from pgguard.identity import Identity, TokenError
from pgguard.identity.claims import IssuerRules, TrustedIssuer, peek
from pgguard.identity.jwks import JwksCache
from pgguard.identity.revocation import RevocationList
from pgguard.identity.tokens import TokenService


def provider_rules(provider: ProviderConfig) -> IssuerRules:
    return IssuerRules(provider.name, provider.issuer, provider.audience, provider.username_claim,
                       provider.groups_claim, provider.algorithms, provider.leeway)


class Verifier:
    def __init__(self, config: IdentityConfig, tokens: TokenService,
                 revocations: RevocationList | None = None) -> None:
        self.caches = [JwksCache(provider) for provider in config.providers]
        issuers = [tokens.trusted(), *(TrustedIssuer(provider_rules(cache.provider), cache) for cache in self.caches)]
        self._issuers = {issuer.rules.issuer: issuer for issuer in issuers}
        # Replaced by the gateway whenever the revocation file changes.
        self.revocations = revocations or RevocationList()

    async def verify(self, token: str) -> Identity:
        header, claims = peek(token)
        issuer = claims.get("iss")
        if issuer is None:
            raise TokenError("token lacks the 'iss' claim")
        trusted = self._issuers.get(issuer) if isinstance(issuer, str) else None
        if trusted is None:
            raise TokenError("token is from an untrusted issuer")
        identity = await trusted.verify(token, header)
        # No checkpoint from here until the caller registers its session, so a
        # revocation either refuses this login or finds the session to end.
        if self.revocations.match(identity) is not None:
            raise TokenError("token revoked")
        return identity

    async def prefetch(self) -> None:
        """Fetch every provider's keys once at start, so that problems show in the log early."""
        async with trio.open_nursery() as nursery:
            for cache in self.caches:
                nursery.start_soon(cache.refresh)
