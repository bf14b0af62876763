"""Cancel keys: the client holds the gateway's, never the upstream's.

Each session gets its own (process id, secret) pair. A CancelRequest naming a
live pair with the right secret is forwarded to that session's upstream
backend with the upstream's key; anything else is ignored, as PostgreSQL does.
"""

from __future__ import annotations

import hmac
import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CancelTarget:
    secret_key: int
    # Sends the CancelRequest upstream; bound to the session's target and key.
    forward: Callable[[], Awaitable[None]]


class CancelRegistry:
    def __init__(self) -> None:
        self._sessions: dict[int, CancelTarget] = {}
        # Start from a random point so ids say nothing about uptime or load.
        self._ids = itertools.count(secrets.randbelow(1 << 30) + 1)

    def register(self, forward: Callable[[], Awaitable[None]]) -> tuple[int, int]:
        process_id = next(self._ids) & 0x7FFFFFFF
        secret_key = secrets.randbits(31)
        self._sessions[process_id] = CancelTarget(secret_key, forward)
        return process_id, secret_key

    def unregister(self, process_id: int) -> None:
        self._sessions.pop(process_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    async def cancel(self, process_id: int, secret_key: int) -> bool:
        entry = self._sessions.get(process_id)
        if entry is None or not hmac.compare_digest(
            entry.secret_key.to_bytes(4, "big"), (secret_key & 0xFFFFFFFF).to_bytes(4, "big")
        ):
            return False
        await entry.forward()
        return True
