"""The hot paths as plain ASGI: a conditional GET that still matches, and a status report.

Most requests a reconciler ever sees are ``GET /v1/nodes/N/desired`` with the ETag the
agent already has and no wait (or a wait already over), and heartbeats
(``POST /v1/nodes/N/status``). These middlewares answer exactly those cases from memory
(token hash and ETag caches, the report book) without building a Request or routing;
anything else (a mismatch, a long-poll, a bad token, a body that is too large or
invalid, any doubt) falls through to the full application, with the body it already
read replayed, and the application gives the complete answer (and error).

They wrap the Starlette application (``fast_paths``) rather than sit in its middleware
stack: a long-poll waits for up to 30 s, and inside the stack each waiting one also
held Starlette's and its error middleware's frames (6.5 MB at 8,000 agents). So they
answer an error the way the application's handlers would (``failure_response``).
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetkeeper_common.signing import BATCH_TYPE, ENVELOPE_TYPE, accepted_form
from reconciler.api.body import parse_json
from reconciler.api.context import ApiContext
from reconciler.api.errors import ApiError, failure_response
from reconciler.api.nodes import accept_report

PREFIX = "/v1/nodes/"
SUFFIX = "/desired"
STATUS_SUFFIX = "/status"
JSON_HEADERS = [(b"content-type", b"application/json")]
ENVELOPE_HEADERS = [(b"content-type", ENVELOPE_TYPE.encode())]
BATCH_HEADERS = [(b"content-type", BATCH_TYPE.encode())]
WAIT = re.compile(rb"wait=([0-9]{1,6}(?:\.[0-9]{1,6})?)")

Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, Headers, bytes]  # status, headers, body


def fast_paths(app: ASGIApp, ctx: ApiContext) -> ASGIApp:
    """``app`` with the hot paths answered in front of it."""
    return DesiredFastPath(StatusFastPath(app, ctx), ctx)


async def _respond(send: Send, answer: Answer) -> None:
    status, headers, body = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _failed(scope: Scope, exc: Exception) -> Answer:
    response = failure_response(scope["method"], scope["path"], exc)
    return response.status_code, response.raw_headers, bytes(response.body)


def _wait(query: bytes) -> float | None:
    """Seconds from ``""`` or ``wait=N`` (the agent's two forms); None: anything else."""
    if not query:
        return 0.0
    m = WAIT.fullmatch(query)
    return float(m[1]) if m else None


class DesiredFastPath:
    """``GET /v1/nodes/N/desired`` with that node's token and its current ETag: 304 at
    once, or after a long-poll (``wait=N``) 304 or the new document."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            wait = _wait(scope["query_string"])
            path: str = scope["path"]
            if wait is not None and path.startswith(PREFIX) and path.endswith(SUFFIX):
                node = path[len(PREFIX) : -len(SUFFIX)]
                try:
                    answer = await self._answer(node, min(wait, self.ctx.settings.max_wait), scope)
                except Exception as exc:
                    answer = _failed(scope, exc)
                if answer is not None:
                    await _respond(send, answer)
                    return
        await self.app(scope, receive, send)

    async def _answer(self, node: str, wait: float, scope: Scope) -> Answer | None:
        """The answer, or None: the application answers."""
        auth = inm = None
        accept = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
            elif name == b"if-none-match":
                inm = value
            elif name == b"accept":
                accept = value
        if auth is None or inm is None or auth[:7].lower() != b"bearer ":
            return None
        ctx = self.ctx
        etag = ctx.hub.etag(node)
        if inm.strip() != etag.encode():
            return None
        token = auth[7:].strip().decode("latin-1")
        if ctx.tokens.check(node, token) != "ok":
            return None
        # a long-poll waits here, without the routing stack's frames and objects (one
        # per waiting agent: 10,000 of them)
        entry = None
        if wait > 0:
            with ctx.metrics.long_polls.track_inprogress():
                entry = await ctx.hub.wait_change(node, etag, wait)
        if entry is None or entry.etag == etag:
            ctx.metrics.poll_304.inc()
            return 304, [(b"etag", etag.encode())], b""
        ctx.metrics.poll_200.inc()
        # the same choice as the routed handler: the envelope to an agent that asks for it
        form = accepted_form(accept.decode("latin-1"))
        if entry.signed is not None and form is not None:
            body = ctx.hub.envelope(node, entry, form)
            kind = BATCH_HEADERS if form == "batch" else ENVELOPE_HEADERS
        else:
            body, kind = ctx.hub.plain(node, entry), JSON_HEADERS
        headers = [
            *kind,
            (b"etag", entry.etag.encode()),
            (b"content-length", str(len(body)).encode()),
        ]
        return 200, headers, body


def _bearer_ok(ctx: ApiContext, node: str, scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"authorization":
            if value[:7].lower() != b"bearer ":
                return False
            return ctx.tokens.check(node, value[7:].strip().decode("latin-1")) == "ok"
    return False


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives back what was already read, then reads on."""
    pending = list(messages)

    async def again() -> Message:
        return pending.pop(0) if pending else await receive()

    return again


class StatusFastPath:
    """``POST /v1/nodes/N/status`` with that node's token and a valid body, answered here."""

    def __init__(self, app: ASGIApp, ctx: ApiContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREFIX) and path.endswith(STATUS_SUFFIX):
                node = path[len(PREFIX) : -len(STATUS_SUFFIX)]
                if "/" not in node and _bearer_ok(self.ctx, node, scope):
                    try:
                        rest = await self._report(node, receive)
                    except Exception as exc:
                        rest = _failed(scope, exc)
                    if isinstance(rest, tuple):
                        await _respond(send, rest)
                        return
                    receive = rest
        await self.app(scope, receive, send)

    async def _report(self, node: str, receive: Receive) -> Answer | Receive:
        """The answer; or the ``receive`` the application reads the body from."""
        limit = self.ctx.settings.max_body_bytes
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return _replay(messages, receive)  # a disconnect: let the app see it
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return _replay(messages, receive)  # the app answers 413
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        try:
            report = parse_json(b"".join(chunks), "status-report")
        except ApiError:
            return _replay(messages, receive)  # the app words the 400/422
        if report["node"] != node:
            return _replay(messages, receive)
        body = await accept_report(self.ctx, node, report)
        return 200, [*JSON_HEADERS, (b"content-length", str(len(body)).encode())], body
