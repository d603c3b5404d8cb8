"""Agent endpoints: register, desired state (ETag long-poll), status reports."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fleetkeeper_common.signing import ENVELOPE_TYPE
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


def _same_node(body: Mapping[str, Any], node: str) -> None:
    if body["node"] != node:
        raise ApiError(422, f"body names node {body['node']!r} but the URL names {node!r}")


def _record_registration(
    ctx: ApiContext,
    node: str,
    facts: Mapping[str, Any],
    token_hash: str,
    now: float,
    rotated: bool,
) -> None:
    """The node record with its new token hash, and the audit record (blocking)."""
    ctx.store.upsert_node(NodeRecord(node, facts, token_hash, now))
    event = AuditEvent(
        time=now,
        kind="registered",
        node=node,
        message=f"node {node} " + ("re-registered (token rotated)" if rotated else "registered"),
        details={"platform": facts["platform"], "agentVersion": facts["agentVersion"]},
    )
    ctx.store.append_audit(event)
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
        await asyncio.to_thread(_record_registration, ctx, node, facts, token_hash, now, rotated)
        ctx.tokens.set(node, token_hash)
        ctx.metrics.registrations.inc()
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
            with ctx.metrics.long_polls.track_inprogress():
                entry = await ctx.hub.wait_change(node, entry.etag, wait)
        if _matches(inm, entry.etag):
            ctx.metrics.poll_304.inc()
            return Response(status_code=304, headers={"ETag": entry.etag})
        ctx.metrics.poll_200.inc()
        if entry.signed is not None and ENVELOPE_TYPE in request.headers.get("accept", ""):
            return Response(
                entry.signed.body, media_type=ENVELOPE_TYPE, headers={"ETag": entry.etag}
            )
        return Response(entry.body, media_type=JSON_TYPE, headers={"ETag": entry.etag})

    async def signing_key(request: Request) -> Response:
        """The public key agents pin (``trustedKeys``): one OpenSSH line, with its keyid."""
        signer = ctx.hub.signer
        if signer is None:
            return Response(b"this reconciler does not sign\n", status_code=404)
        text = f"{signer.public_line} fleetkeeper-reconciler {signer.keyid}\n"
        return Response(text.encode(), media_type="text/plain")

    async def status(request: Request) -> Response:
        try:
            node = _node(request)
            require_node(request, ctx.tokens, node)
            report = await read_json(request, "status-report", ctx.settings.max_body_bytes)
            _same_node(report, node)
        except ApiError:
            ctx.metrics.reports_rejected.inc()
            raise
        now = ctx.clock()
        await asyncio.to_thread(ctx.store.put_report, ReportRecord(node, report, now))
        ctx.metrics.reports_accepted.inc()
        if ctx.report_is_news(node, report, now):
            ctx.wake()
        entry = ctx.hub.get(node)
        return Response(
            json.dumps({"node": node, "generation": entry.generation}).encode(),
            media_type=JSON_TYPE,
        )

    return [
        Route("/v1/nodes/{node}/register", register, methods=["POST"]),
        Route("/v1/nodes/{node}/desired", desired, methods=["GET"]),
        Route("/v1/nodes/{node}/status", status, methods=["POST"]),
        Route("/v1/signing-key", signing_key, methods=["GET"]),
    ]
