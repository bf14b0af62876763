"""The approvals API: JSON over the admin listener, for `pgguard approvals` and the web page.

Every route wants `Authorization: Bearer <token>`: a token the gateway
accepts for login, of a member of an approver group (admin/bearer.py).

    GET  /api/approvals                     pending requests
    GET  /api/approvals/{id}                one request, pending or decided
    POST /api/approvals/{id}/approve        {"grant": "30m"} optional: time-boxed elevation
    POST /api/approvals/{id}/deny           {"reason": "..."} optional
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pgguard.admin.bearer import Refused, caller
from pgguard.approvals.service import ApprovalError, Approvals
from pgguard.config import parse_duration
from pgguard.identity import Identity
from pgguard.identity.verifier import Verifier

Handler = Callable[[Request, Identity], Awaitable[JSONResponse]]


def approval_routes(approvals: Approvals, verifier: Verifier) -> list[Route]:
    def authenticated(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                approver = await caller(request, verifier, approvals.config.approver_groups, "an approver group")
                return await handler(request, approver)
            except Refused as exc:
                return exc.response()
            except ApprovalError as exc:
                return JSONResponse({"error": exc.message}, exc.status)
        return endpoint

    async def body(request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise ApprovalError(400, f"the body is not JSON: {exc}") from exc
        if not isinstance(value, dict):
            raise ApprovalError(400, "the body must be a JSON object")
        return value

    async def pending(request: Request, approver: Identity) -> JSONResponse:
        requests = sorted(approvals.store.pending(), key=lambda item: item.created_at)
        return JSONResponse({"pending": [item.as_json() for item in requests], "approver": approver.username})

    async def show(request: Request, approver: Identity) -> JSONResponse:
        found = approvals.store.get(request.path_params["id"])
        if found is None:
            raise ApprovalError(404, f"no request {request.path_params['id']}")
        return JSONResponse(found.as_json())

    async def approve(request: Request, approver: Identity) -> JSONResponse:
        grant = (await body(request)).get("grant")
        seconds = None
        if grant is not None:
            try:
                seconds = parse_duration(str(grant))
            except ValueError as exc:
                raise ApprovalError(400, str(exc)) from exc
        return JSONResponse(approvals.approve(request.path_params["id"], approver, seconds).as_json())

    async def deny(request: Request, approver: Identity) -> JSONResponse:
        reason = (await body(request)).get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ApprovalError(400, "reason must be a string")
        return JSONResponse(approvals.deny(request.path_params["id"], approver, reason or None).as_json())

    return [
        Route("/api/approvals", authenticated(pending)),
        Route("/api/approvals/{id}", authenticated(show)),
        Route("/api/approvals/{id}/approve", authenticated(approve), methods=["POST"]),
        Route("/api/approvals/{id}/deny", authenticated(deny), methods=["POST"]),
    ]
