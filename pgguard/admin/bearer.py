"""Who calls an admin endpoint: a bearer token the gateway accepts for login, of a member of given groups.

The token travels in a header, never a cookie, so another site cannot make
a browser send it (no CSRF), and no CORS headers are ever sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.requests import Request
from starlette.responses import JSONResponse

from pgguard.identity import Identity, TokenError
from pgguard.identity.verifier import Verifier


class Refused(Exception):
    """The caller may not use the endpoint; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": self.message}, self.status, headers=headers)


async def caller(request: Request, verifier: Verifier, groups: Sequence[str], which: str) -> Identity:
    """The identity of the request's bearer token; Refused (401 without a valid token, 403 outside `groups`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "send a token as Authorization: Bearer <token>")
    try:
        identity = await verifier.verify(token.strip())
    except TokenError as exc:
        raise Refused(401, f"token refused: {exc}") from exc
    if not set(identity.groups) & set(groups):
        raise Refused(403, f"{identity.username} is not in {which} ({', '.join(groups) or 'none configured'})")
    return identity
