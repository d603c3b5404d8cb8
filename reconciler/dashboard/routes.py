"""Dashboard endpoints (Starlette): the page at ``/``, its live fragment, log in and out.

Behind the admin token: a login form posts the token once; the browser then holds an
HttpOnly, SameSite=Strict cookie with an HMAC-derived session value (never the token).
``Authorization: Bearer <admin token>`` also works, for scripts. Without an admin token in
the reconciler's config the dashboard stays closed.

The rollout buttons (pause, resume, retry, promote) post JSON to ``/ui/rollouts/{name}/
{action}`` with the session cookie; the same code as ``POST /v1/rollouts/...`` records it.
A cross-site page cannot forge one: the cookie is SameSite=Strict, a form cannot send
``application/json`` without a CORS preflight we never answer, and the Origin is checked.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from reconciler.dashboard import render, session

log = logging.getLogger(__name__)

StatusSource = Callable[[], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]
AuditSource = Callable[[], Awaitable[Sequence[Any]] | Sequence[Any]]
# (name, action, JSON body as sent, caller address) -> (HTTP status, answer document)
ControlSink = Callable[[str, str, bytes, str | None], Awaitable[tuple[int, Any]]]
MAX_CONTROL_BODY = 4096

MAX_LOGIN_BODY = 4096
FAILED_LOGIN_DELAY = 0.5  # slows guessing; the token itself should be long and random


async def _call(source: Callable[[], Any]) -> Any:
    result = source()
    if inspect.isawaitable(result):
        result = await result
    return result


def _headers(nonce: str) -> dict[str, str]:
    csp = (
        "default-src 'none'; "
        f"style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; form-action 'self'; img-src 'self' data:; "
        "base-uri 'none'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
    }


def routes(
    get_status: StatusSource,
    get_audit: AuditSource,
    admin_token: str | None,
    *,
    session_seconds: int = session.SESSION_SECONDS,
    control: ControlSink | None = None,
) -> list[BaseRoute]:
    """The dashboard's routes, to be mounted at ``/`` by the API's app factory.

    Long because the handlers are closures over the same sources and session settings,
    each a few lines; they read best side by side."""

    def authorized(request: Request) -> bool:
        if admin_token is None:
            return False
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return session.token_matches(admin_token, auth[7:].strip())
        return session.valid(admin_token, request.cookies.get(session.COOKIE), time.time())

    def closed(nonce: str) -> Response:
        return HTMLResponse(
            render.message_page(
                "Dashboard closed",
                "No admin token is configured: set adminTokenFile in the reconciler config "
                "(or FLEETKEEPER_ADMIN_TOKEN) and restart.",
                nonce,
            ),
            status_code=503,
            headers=_headers(nonce),
        )

    async def live_html() -> str:
        status, events = await asyncio.gather(_call(get_status), _call(get_audit))
        return render.fragment(status, list(events), time.time())

    async def index(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        if admin_token is None:
            return closed(nonce)
        if not authorized(request):
            return RedirectResponse("/ui/login", status_code=303)
        return HTMLResponse(render.page(await live_html(), nonce), headers=_headers(nonce))

    async def fragment(request: Request) -> Response:
        if not authorized(request):
            return Response("log in again", status_code=401, media_type="text/plain")
        return HTMLResponse(await live_html(), headers=_headers(secrets.token_urlsafe(8)))

    async def login_form(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        if admin_token is None:
            return closed(nonce)
        return HTMLResponse(render.login_page(None, nonce), headers=_headers(nonce))

    async def login(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        if admin_token is None:
            return closed(nonce)
        body = await request.body()
        given: str | None = None
        if len(body) <= MAX_LOGIN_BODY:
            values = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
            tokens = values.get("token") or []
            given = tokens[0] if tokens else None
        if not session.token_matches(admin_token, given.strip() if given else None):
            log.warning(
                "dashboard login refused",
                extra={"event": "dashboard-login-refused"},
            )
            await asyncio.sleep(FAILED_LOGIN_DELAY)
            return HTMLResponse(
                render.login_page("That is not the admin token.", nonce),
                status_code=401,
                headers=_headers(nonce),
            )
        log.info("dashboard login", extra={"event": "dashboard-login"})
        resp = RedirectResponse("/", status_code=303)
        resp.set_cookie(
            session.COOKIE,
            session.mint(admin_token, time.time(), session_seconds),
            max_age=session_seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def rollout_control(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"message": "log in again"}, status_code=401)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return JSONResponse({"message": f"cross-origin request from {origin}"}, 403)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"message": "send the control as application/json"}, 415)
        if control is None:
            return JSONResponse({"message": "rollout controls are not available here"}, 503)
        body = await request.body()
        if len(body) > MAX_CONTROL_BODY:
            return JSONResponse({"message": f"body over {MAX_CONTROL_BODY} bytes"}, 413)
        address = request.client.host if request.client is not None else None
        name, action = request.path_params["name"], request.path_params["action"]
        status, answer = await control(str(name), str(action), body, address)
        return JSONResponse(answer, status_code=status, headers={"Cache-Control": "no-store"})

    async def logout(request: Request) -> Response:
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(session.COOKIE, path="/", httponly=True, samesite="strict")
        return resp

    return [
        Route("/", index, methods=["GET"], name="dashboard"),
        Route("/ui/fragment", fragment, methods=["GET"], name="dashboard-fragment"),
        Route("/ui/login", login_form, methods=["GET"], name="dashboard-login-form"),
        Route("/ui/login", login, methods=["POST"], name="dashboard-login"),
        Route("/ui/logout", logout, methods=["POST"], name="dashboard-logout"),
        Route(
            "/ui/rollouts/{name}/{action}",
            rollout_control,
            methods=["POST"],
            name="dashboard-rollout-control",
        ),
    ]
