"""Errors the gateway reports to clients as PostgreSQL ErrorResponses."""

from __future__ import annotations


class GatewayError(Exception):
    """A refusal or failure the client must see, with its SQLSTATE.

    The message is what the client reads, so it starts with `pgguard:` and
    never carries anything the client should not learn (credentials, other
    sessions, the upstream's internals).
    """

    def __init__(self, sqlstate: str, message: str, *, severity: str = "ERROR", hint: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message if message.startswith("pgguard:") else f"pgguard: {message}"
        self.severity = severity
        self.hint = hint


def fatal(sqlstate: str, message: str, hint: str | None = None) -> GatewayError:
    return GatewayError(sqlstate, message, severity="FATAL", hint=hint)
