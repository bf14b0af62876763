"""Running a gateway and its admin listener until a signal says stop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from pgguard.admin.app import serve_admin
from pgguard.config import Config
from pgguard.relay.server import Gateway


@dataclass(frozen=True)
class Bound:
    """Where a running gateway actually listens (ports chosen by the OS included)."""

    host: str
    port: int
    admin_url: str | None


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


async def run_gateway(config: Config, on_ready: Callable[[Bound], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `on_ready` runs once every listener is bound."""
    gateway = Gateway(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(gateway.serve)
            host, port = listeners[0].socket.getsockname()[:2]
            admin_url = None
            if config.gateway.admin_listen is not None:
                binds = await nursery.start(serve_admin, gateway, config.gateway.admin_listen)
                admin_url = binds[0]
                gateway.approvals.admin_url = gateway.approvals.admin_url or admin_url
            if on_ready is not None:
                await on_ready(Bound(host, port, admin_url))
            async for signum in signals:
                logging.getLogger("pgguard").info("received %s, stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
