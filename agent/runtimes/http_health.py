"""HTTP health check shared by runtimes: GET a URL, 2xx is healthy."""

from __future__ import annotations

import httpx

from agent.runtimes.base import HealthResult


def check_http(url: str, timeout: float) -> HealthResult:
    """One GET of ``url``; healthy on 2xx. Never raises: errors become an unhealthy result."""
    try:
        with httpx.Client(timeout=max(timeout, 0.1), trust_env=False) as client:
            resp = client.get(url)
    except httpx.HTTPError as exc:
        return HealthResult(False, f"GET {url}: {type(exc).__name__}: {exc}")
    ok = 200 <= resp.status_code < 300
    return HealthResult(
        ok,
        f"GET {url}: HTTP {resp.status_code}",
        {"status": resp.status_code, "body": resp.text[:200]},
    )
