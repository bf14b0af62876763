"""The admin HTTP API, an ASGI app served by hypercorn on trio."""

from __future__ import annotations

from collections.abc import Sequence

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from pgguard.admin import approvals_page
from pgguard.admin.approvals_api import approval_routes
from pgguard.admin.bearer import Refused, caller
from pgguard.config import ConfigError, Listen
from pgguard.relay.server import Gateway

# How long /readyz waits for a target to accept a TCP connection.
READY_TIMEOUT = 2.0


async def _reachable(host: str, port: int) -> str | None:
    """None when the target accepts a TCP connection, else why not."""
    try:
        with trio.fail_after(READY_TIMEOUT):
            stream = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        return str(exc) or type(exc).__name__
    await stream.aclose()
    return None


def build_app(gateway: Gateway) -> Starlette:
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        problems: dict[str, str] = {}
        if not gateway.listening:
            problems["gateway"] = "shutting down" if gateway.stopping else "not listening yet"
        for name, target in gateway.config.targets.items():
            problem = await _reachable(target.host, target.port)
            if problem is not None:
                problems[f"target {name}"] = f"{target.host}:{target.port} unreachable: {problem}"
        body = {"status": "not ready" if problems else "ready", "connections": gateway.connections,
                "sessions": len(gateway.sessions), "problems": problems}
        return JSONResponse(body, status_code=503 if problems else 200)

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(gateway.render_metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def reload(request: Request) -> JSONResponse:
        try:
            operator = await caller(request, gateway.verifier, gateway.config.gateway.admin_groups,
                                    "[gateway] admin_groups")
        except Refused as exc:
            return exc.response()
        try:
            reloaded = await gateway.reload()
        except ConfigError as exc:
            return JSONResponse({"status": "refused", "error": str(exc)}, status_code=422)
        return JSONResponse({"status": "reloaded", "by": operator.username, "roles": list(reloaded.config.roles),
                             "ignored_until_restart": list(reloaded.ignored)})

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse(gateway.tokens.jwks())

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/reload", reload, methods=["POST"]),
        Route("/.well-known/jwks.json", jwks),
        *approval_routes(gateway.approvals, gateway.verifier),
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
