"""``HttpAgent``: an agent over HTTP that only reports (no downloads), for end-to-end
rollout tests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.helpers.reports import report_doc, simulated_workloads


@dataclass
class HttpAgent:
    """Polls its desired document and reports it running healthy (or Failed / silent)."""

    url: str
    node: str
    token: str
    mode: str = "ok"  # ok | down | fail:<workload>
    running: dict[str, str] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    # monotonic times, keyed "name@version": first seen desired (after the GET returned),
    # first reported healthy (before the POST was sent); bounds for soak assertions
    given_at: dict[str, float] = field(default_factory=dict)
    healthy_at: dict[str, float] = field(default_factory=dict)

    def desired(self) -> dict[str, Any] | None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as c:
            r = c.get(
                f"/v1/nodes/{self.node}/desired",
                headers={"Authorization": f"Bearer {self.token}"},
            )
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        self.last = doc
        now = time.monotonic()
        for w in doc.get("workloads", []):
            self.given_at.setdefault(f"{w['name']}@{w['version']}", now)
        return doc

    def tick(self) -> dict[str, Any] | None:
        """Fetch desired, 'converge', report. Returns the desired document it acted on."""
        import httpx

        if self.mode == "down":
            return None
        doc = self.desired()
        if doc is None:
            return None
        ws = simulated_workloads(self.mode, doc, self.running)
        body = report_doc(self.node, ws, int(doc.get("generation", 0)))
        now = time.monotonic()
        for w in ws:
            if w["healthy"]:
                self.healthy_at.setdefault(f"{w['name']}@{w['version']}", now)
        with httpx.Client(base_url=self.url, timeout=10) as c:
            r = c.post(
                f"/v1/nodes/{self.node}/status",
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        assert r.status_code == 200, r.text
        return doc
