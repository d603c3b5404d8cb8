"""Reading request bodies: size limit enforced while reading, JSON, schema validation."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

import schema
from reconciler.api.errors import ApiError

MAX_PROBLEMS = 20


async def read_raw(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as more than ``limit`` bytes arrive.

    Content-Length is only a hint for an early answer; the count of bytes actually
    read is what is enforced (chunked bodies have no length, and a length can lie).
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes, schema_name: str) -> dict[str, Any]:
    """``raw`` as a JSON object valid against ``schema/<schema_name>.schema.json``."""
    if not raw:
        raise ApiError(400, f"empty body: expected a JSON {schema_name} document", "bad-json")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"body is not valid JSON: {exc}", "bad-json") from exc
    problems = schema.errors(schema_name, doc)
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        suffix = f"; and {more} more" if more > 0 else ""
        raise ApiError(
            422, f"body does not match schema {schema_name}: " + "; ".join(shown) + suffix
        )
    assert isinstance(doc, dict)  # every request schema is an object
    return doc


async def read_json(request: Request, schema_name: str, limit: int) -> dict[str, Any]:
    return parse_json(await read_raw(request, limit), schema_name)
