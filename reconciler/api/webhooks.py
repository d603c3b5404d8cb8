"""Webhooks: a push or merged PR at the forge makes the reconciler fetch now.

The signature is an HMAC-SHA256 of the raw body with the shared webhook secret,
compared in constant time; a bad one answers 401 and triggers nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.body import read_raw
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError

log = logging.getLogger(__name__)

# provider -> (header carrying the signature, prefix before the hex digest)
PROVIDERS: dict[str, tuple[str, str]] = {
    "github": ("x-hub-signature-256", "sha256="),
    "gitea": ("x-gitea-signature", ""),
    "generic": ("x-fleetkeeper-signature", "sha256="),
}


def sign(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` (what a forge sends, minus its prefix)."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None, prefix: str) -> bool:
    if not header or not header.startswith(prefix):
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header[len(prefix) :].encode())


def webhook_routes(ctx: ApiContext) -> list[Route]:
    async def hook(request: Request) -> Response:
        provider = str(request.path_params["provider"])
        if provider not in PROVIDERS:
            raise ApiError(
                404, f"unknown webhook provider {provider!r}: use github, gitea or generic"
            )
        secret = ctx.settings.webhook_secret
        if secret is None:
            raise ApiError(404, "webhooks are disabled: no webhook secret is configured")
        body = await read_raw(request, ctx.settings.max_body_bytes)
        header, prefix = PROVIDERS[provider]
        if not verify(secret, body, request.headers.get(header), prefix):
            log.warning("webhook %s: bad or missing signature; nothing fetched", provider)
            raise ApiError(
                401, f"bad or missing signature header {header}: expected HMAC-SHA256 of the body"
            )
        event = request.headers.get("x-github-event") or request.headers.get("x-gitea-event")
        if event == "ping":
            return Response(b'{"triggered":false}', media_type="application/json")
        ctx.trigger()
        log.info("webhook %s: fetch triggered", provider)
        return Response(
            json.dumps({"triggered": True}).encode(), status_code=202, media_type="application/json"
        )

    return [Route("/hooks/{provider}", hook, methods=["POST"])]
