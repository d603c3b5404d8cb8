"""The hot path as plain ASGI: an agent's conditional GET that still matches -> 304.

Most requests a reconciler ever sees are ``GET /v1/nodes/N/desired`` with the ETag the
agent already has and no wait (or a wait already over). This middleware answers exactly
that case from memory (token hash and ETag caches) without building a Request or
routing; anything else (a mismatch, a long-poll, a bad token, any error) falls through
to the full application, which gives the complete answer.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from reconciler.api.context import ApiContext

PREFIX = "/v1/nodes/"
SUFFIX = "/desired"
FAST_QUERIES = frozenset({b"", b"wait=0"})


class DesiredFastPath:
    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["query_string"] in FAST_QUERIES
        ):
            path: str = scope["path"]
            if path.startswith(PREFIX) and path.endswith(SUFFIX):
                node = path[len(PREFIX) : -len(SUFFIX)]
                if await self._not_modified(node, scope, send):
                    return
        await self.app(scope, receive, send)

    async def _not_modified(self, node: str, scope: Scope, send: Send) -> bool:
        auth = inm = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"if-none-match":
                inm = value
        if auth is None or inm is None or auth[:7].lower() != b"bearer ":
            return False
        ctx = self.ctx
        etag = ctx.hub.etag(node).encode()
        if inm.strip() != etag:
            return False
        token = auth[7:].strip().decode("latin-1")
        if ctx.tokens.check(node, token) != "ok":
            return False
        ctx.metrics.poll_304.inc()
        await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", etag)]})
        await send({"type": "http.response.body", "body": b""})
        return True
