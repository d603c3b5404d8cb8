"""Webhooks: a push or merged pull request at the forge makes the reconciler fetch now.

``POST /hooks/{github,gitea,gitlab,bitbucket,generic}``; what each forge sends and how it
is proved is in ``reconciler.forges``. A delivery that is not authentic (or too old) answers
401 and triggers nothing; an event that cannot move a ref, or a replay of a delivery already
handled, answers 200 ``{"triggered": false, "reason": ...}``; the rest answer 202 and wake
the fetcher. Every answer is counted in ``fleetkeeper_webhook_deliveries_total``.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from reconciler.api.body import read_raw
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError
from reconciler.forges import PROVIDERS, Delivery, Refusal, read_delivery

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


def _answer(status: int, doc: dict[str, object]) -> Response:
    return Response(json.dumps(doc).encode(), status_code=status, media_type=JSON_TYPE)


def webhook_routes(ctx: ApiContext) -> list[Route]:
    async def hook(request: Request) -> Response:
        name = str(request.path_params["provider"])
        provider = next((p for p in PROVIDERS if p == name), None)
        count = ctx.metrics.webhook_deliveries
        if provider is None:
            count.labels(provider="unknown", result="unknown-provider").inc()
            raise ApiError(
                404, f"unknown webhook provider {name!r}: use one of {', '.join(PROVIDERS)}"
            )
        secret = ctx.settings.webhook_secret
        if secret is None:
            count.labels(provider=provider, result="disabled").inc()
            raise ApiError(404, "webhooks are disabled: no webhook secret is configured")
        body = await read_raw(request, ctx.settings.max_body_bytes)
        now = ctx.clock()
        judged = read_delivery(provider, request.headers, body, secret, now)
        if isinstance(judged, Refusal):
            result = "unauthorized" if judged.status == 401 else "bad-request"
            count.labels(provider=provider, result=result).inc()
            log.warning(
                "webhook %s refused (%d): %s; nothing fetched",
                provider,
                judged.status,
                judged.message,
            )
            raise ApiError(judged.status, judged.message)
        delivery: Delivery = judged
        replay = ctx.deliveries.replay_of(delivery, now)
        if replay is not None:
            count.labels(provider=provider, result="replay").inc()
            log.info("webhook %s: replay (%s); nothing fetched", provider, replay)
            return _answer(200, {"triggered": False, "reason": f"replay: {replay}"})
        if not delivery.fetch:
            count.labels(provider=provider, result="ignored").inc()
            return _answer(200, {"triggered": False, "reason": delivery.why})
        ctx.trigger()
        count.labels(provider=provider, result="triggered").inc()
        log.info("webhook %s: %s; fetch triggered", provider, delivery.why)
        return _answer(202, {"triggered": True})

    return [Route("/hooks/{provider}", hook, methods=["POST"])]
