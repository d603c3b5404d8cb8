"""The OpenAPI 3.1 document of the API (``GET /openapi.json``).

Bodies come from ``schema/*.schema.json`` with every ``$ref`` inlined, so the document
stands alone (tools need not resolve ``urn:fleetkeeper:schema:*`` identifiers).
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import schema
from fleetkeeper_common.signing import BATCH_TYPE, ENVELOPE_TYPE
from reconciler import __version__
from reconciler.forges import PROVIDERS
from reconciler.plan.controls import ACTIONS

URN = "urn:fleetkeeper:schema:"
_ANNOTATIONS = frozenset({"description", "title", "default", "examples"})


def _pointer(doc: Any, fragment: str) -> Any:
    node = doc
    for part in fragment.strip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _inline(node: Any, base: str) -> Any:
    if isinstance(node, list):
        return [_inline(v, base) for v in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        uri, _, fragment = str(node["$ref"]).partition("#")
        target = uri.removeprefix(URN) if uri else base
        resolved = _inline(_pointer(schema.load(target), fragment), target)
        rest = {k: _inline(v, base) for k, v in node.items() if k != "$ref"}
        if set(rest) <= _ANNOTATIONS:
            return {**resolved, **rest}
        return {"allOf": [resolved], **rest}
    return {
        k: (v if k in ("const", "enum", "default") else _inline(v, base))
        for k, v in node.items()
        if k not in ("$schema", "$id", "$defs")
    }


def body_schema(name: str) -> dict[str, Any]:
    """``schema/<name>.schema.json`` with every reference inlined."""
    out: dict[str, Any] = _inline(schema.load(name), name)
    return out


ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
NODE_PARAM = {
    "name": "node",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"},
}


def _json(schema_: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema_}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": "#/components/responses/Error"} for c in codes}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": body_schema(name)}}}


@cache
def _document() -> dict[str, Any]:
    """The OpenAPI document. Long because it is one literal: a path per endpoint, read top
    to bottom like the API reference it is."""
    fleet = body_schema("fleet-status")
    token = body_schema("join-token")
    audit_event = {
        "type": "object",
        "required": ["id", "time", "kind", "message"],
        "properties": {
            "id": {"type": "integer"},
            "time": {"type": "number", "description": "Unix time."},
            "kind": {"type": "string"},
            "message": {"type": "string"},
            "revision": {"type": ["string", "null"]},
            "release": {"type": ["string", "null"]},
            "node": {"type": ["string", "null"]},
            "details": {"type": "object"},
        },
    }
    bearer: list[dict[str, list[str]]] = [{"bearer": []}]
    text = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    ok = _json({"type": "object"}, "OK")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetkeeper reconciler API",
            "version": __version__,
            "description": "Agents register, long-poll their desired state and report; "
            "people read fleet status; forges trigger fetches. Errors are "
            '{"error": code, "message": text}.',
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": ERROR},
            "responses": {"Error": _json({"$ref": "#/components/schemas/Error"}, "Refused")},
        },
        "paths": {
            "/v1/nodes/{node}/register": {
                "post": {
                    "summary": "Register a node with a join token (or the bootstrap token, for a "
                    "declared name not yet registered, or the node's own credential to rotate "
                    "it); returns its node credential",
                    "security": bearer,
                    "parameters": [NODE_PARAM],
                    "requestBody": _body("register"),
                    "responses": {
                        "200": _json(body_schema("register-response"), "The node token"),
                        **_errors(400, 401, 403, 404, 409, 413, 422, 503),
                    },
                }
            },
            "/v1/nodes/{node}/reset": {
                "post": {
                    "summary": "Forget a node's credential so the name can register again "
                    "(admin token; audited)",
                    "security": bearer,
                    "parameters": [NODE_PARAM],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["node", "reset"],
                                "properties": {
                                    "node": {"type": "string"},
                                    "reset": {"const": True},
                                },
                            },
                            "Reset",
                        ),
                        **_errors(401, 404),
                    },
                }
            },
            "/v1/rollouts/{name}/{action}": {
                "post": {
                    "summary": "Steer the current rollout of an agent or model: pause, resume, "
                    "retry, promote, skip-node (admin token; audited with who and why)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "name",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": list(ACTIONS)},
                        },
                    ],
                    "requestBody": _body("rollout-control-request"),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["name", "action", "seq", "version", "fingerprint"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "action": {"enum": list(ACTIONS)},
                                    "seq": {"type": "integer"},
                                    "version": {"type": "string"},
                                    "fingerprint": {"type": "string"},
                                    "node": {"type": ["string", "null"]},
                                },
                            },
                            "The control, recorded",
                        ),
                        **_errors(400, 401, 404, 409, 413, 422),
                    },
                }
            },
            "/v1/tokens": {
                "post": {
                    "summary": "Create a join token (admin token); the secret is in this "
                    "answer only",
                    "security": bearer,
                    "requestBody": _body("join-token-request"),
                    "responses": {
                        "201": _json(token, "The join token, with its secret"),
                        **_errors(400, 401, 413, 422),
                    },
                },
                "get": {
                    "summary": "List join tokens, without secrets (admin token)",
                    "security": bearer,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["tokens"],
                                "properties": {"tokens": {"type": "array", "items": token}},
                            },
                            "Join tokens",
                        ),
                        **_errors(401),
                    },
                },
            },
            "/v1/tokens/{id}": {
                "delete": {
                    "summary": "Revoke a join token (admin token)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": _json(token, "The revoked token"), **_errors(401, 404)},
                }
            },
            "/v1/nodes/{node}/desired": {
                "get": {
                    "summary": "Desired state; long-polls while If-None-Match still matches",
                    "security": bearer,
                    "parameters": [
                        NODE_PARAM,
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 60},
                            "description": "Seconds to wait for a change (capped at 60).",
                        },
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The desired-state document; with Accept: "
                            f"{ENVELOPE_TYPE}, signed in an envelope (docs/security.md); "
                            f"with Accept: {BATCH_TYPE}, batch-signed, each envelope with "
                            "its Merkle inclusion proof",
                            "content": {
                                "application/json": {"schema": body_schema("desired-state")},
                                ENVELOPE_TYPE: {"schema": body_schema("signed-desired-state")},
                                BATCH_TYPE: {"schema": body_schema("signed-desired-state")},
                            },
                            "headers": {"ETag": {"schema": {"type": "string"}}},
                        },
                        "304": {
                            "description": "Unchanged",
                            "headers": {"ETag": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
            "/v1/signing-key": {
                "get": {
                    "summary": "The public key that signs desired state (one OpenSSH line)",
                    "responses": {
                        "200": {
                            "description": "ssh-ed25519 AAAA... fleetkeeper-reconciler SHA256:...",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "404": {"description": "This reconciler does not sign"},
                    },
                }
            },
            "/v1/nodes/{node}/status": {
                "post": {
                    "summary": "Heartbeat and status report",
                    "security": bearer,
                    "parameters": [NODE_PARAM],
                    "requestBody": _body("status-report"),
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["node", "generation"],
                                "properties": {
                                    "node": {"type": "string"},
                                    "generation": {"type": "integer"},
                                },
                            },
                            "Stored; generation is the node's current desired generation",
                        ),
                        **_errors(400, 401, 403, 404, 413, 422),
                    },
                }
            },
            "/v1/fleet": {
                "get": {
                    "summary": "Fleet status (admin token)",
                    "security": bearer,
                    "responses": {"200": _json(fleet, "Fleet status"), **_errors(401)},
                }
            },
            "/v1/releases": {
                "get": {
                    "summary": "Rollout status per release (admin token)",
                    "security": bearer,
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["releases"],
                                "properties": {"releases": fleet["properties"]["releases"]},
                            },
                            "Releases",
                        ),
                        **_errors(401),
                    },
                }
            },
            "/v1/audit": {
                "get": {
                    "summary": "The audit log, oldest first (admin token)",
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "since",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 10000},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["events"],
                                "properties": {"events": {"type": "array", "items": audit_event}},
                            },
                            "Audit events",
                        ),
                        **_errors(400, 401),
                    },
                }
            },
            "/hooks/{provider}": {
                "post": {
                    "summary": "Forge webhook: fetch now (200 for a replay or an event that "
                    "moves no ref)",
                    "parameters": [
                        {
                            "name": "provider",
                            "in": "path",
                            "required": True,
                            "schema": {"enum": list(PROVIDERS)},
                        }
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": {"type": "object"}},
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"payload": {"type": "string"}},
                                    "required": ["payload"],
                                    "additionalProperties": False,
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json({"type": "object"}, "Acknowledged, nothing fetched"),
                        "202": _json({"type": "object"}, "Fetch triggered"),
                        **_errors(400, 401, 404, 413),
                    },
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": ok}}},
            "/readyz": {
                "get": {
                    "summary": "Readiness: store reachable and first reconcile pass done",
                    "responses": {"200": ok, **_errors(503)},
                }
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    return copy.deepcopy(_document())
