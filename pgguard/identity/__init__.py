"""Who is asking: tokens in, an Identity out, and the roles it maps to."""

from __future__ import annotations

from dataclasses import dataclass


class TokenError(Exception):
    """The token is not acceptable; the message is safe to show the client."""


@dataclass(frozen=True)
class Identity:
    """A verified caller, as policy and the session log see it."""

    # The [[identity.providers]] name, or "pgguard" for the gateway's own tokens.
    provider: str
    issuer: str
    subject: str
    username: str
    groups: tuple[str, ...]
    jti: str | None
    issued_at: float
    expires_at: float
    # exp plus the issuer's leeway: the instant the gateway stops accepting
    # the token, and so when the session it opened ends (plus expiry_grace).
    valid_until: float
    # A service-account token may be restricted to one target.
    target: str | None = None
    # Names of the [roles.*] the groups map to, filled in at login.
    roles: tuple[str, ...] = ()
