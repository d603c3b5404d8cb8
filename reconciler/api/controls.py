"""Rollout controls (admin token): ``POST /v1/rollouts/{name}/{action}``.

pause | resume | retry | promote | skip-node act on the current rollout of the agent or
model ``name``. Each is stored as a control record together with its audit event (who,
from where, why) in one transaction; the planner folds the records into the rollout on
its next pass (``reconciler.plan.controls``), so a control steers a rollout of the
approved version and can never make another version desired.

A control that cannot do anything now (retry of a rollout that is not halted, resume of
one that is not paused) is refused with 409 and the reason, and nothing is recorded.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.auth import require_secret
from reconciler.api.body import read_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.logs import log_event
from reconciler.plan.controls import ACTIONS, Action, Control, pause_of
from reconciler.plan.select import latest_versions
from reconciler.plan.state import RolloutState, state_from_json
from reconciler.spec import JSON
from reconciler.store.base import AuditEvent

DONE: dict[Action, str] = {
    "pause": "paused",
    "resume": "resumed",
    "retry": "retried",
    "promote": "promoted",
    "skip-node": "skipped a node of",
}


@dataclass(frozen=True)
class ControlRequest:
    """One control as asked for, after the body was validated."""

    name: str
    action: Action
    reason: str
    by: str  # who, as the caller names them ("admin" when it does not say)
    address: str | None  # the caller's address
    node: str | None = None


def _current(ctx: ApiContext, name: str) -> RolloutState:
    """The rollout of ``name``'s approved version, or 404 saying which names exist."""
    spec = ctx.spec()
    live = set(latest_versions(spec)) if spec is not None else set()
    stored = ctx.store.rollouts()
    doc = stored.get(name)
    state = state_from_json(doc) if doc is not None and name in live else None
    if state is None:
        known = ", ".join(sorted(n for n in stored if n in live)) or "none yet"
        raise ApiError(404, f"no rollout of {name!r}: rollouts are {known}")
    return state


def _refusal(req: ControlRequest, state: RolloutState, paused: bool) -> str | None:
    """Why ``req`` cannot act on ``state`` now (None: it can)."""
    label = f"rollout of {state.name} {state.version} ({state.phase})"
    if req.action == "pause" and paused:
        return f"{label} is paused already; resume it first"
    if req.action == "resume" and not paused:
        return f"{label} is not paused"
    if req.action == "retry" and state.phase != "Halted":
        return f"{label} is not halted: nothing to retry"
    if req.action == "promote":
        i = state.active_batch()
        if state.phase == "Halted" or i is None or state.batches[i].started_at is None:
            return f"{label} has no running batch whose soak could end"
    if req.action == "skip-node":
        members = {n for b in state.batches for n in b.nodes}
        if req.node not in members:
            return f"node {req.node} is not part of the {label}"
        if req.node in state.skipped:
            return f"node {req.node} is skipped already in the {label}"
    return None


def record_control(ctx: ApiContext, req: ControlRequest) -> dict[str, JSON]:
    """Check ``req`` against the current rollout and store it with its audit event
    (blocking: run in a thread); the answer names the rollout it acts on."""
    state = _current(ctx, req.name)  # first: a name with no rollout is 404 whatever else
    if req.action == "skip-node" and not req.node:
        raise ApiError(422, f"rollout skip-node {req.name}: the node to skip is required")
    if req.action != "skip-node" and req.node:
        raise ApiError(422, f"rollout {req.action} {req.name}: only skip-node takes a node")
    mine = [c for c in ctx.store.controls() if c.name == req.name]
    why = _refusal(req, state, pause_of(mine) is not None)
    if why is not None:
        raise ApiError(409, why)
    now = ctx.clock()
    control = Control(
        seq=0,
        name=req.name,
        action=req.action,
        fingerprint=state.fingerprint,
        actor=req.by,
        reason=req.reason,
        at=now,
        node=req.node,
    )
    target = f" node {req.node} of" if req.node is not None else ""
    where = f" from {req.address}" if req.address else ""
    event = AuditEvent(
        time=now,
        kind=f"rollout-{req.action}",
        message=f"{req.by}{where} {DONE[req.action]}{target} the rollout of {state.name} "
        f"{state.version}: {req.reason}",
        release=req.name,
        node=req.node,
        details={
            "action": req.action,
            "by": req.by,
            "token": "admin",
            "address": req.address,
            "reason": req.reason,
            "version": state.version,
            "fingerprint": state.fingerprint,
        },
    )
    seq = ctx.store.add_control(control, event)
    log_event(event)
    ctx.wake()  # the pass reads the new record and steps every rollout with it
    return {
        "name": req.name,
        "action": req.action,
        "seq": seq,
        "version": state.version,
        "fingerprint": state.fingerprint,
        "node": req.node,
    }


def parse_action(raw: str) -> Action:
    for a in ACTIONS:
        if a == raw:
            return a
    raise ApiError(404, f"unknown rollout action {raw!r}: expected one of {', '.join(ACTIONS)}")


def control_request(
    name: str,
    action: Action,
    reason: str | None,
    node: str | None,
    by: str | None,
    address: str | None,
) -> ControlRequest:
    """The request, or 422 naming the missing part (the dashboard's form and the API)."""
    reason = (reason or "").strip()
    if not reason:
        raise ApiError(422, f"rollout {action} {name}: a reason is required (--reason TEXT)")
    who = (by or "").strip() or "admin"
    return ControlRequest(name, action, reason, who, address, node or None)


def control_routes(ctx: ApiContext) -> list[Route]:
    async def control(request: Request) -> Response:
        require_secret(request, ctx.settings.admin_token, "admin")
        action = parse_action(str(request.path_params["action"]))
        name = str(request.path_params["name"])
        body = await read_json(request, "rollout-control-request", ctx.settings.max_body_bytes)
        address = request.client.host if request.client is not None else None
        req = control_request(
            name, action, body.get("reason"), body.get("node"), body.get("by"), address
        )
        doc = await asyncio.to_thread(record_control, ctx, req)
        return Response(json.dumps(doc).encode(), media_type="application/json")

    return [Route("/v1/rollouts/{name}/{action}", control, methods=["POST"])]
