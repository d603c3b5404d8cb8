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
from reconciler.api.admission import Admitted, Presented, Refused, admit
from reconciler.api.auth import bearer, hash_token, new_token, require_node, same_secret
from reconciler.api.body import read_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.logs import log_event
from reconciler.plan.admission import claims_of
from reconciler.spec import JSON
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
    ctx.metrics.reports_accepted.inc()
    if news:
        ctx.wake()
    return json.dumps({"node": node, "generation": ctx.hub.get(node).generation}).encode()


def _same_node(body: Mapping[str, Any], node: str) -> None:
    if body["node"] != node:
        raise ApiError(422, f"body names node {body['node']!r} but the URL names {node!r}")


def _address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


async def _presented(ctx: ApiContext, node: str, token: str) -> Presented:
    """Which credential ``token`` is for registering ``node``; 401/403 when none."""
    check = ctx.tokens.check(node, token)
    if check == "ok":
        return Presented("node-credential")
    if check == "other-node":
        raise ApiError(403, f"this is another node's credential, not {node!r}'s")
    if same_secret(token, ctx.settings.bootstrap_token):
        return Presented("bootstrap")
    join = await asyncio.to_thread(ctx.store.join_token_by_hash, hash_token(token))
    if join is not None:
        return Presented("join-token", join)
    raise ApiError(
        401,
        "unknown token: register with a join token (`fleetkeeper token create`), "
        "the bootstrap token, or the node's own credential",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _refused(
    ctx: ApiContext,
    node: str,
    presented: Presented,
    verdict: Refused,
    address: str | None,
    now: float,
) -> None:
    """Audit a refused registration (blocking); the existing node is left as it was."""
    event = AuditEvent(
        time=now,
        kind="registration-refused",
        node=node,
        message=f"registration of node {node} with {presented.label} from "
        f"{address or 'an unknown address'} refused: {verdict.message}",
        details={"reason": verdict.reason, "credential": presented.label, "address": address},
    )
    ctx.store.append_audit(event)
    log_event(event)


def _admit_and_store(
    ctx: ApiContext,
    node: str,
    facts: dict[str, JSON],
    presented: Presented,
    token: str,
    new: str,
    address: str | None,
) -> Admitted | Refused:
    """Judge the registration (``admit``), then store it with ``claim_node`` (which refuses
    if the name or the token changed meanwhile); audit either way. Blocking."""
    now = ctx.clock()
    spec = ctx.spec()
    existing = ctx.store.node(node)
    if presented.kind == "node-credential" and (
        existing is None or existing.token_hash != hash_token(token)
    ):
        # reset or rotated between the cache check and now
        return Refused(401, "stale-credential", f"unknown token for node {node!r}")
    verdict = admit(
        node,
        claims_of(facts),
        presented,
        existing,
        spec.nodes.get(node) if spec is not None else None,
        spec is not None,
        now,
    )
    if isinstance(verdict, Refused):
        _refused(ctx, node, presented, verdict, address, now)
        return verdict
    record = NodeRecord(node, facts, hash_token(new), now, verdict.admission)
    lost = ctx.store.claim_node(record, replaces=verdict.replaces, join_token=verdict.join_token)
    if lost is not None:  # another registration won the race, or the token ran out
        refusal = (
            Refused(409, "name-taken", f"node {node!r} was registered meanwhile")
            if lost == "taken"
            else Refused(401, "token-spent", f"{presented.label} is no longer active")
        )
        _refused(ctx, node, presented, refusal, address, now)
        return refusal
    how = (
        "re-registered with its node credential (credential rotated)"
        if verdict.replaces is not None
        else f"registered with {presented.label}"
    )
    event = AuditEvent(
        time=now,
        kind="registered",
        node=node,
        message=f"node {node} {how}",
        details={
            "platform": facts["platform"],
            "agentVersion": facts["agentVersion"],
            "credential": presented.label,
            "address": address,
            "admission": verdict.admission,
        },
    )
    ctx.store.append_audit(event)
    log_event(event)
    return verdict


def node_routes(ctx: ApiContext) -> list[Route]:
    async def register(request: Request) -> Response:
        node = _node(request)
        token = bearer(request)
        presented = await _presented(ctx, node, token)
        facts = await read_json(request, "register", ctx.settings.max_body_bytes)
        _same_node(facts, node)
        new = new_token()
        verdict = await asyncio.to_thread(
            _admit_and_store, ctx, node, facts, presented, token, new, _address(request)
        )
        if isinstance(verdict, Refused):
            raise ApiError(verdict.status, verdict.message)
        ctx.tokens.set(node, hash_token(new))
        ctx.metrics.registrations.inc()
        ctx.registered()
        ctx.wake()
        return Response(
            json.dumps({"node": node, "token": new}).encode(),
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
        return Response(await accept_report(ctx, node, report), media_type=JSON_TYPE)

    return [
        Route("/v1/nodes/{node}/register", register, methods=["POST"]),
        Route("/v1/nodes/{node}/desired", desired, methods=["GET"]),
        Route("/v1/nodes/{node}/status", status, methods=["POST"]),
        Route("/v1/signing-key", signing_key, methods=["GET"]),
    ]
