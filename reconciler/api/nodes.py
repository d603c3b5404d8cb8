"""Agent endpoints: register, desired state (ETag long-poll), status reports."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.auth import hash_token, new_token, require_node, require_secret
from reconciler.api.body import read_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.logs import log_event
from reconciler.store.base import AuditEvent, NodeRecord, ReportRecord

NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
JSON_TYPE = "application/json"


def _node(request: Request) -> str:
    node = str(request.path_params["node"])
    if not NODE_NAME.match(node):
        raise ApiError(404, f"{node!r} is not a valid node name (lowercase DNS-like name)")
    return node


def _wait(request: Request, cap: float) -> float:
    raw = request.query_params.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"wait={raw!r}: expected a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ApiError(400, f"wait={raw!r}: expected a number of seconds >= 0")
    return min(value, cap)


def _matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


async def accept_report(ctx: ApiContext, node: str, report: dict[str, Any]) -> bytes:
    """Take a valid status report of ``node``; the answer's body.

    A repeat only moves lastSeen in memory; a change is durable before this returns and
    wakes the loop. Shared by the route and the plain-ASGI fast path (``fastpath``).
    """
    news = await ctx.reports.submit(ReportRecord(node, report, ctx.clock()))
    ctx.metrics.reports.inc()
    if news:
        ctx.wake()
    return json.dumps({"node": node, "generation": ctx.hub.get(node).generation}).encode()


def _same_node(body: Mapping[str, Any], node: str) -> None:
    if body["node"] != node:
        raise ApiError(422, f"body names node {body['node']!r} but the URL names {node!r}")


async def _record_registration(
    ctx: ApiContext,
    node: str,
    facts: Mapping[str, Any],
    token_hash: str,
    now: float,
    rotated: bool,
) -> None:
    """The node record with its new token hash, and the audit record: durable before the
    token is handed out; registrations arriving together share one transaction."""
    event = AuditEvent(
        time=now,
        kind="registered",
        node=node,
        message=f"node {node} " + ("re-registered (token rotated)" if rotated else "registered"),
        details={"platform": facts["platform"], "agentVersion": facts["agentVersion"]},
    )
    await ctx.registrations.submit((NodeRecord(node, facts, token_hash, now), event))
    log_event(event)


def node_routes(ctx: ApiContext) -> list[Route]:
    async def register(request: Request) -> Response:
        node = _node(request)
        require_secret(request, ctx.settings.bootstrap_token, "bootstrap")
        facts = await read_json(request, "register", ctx.settings.max_body_bytes)
        _same_node(facts, node)
        token = new_token()
        token_hash = hash_token(token)
        rotated = node in ctx.tokens
        now = ctx.clock()
        await _record_registration(ctx, node, facts, token_hash, now, rotated)
        ctx.tokens.set(node, token_hash)
        ctx.metrics.registrations.inc()
        ctx.registered()
        ctx.wake()
        return Response(
            json.dumps({"node": node, "token": token}).encode(),
            media_type=JSON_TYPE,
            headers={"Cache-Control": "no-store"},
        )

    async def desired(request: Request) -> Response:
        node = _node(request)
        require_node(request, ctx.tokens, node)
        wait = _wait(request, ctx.settings.max_wait)
        inm = request.headers.get("if-none-match")
        entry = ctx.hub.get(node)
        if wait > 0 and _matches(inm, entry.etag):
            entry = await ctx.hub.wait_change(node, entry.etag, wait)
        if _matches(inm, entry.etag):
            ctx.metrics.poll_304.inc()
            return Response(status_code=304, headers={"ETag": entry.etag})
        ctx.metrics.poll_200.inc()
        return Response(entry.body, media_type=JSON_TYPE, headers={"ETag": entry.etag})

    async def status(request: Request) -> Response:
        node = _node(request)
        require_node(request, ctx.tokens, node)
        report = await read_json(request, "status-report", ctx.settings.max_body_bytes)
        _same_node(report, node)
        return Response(await accept_report(ctx, node, report), media_type=JSON_TYPE)

    return [
        Route("/v1/nodes/{node}/register", register, methods=["POST"]),
        Route("/v1/nodes/{node}/desired", desired, methods=["GET"]),
        Route("/v1/nodes/{node}/status", status, methods=["POST"]),
    ]
