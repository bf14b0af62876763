"""Failed logins per client address, over a sliding window.

Once an address has failed `limit` times within `window` seconds, its new
connections are refused as they are accepted -- before TLS, before a token
is read -- until the oldest of those failures leaves the window. Guessing and
flooding then cost the gateway one accept and one small write per
connection, and other addresses never notice. IPv6 clients are counted per
/64, the smallest block one host is usually given; the Unix socket counts
as one address.
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable

# Above this many tracked addresses, those with no failure left in the window are forgotten.
_PRUNE_ABOVE = 4096


def address_key(host: str) -> str:
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host  # the Unix socket, or an unknown peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginThrottle:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._prune_at = _PRUNE_ABOVE

    def failed(self, host: str) -> bool:
        """Count a failed login; True when it is the one that closes the address's door."""
        if self.limit == 0:
            return False
        was_open = self.retry_after(host) is None
        self._failures.setdefault(address_key(host), deque(maxlen=self.limit)).append(self._clock())
        if len(self._failures) > self._prune_at:
            self._prune()
        return was_open and self.retry_after(host) is not None

    def retry_after(self, host: str) -> float | None:
        """Seconds until `host` may try again, or None when it may now."""
        failures = self._failures.get(address_key(host))
        if failures is None or len(failures) < self.limit:
            return None
        wait = failures[0] + self.window - self._clock()
        return wait if wait > 0 else None

    def _prune(self) -> None:
        horizon = self._clock() - self.window
        self._failures = {key: times for key, times in self._failures.items() if times[-1] > horizon}
        self._prune_at = max(_PRUNE_ABOVE, 2 * len(self._failures))
