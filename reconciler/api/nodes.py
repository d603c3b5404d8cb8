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

from fleetkeeper_common.signing import BATCH_TYPE, ENVELOPE_TYPE, accepted_form
from reconciler.api.admission import Presented, Refused, admit
from reconciler.api.auth import bearer, hash_token, new_token, require_node, same_secret
from reconciler.api.body import read_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.logs import log_event
from reconciler.plan.admission import claims_of
from reconciler.spec import JSON
from reconciler.store.base import AuditEvent, ClaimRefusal, NodeClaim, NodeRecord, ReportRecord

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
    digest = hash_token(token)
    join = ctx.join_tokens.get(digest)
    if join is None:
        join = await asyncio.to_thread(ctx.store.join_token_by_hash, digest)
        if join is not None:  # never an unknown token: one created later must be found
            ctx.join_tokens[digest] = join
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


def _judge(
    ctx: ApiContext,
    node: str,
    facts: dict[str, JSON],
    presented: Presented,
    token: str,
    new: str,
    address: str | None,
    existing: NodeRecord | None,
) -> NodeClaim | Refused:
    """Judge the registration (``admit``) from memory: no I/O, it runs on the event loop.

    The claim it returns is stored by ``claim_nodes``, which re-checks in its transaction
    everything that can change meanwhile: the name's credential (taken, reset, rotated)
    and the token's uses, expiry and revocation (``_refused_late``). That is what makes
    the in-memory inputs safe: the join token record cached by hash (``_presented``) and
    ``existing`` None for a name the token cache does not know (another replica may have
    registered it: the claim then answers 409 as the store lookup would have)."""
    now = ctx.clock()
    spec = ctx.spec()
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
        return verdict
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
    record = NodeRecord(node, facts, hash_token(new), now, verdict.admission)
    return NodeClaim(record, verdict.replaces, verdict.join_token, event)


def _refused_late(lost: ClaimRefusal, node: str, presented: Presented) -> Refused:
    """Why a claim judged admissible was refused when stored (a race, or the token ran out)."""
    if lost == "taken":
        return Refused(409, "name-taken", f"node {node!r} was registered meanwhile")
    return Refused(401, "token-spent", f"{presented.label} is no longer active")


def node_routes(ctx: ApiContext) -> list[Route]:
    async def register(request: Request) -> Response:
        node = _node(request)
        token = bearer(request)
        presented = await _presented(ctx, node, token)
        facts = await read_json(request, "register", ctx.settings.max_body_bytes)
        _same_node(facts, node)
        new = new_token()
        address = _address(request)
        existing = None
        if node in ctx.tokens or presented.kind == "node-credential":
            existing = await asyncio.to_thread(ctx.store.node, node)
        claim = _judge(ctx, node, facts, presented, token, new, address, existing)
        if isinstance(claim, Refused):
            at = ctx.clock()
            await asyncio.to_thread(_refused, ctx, node, presented, claim, address, at)
            raise ApiError(claim.status, claim.message)
        # the claim and its audit event in one transaction, shared with the registrations
        # that arrive meanwhile (group commit); durable before the answer
        lost = await ctx.registrations.submit(claim)
        if lost is not None:
            if lost == "token-spent" and presented.token is not None:
                # the cached record is out of date: the next attempt reads the store
                ctx.join_tokens.pop(presented.token.token_hash, None)
            refusal = _refused_late(lost, node, presented)
            at = claim.node.registered_at
            await asyncio.to_thread(_refused, ctx, node, presented, refusal, address, at)
            raise ApiError(refusal.status, refusal.message)
        log_event(claim.audit)
        ctx.tokens.set(node, claim.node.token_hash)
        ctx.metrics.registrations.inc()
        ctx.registered(claim.node)
        ctx.wake_after_registration()
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
        form = accepted_form(request.headers.get("accept", ""))
        if entry.signed is not None and form is not None:
            body = ctx.hub.envelope(node, entry, form)
            kind = BATCH_TYPE if form == "batch" else ENVELOPE_TYPE
            return Response(body, media_type=kind, headers={"ETag": entry.etag})
        body = ctx.hub.plain(node, entry)
        return Response(body, media_type=JSON_TYPE, headers={"ETag": entry.etag})

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
