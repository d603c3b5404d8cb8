"""Admin endpoints (admin token): fleet status, releases, the audit log."""

from __future__ import annotations

import asyncio
import json
import math

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.auth import require_secret
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.spec import JSON
from reconciler.views.fleet_status import gauges_of
from reconciler.views.readmodel import read_fleet_status

MAX_AUDIT_LIMIT = 10000


def _json(doc: object) -> Response:
    return Response(json.dumps(doc).encode(), media_type="application/json")


def fleet_status(ctx: ApiContext) -> dict[str, JSON]:
    """The fleet-status document for the API's context (blocking: run in a thread);
    reports (lastSeen) come from the report book, as the loop's do."""
    doc = read_fleet_status(
        ctx.store, ctx.spec(), ctx.clock(), ctx.settings.heartbeat_ttl, ctx.reports.records()
    )
    replicas = ctx.replicas()
    if replicas is not None:
        doc["replicas"] = list[JSON](replicas)
    return doc


def _number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name}={raw!r}: expected a number") from None
    if not math.isfinite(value):
        raise ApiError(400, f"{name}={raw!r}: expected a finite number")
    return value


def admin_routes(ctx: ApiContext) -> list[Route]:
    def admin(request: Request) -> None:
        require_secret(request, ctx.settings.admin_token, "admin")

    async def fleet(request: Request) -> Response:
        admin(request)
        doc = await asyncio.to_thread(fleet_status, ctx)
        ctx.metrics.observe_gauges(gauges_of(doc))
        return _json(doc)

    async def releases(request: Request) -> Response:
        admin(request)
        doc = await asyncio.to_thread(fleet_status, ctx)
        return _json({"releases": doc["releases"]})

    async def audit(request: Request) -> Response:
        admin(request)
        since = _number(request, "since")
        limit_value = _number(request, "limit")
        limit = 1000 if limit_value is None else int(limit_value)
        if limit_value is not None and (limit != limit_value or not 1 <= limit <= MAX_AUDIT_LIMIT):
            raise ApiError(400, f"limit: expected an integer from 1 to {MAX_AUDIT_LIMIT}")
        events = await asyncio.to_thread(ctx.store.audit, since, limit)
        return _json(
            {
                "events": [
                    {
                        "id": e.id,
                        "time": e.time,
                        "kind": e.kind,
                        "message": e.message,
                        "revision": e.revision,
                        "release": e.release,
                        "node": e.node,
                        "details": dict(e.details),
                    }
                    for e in events
                ]
            }
        )

    return [
        Route("/v1/fleet", fleet, methods=["GET"]),
        Route("/v1/releases", releases, methods=["GET"]),
        Route("/v1/audit", audit, methods=["GET"]),
    ]
