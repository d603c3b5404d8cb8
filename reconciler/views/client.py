"""The admin side of the reconciler's HTTP API, for ``status`` and ``audit`` (I/O).

The admin token comes from ``--token-file`` or ``FLEETKEEPER_TOKEN`` and travels only as
``Authorization: Bearer``; it never appears in an error message.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


class AdminClient:
    """GET /v1/fleet and /v1/audit with the admin token."""

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
        where = sanitize(f"{self.server}{path}")
        try:
            resp = self._http.get(path, params=params)
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
        if resp.status_code != 200:
            raise FleetkeeperError(f"{where}: HTTP {resp.status_code}: {resp.text[:300]}")
        try:
            return resp.json()
        except ValueError as exc:
            raise FleetkeeperError(f"{where}: the answer is not JSON") from exc

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
