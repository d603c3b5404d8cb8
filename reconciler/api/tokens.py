"""Admin endpoints for node identity: join tokens (create, list, revoke) and node reset.

A join token's secret is returned once, by ``POST /v1/tokens``; the store keeps its sha256.
Every create, revoke and reset goes to the audit log with the caller's address.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.auth import hash_token, require_secret
from reconciler.api.body import read_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.api.nodes import NODE_NAME
from reconciler.logs import log_event
from reconciler.store.base import AuditEvent, JoinToken
from reconciler.views.fleet_status import rfc3339

JSON_TYPE = "application/json"
TOKEN_PREFIX = "fkjoin_"  # tells people (and secret scanners) what kind of secret this is
DEFAULT_TTL_SECONDS = 3600.0


def token_json(t: JoinToken, now: float) -> dict[str, Any]:
    """A join token as ``schema/join-token.schema.json`` describes it (without the secret)."""
    return {
        "id": t.id,
        "state": t.state(now),
        "createdAt": rfc3339(t.created_at),
        "expiresAt": rfc3339(t.expires_at),
        "uses": t.uses,
        "used": t.used,
        "node": t.node,
        "roles": list(t.roles) if t.roles is not None else None,
        "labels": dict(t.labels) if t.labels is not None else None,
        "revokedAt": rfc3339(t.revoked_at),
    }


def _json(doc: object, status: int = 200) -> Response:
    return Response(
        json.dumps(doc).encode(),
        status_code=status,
        media_type=JSON_TYPE,
        headers={"Cache-Control": "no-store"},
    )


def _audit(ctx: ApiContext, event: AuditEvent) -> None:
    ctx.store.append_audit(event)
    log_event(event)


def token_routes(ctx: ApiContext) -> list[Route]:
    def admin(request: Request) -> str | None:
        require_secret(request, ctx.settings.admin_token, "admin")
        return request.client.host if request.client is not None else None

    async def create(request: Request) -> Response:
        address = admin(request)
        body = await read_json(request, "join-token-request", ctx.settings.max_body_bytes)
        now = ctx.clock()
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        roles, labels = body.get("roles"), body.get("labels")
        token = JoinToken(
            id=secrets.token_hex(6),
            token_hash=hash_token(secret),
            created_at=now,
            expires_at=now + float(body.get("ttlSeconds", DEFAULT_TTL_SECONDS)),
            uses=int(body.get("uses", 1)),
            node=body.get("node"),
            roles=tuple(roles) if roles is not None else None,
            labels=dict(labels) if labels is not None else None,
        )
        doc = token_json(token, now)

        def write() -> None:
            ctx.store.create_join_token(token)
            scope = {k: doc[k] for k in ("node", "roles", "labels") if doc[k] is not None}
            _audit(
                ctx,
                AuditEvent(
                    time=now,
                    kind="join-token-created",
                    node=token.node,
                    message=f"join token {token.id} created ({token.uses} use(s), "
                    f"expires {doc['expiresAt']}, scope {json.dumps(scope) if scope else 'none'})",
                    details={**scope, "tokenId": token.id, "uses": token.uses, "address": address},
                ),
            )

        await asyncio.to_thread(write)
        return _json({**doc, "token": secret}, 201)

    async def listing(request: Request) -> Response:
        admin(request)
        now = ctx.clock()
        tokens = await asyncio.to_thread(ctx.store.join_tokens)
        return _json({"tokens": [token_json(t, now) for t in tokens]})

    async def revoke(request: Request) -> Response:
        address = admin(request)
        token_id = str(request.path_params["id"])
        now = ctx.clock()

        def write() -> JoinToken | None:
            token = ctx.store.revoke_join_token(token_id, now)
            if token is not None and token.revoked_at == now:
                _audit(
                    ctx,
                    AuditEvent(
                        time=now,
                        kind="join-token-revoked",
                        node=token.node,
                        message=f"join token {token.id} revoked",
                        details={"tokenId": token.id, "address": address},
                    ),
                )
            return token

        token = await asyncio.to_thread(write)
        ctx.join_tokens.clear()  # a revoked token is refused at once, not only at its claim
        if token is None:
            raise ApiError(
                404, f"no join token with id {token_id!r} (see `fleetkeeper token list`)"
            )
        return _json(token_json(token, now))

    async def reset(request: Request) -> Response:
        address = admin(request)
        node = str(request.path_params["node"])
        if not NODE_NAME.match(node):
            raise ApiError(404, f"{node!r} is not a valid node name (lowercase DNS-like name)")
        now = ctx.clock()

        def write() -> bool:
            if not ctx.store.delete_node(node):
                return False
            _audit(
                ctx,
                AuditEvent(
                    time=now,
                    kind="node-reset",
                    node=node,
                    message=f"node {node} reset by an operator from {address}: its credential "
                    "is revoked and the name may register again",
                    details={"address": address},
                ),
            )
            return True

        if not await asyncio.to_thread(write):
            raise ApiError(404, f"node {node!r} is not registered")
        ctx.tokens.remove(node)
        ctx.registered(None)  # it left the inventory (if Unlisted): the planner re-reads it
        ctx.wake()
        return _json({"node": node, "reset": True})

    return [
        Route("/v1/tokens", create, methods=["POST"]),
        Route("/v1/tokens", listing, methods=["GET"]),
        Route("/v1/tokens/{id}", revoke, methods=["DELETE"]),
        Route("/v1/nodes/{node}/reset", reset, methods=["POST"]),
    ]
