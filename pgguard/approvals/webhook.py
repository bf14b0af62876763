"""Telling people about requests and decisions: a JSON POST per event, off the hot path.

Events go into a bounded queue that a task of the gateway's nursery drains,
posting each in a worker thread (the standard library's HTTP client; one
event at a time, so a slow receiver delays only later events, never a
session). A full queue or a failed POST is logged and dropped. The body has
a Slack-compatible `text`, plus the request as the API shows it.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

import trio

log = logging.getLogger("pgguard.approvals")

_QUEUE = 1000
_TIMEOUT = 10.0


def _post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pgguard"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310 (configured http(s) URL)
        return response.status


class Webhook:
    def __init__(self, url: str | None) -> None:
        self.url = url
        self._send, self._receive = trio.open_memory_channel[dict[str, Any]](_QUEUE)

    def send(self, payload: dict[str, Any]) -> None:
        if self.url is None:
            return
        try:
            self._send.send_nowait(payload)
        except trio.WouldBlock:
            log.warning("approvals webhook: %d events queued already; dropped: %s", _QUEUE, payload["text"])

    async def run(self) -> None:
        # Runs with no URL too: a reload may set one.
        async for payload in self._receive:
            url = self.url
            if url is None:
                continue
            body = json.dumps(payload).encode()
            try:
                await trio.to_thread.run_sync(_post, url, body, abandon_on_cancel=True)
            except Exception as exc:  # any failure of the receiver is only logged
                log.warning("approvals webhook: POST to %s failed: %s", url, exc)
