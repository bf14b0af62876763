"""The admin HTTP API, an ASGI app served by hypercorn on trio."""

from __future__ import annotations

from collections.abc import Sequence

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pgguard.admin import approvals_page
from pgguard.admin.approvals_api import approval_routes
from pgguard.config import Listen
from pgguard.relay.server import Gateway


def build_app(gateway: Gateway) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready", "connections": gateway.connections,
                             "sessions": len(gateway.sessions)})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(gateway.tokens.jwks())

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/.well-known/jwks.json", jwks),
        *approval_routes(gateway.approvals),
        *approvals_page.ROUTES,
    ])


async def serve_admin(gateway: Gateway, listen: Listen, *,
                      task_status: trio.TaskStatus[Sequence[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the admin API; reports the bound URLs once listening."""
    config = HypercornConfig()
    config.bind = [str(listen)]
    config.accesslog = None
    config.errorlog = None
    await serve(build_app(gateway), config, task_status=task_status)  # type: ignore[arg-type]
