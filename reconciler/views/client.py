"""The admin side of the reconciler's HTTP API, for ``status`` and ``audit`` (I/O).

The admin token comes from ``--token-file`` or ``FLEETKEEPER_TOKEN`` and travels only as
``Authorization: Bearer``; it never appears in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from reconciler.errors import ConfigError, FleetkeeperError, Waiting, sanitize
from reconciler.secrets import read_secret

DEFAULT_SERVER = "http://127.0.0.1:8700"
ENV_TOKEN = "FLEETKEEPER_TOKEN"
ENV_SERVER = "FLEETKEEPER_SERVER"
AUDIT_PAGE = 10000  # the API's largest page


def read_token(token_file: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The admin token from ``token_file`` if given, else from $FLEETKEEPER_TOKEN."""
    environ = os.environ if env is None else env
    if token_file:
        return read_secret(Path(token_file).expanduser(), "--token-file")
    value = environ.get(ENV_TOKEN, "").strip()
    return value or None


def _message(resp: httpx.Response) -> str:
    """The API's ``message`` of an error answer (it says what was wrong), else the text."""
    try:
        doc = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc["message"])
    return resp.text[:300]


class AdminClient:
    """The admin endpoints (fleet, audit, join tokens, node reset) with the admin token."""

    def __init__(self, server: str, token: str | None, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return self._call("GET", path, params=params)

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        where = sanitize(f"{self.server}{path}")
        try:
            resp = self._http.request(method, path, params=params, json=body)
        except httpx.HTTPError as exc:
            raise Waiting(
                f"cannot reach the reconciler at {where}: {exc.__class__.__name__}: {exc}. "
                "Is `fleetkeeper serve` running there? (--server URL)"
            ) from exc
        if resp.status_code in (401, 403):
            raise ConfigError(
                f"{where}: the server refused the admin token ({resp.status_code}); "
                f"pass --token-file FILE or set {ENV_TOKEN}"
            )
        if resp.status_code not in (200, 201):
            raise FleetkeeperError(f"{where}: HTTP {resp.status_code}: {_message(resp)}")
        try:
            return resp.json()
        except ValueError as exc:
            raise FleetkeeperError(f"{where}: the answer is not JSON") from exc

    def create_token(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/tokens``: a new join token, with its secret (shown only this once)."""
        return self._object("POST", "/v1/tokens", request)

    def tokens(self) -> list[dict[str, Any]]:
        doc = self._object("GET", "/v1/tokens")
        tokens = doc.get("tokens")
        if not isinstance(tokens, list):
            raise FleetkeeperError(f"{self.server}/v1/tokens: expected a list of tokens")
        return [t for t in tokens if isinstance(t, dict)]

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return self._object("DELETE", f"/v1/tokens/{quote(token_id, safe='')}")

    def reset_node(self, node: str) -> dict[str, Any]:
        return self._object("POST", f"/v1/nodes/{quote(node, safe='')}/reset")

    def control(
        self, action: str, name: str, reason: str, node: str | None, by: str | None
    ) -> dict[str, Any]:
        """``POST /v1/rollouts/{name}/{action}``: pause, resume, retry, promote, skip-node."""
        body: dict[str, Any] = {"reason": reason}
        if node is not None:
            body["node"] = node
        if by:
            body["by"] = by
        path = f"/v1/rollouts/{quote(name, safe='')}/{quote(action, safe='')}"
        return self._object("POST", path, body)

    def _object(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        doc = self._call(method, path, body=body)
        if not isinstance(doc, dict):
            raise FleetkeeperError(f"{self.server}{path}: expected a JSON object")
        return doc

    def fleet(self) -> dict[str, Any]:
        doc = self._get("/v1/fleet")
        if not isinstance(doc, dict):
            raise FleetkeeperError(f"{self.server}/v1/fleet: expected a JSON object")
        return doc

    def audit(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        params = {"limit": str(limit)}
        if since is not None:
            params["since"] = f"{since:.3f}"
        doc = self._get("/v1/audit", params)
        events = doc.get("events") if isinstance(doc, dict) else doc
        if not isinstance(events, list):
            raise FleetkeeperError(f"{self.server}/v1/audit: expected a list of events")
        return [e for e in events if isinstance(e, dict)]

    def recent_audit(self, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest ``limit`` events at or after ``since``, oldest first.

        The API pages oldest first, so walk forward a page at a time (overlapping by a
        second, since event times are not strictly ordered by id) and keep the tail.
        """
        seen: dict[int, dict[str, Any]] = {}
        cursor = since
        while True:
            page = self.audit(since=cursor, limit=AUDIT_PAGE)
            fresh = [e for e in page if isinstance(e.get("id"), int) and e["id"] not in seen]
            seen.update((e["id"], e) for e in fresh)
            last = page[-1].get("time") if page else None
            if len(page) < AUDIT_PAGE or not fresh or not isinstance(last, int | float):
                break
            cursor = float(last) - 1.0  # the newest by id, not by time
        events = [seen[i] for i in sorted(seen)]
        return events[-limit:] if limit > 0 else []
