"""Running a gateway and its admin listener until a signal says stop.

SIGHUP reloads the configuration (pgguard/reload.py). SIGTERM and SIGINT
shut down gracefully: no new connections, running statements get
[gateway] shutdown_grace seconds, then every session ends with FATAL 57P01
and its session log closed. A second SIGTERM or SIGINT stops at once.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import trio

from pgguard.admin.app import serve_admin
from pgguard.config import Config, ConfigError
from pgguard.logging_json import setup_logging as _setup_logging
from pgguard.relay.server import Gateway

log = logging.getLogger("pgguard")


@dataclass(frozen=True)
class Bound:
    """Where a running gateway actually listens (ports chosen by the OS included)."""

    host: str
    port: int
    admin_url: str | None


def setup_logging(level: int = logging.INFO, json_lines: bool = False) -> None:
    _setup_logging(json_lines, level)


async def run_gateway(config: Config, on_ready: Callable[[Bound], Awaitable[None]] | None = None) -> None:
    """Serve until SIGINT or SIGTERM; `on_ready` runs once every listener is bound."""
    gateway = Gateway(config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
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
                if signum == signal.SIGHUP:
                    log.info("received SIGHUP, reloading %s", gateway.config.path)
                    try:
                        await gateway.reload()
                    except ConfigError:
                        pass  # logged by the gateway, which keeps its configuration
                    continue
                log.info("received %s, stopping", signal.Signals(signum).name)
                with trio.CancelScope() as shutting_down:
                    nursery.start_soon(_stop_at_second_signal, signals, shutting_down)
                    await gateway.shutdown(gateway.config.gateway.shutdown_grace)
                nursery.cancel_scope.cancel()
                break


async def _stop_at_second_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        if signum != signal.SIGHUP:
            log.warning("received %s again, stopping now", signal.Signals(signum).name)
            scope.cancel()
            return
