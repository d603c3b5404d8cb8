"""API errors: every failure is JSON ``{"error": code, "message": what was wrong}``.

Handlers turn ``ApiError``, Starlette's ``HTTPException`` (unknown path, wrong method)
and, as a last resort, any other exception into that shape; the last one is logged
(it is a bug) and answers 500 without details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

log = logging.getLogger(__name__)

_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    422: "invalid",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers or {}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps({"error": code, "message": message}).encode()
    return Response(body, status_code=status, media_type="application/json", headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    if status == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    return error_response(status, _CODES.get(status, "error"), message, exc.headers)


async def on_unexpected(request: Request, exc: Exception) -> Response:
    return unexpected_response(request.method, request.url.path, exc)


def unexpected_response(method: str, path: str, exc: Exception) -> Response:
    log.error("internal error on %s %s", method, path, exc_info=exc)
    return error_response(500, "internal", "internal error; the reconciler logged the details")


def failure_response(method: str, path: str, exc: Exception) -> Response:
    """What the application's exception handlers answer for ``exc`` (an ``ApiError``
    its own status; anything else 500, logged), for code that runs outside them."""
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    return unexpected_response(method, path, exc)
