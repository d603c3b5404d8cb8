"""The ASGI application: routes, error handlers, system endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from reconciler.api.admin import admin_routes
from reconciler.api.context import ApiContext
from reconciler.api.controls import control_routes
from reconciler.api.errors import (
    ApiError,
    error_response,
    on_api_error,
    on_http_error,
    on_unexpected,
)
from reconciler.api.fastpath import fast_paths
from reconciler.api.gauges import read_gauges
from reconciler.api.metrics import CONTENT_TYPE
from reconciler.api.nodes import node_routes
from reconciler.api.openapi import openapi_document
from reconciler.api.tokens import token_routes
from reconciler.api.webhooks import webhook_routes

JSON_TYPE = "application/json"
# /metrics waits this long for the fleet gauges (the store); fleetkeeper_leader and the
# counters answer even when the database does not
STATUS_TIMEOUT = 3.0

log = logging.getLogger(__name__)


def system_routes(ctx: ApiContext) -> list[Route]:
    openapi_body = json.dumps(openapi_document()).encode()

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type=JSON_TYPE)

    async def readyz(request: Request) -> Response:
        try:
            await asyncio.to_thread(ctx.store.ping)
        except Exception as exc:  # any failure of the database means "not ready"
            return error_response(503, "unavailable", f"store unreachable: {exc}")
        if not ctx.ready():
            return error_response(503, "unavailable", "the first reconcile pass has not finished")
        return Response(b'{"status":"ready"}', media_type=JSON_TYPE)

    async def metrics(request: Request) -> Response:
        try:
            gauges = await asyncio.wait_for(asyncio.to_thread(read_gauges, ctx), STATUS_TIMEOUT)
            ctx.metrics.observe_gauges(gauges)
        except Exception as exc:  # the database is away: the other metrics still answer
            log.warning("metrics without the fleet gauges: %s", str(exc) or type(exc).__name__)
        return Response(await asyncio.to_thread(ctx.metrics.render), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type=JSON_TYPE)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def create_app(ctx: ApiContext, extra_routes: Sequence[BaseRoute] = ()) -> ASGIApp:
    """The API over ``ctx``; ``extra_routes`` (the dashboard) are mounted after ours; the
    hot paths in front (``fast_paths``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.hub.bind(asyncio.get_running_loop())
        yield
        ctx.hub.close()

    routes: list[BaseRoute] = [
        *node_routes(ctx),
        *admin_routes(ctx),
        *token_routes(ctx),
        *control_routes(ctx),
        *webhook_routes(ctx),
        *system_routes(ctx),
        *extra_routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
    )
    app.state.ctx = ctx
    return fast_paths(app, ctx)
