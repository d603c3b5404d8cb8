"""Admin, system and webhook endpoints over a real socket (in-process app, real SQLite)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.store.base import AuditEvent
from schema import errors as schema_errors
from tests.helpers.server import ApiHarness, api_harness


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(tmp_path, declared=("a", "b", "c")) as harness:
        yield harness


def _report(node: str, healthy: bool) -> dict[str, object]:
    phase = "Healthy" if healthy else "Failed"
    return {
        "node": node,
        "generation": 1,
        "workloads": [{"name": "agent", "version": "1.0.0", "phase": phase, "healthy": healthy}],
    }


def test_fleet_status_health_and_schema(api: ApiHarness) -> None:
    tokens = {n: api.register(n) for n in ("a", "b", "c")}
    for n in ("a", "b", "c"):
        api.put_desired(n)
    with api.client(tokens["a"]) as c:
        assert c.post("/v1/nodes/a/status", json=_report("a", True)).status_code == 200
    with api.client(tokens["b"]) as c:
        assert c.post("/v1/nodes/b/status", json=_report("b", False)).status_code == 200
    with api.client(api.admin_token) as c:
        r = c.get("/v1/fleet")
    assert r.status_code == 200
    doc = r.json()
    assert schema_errors("fleet-status", doc) == []
    health = {n["node"]: n["health"] for n in doc["nodes"]}
    assert health == {"a": "Healthy", "b": "Unhealthy", "c": "Stale"}
    a = next(n for n in doc["nodes"] if n["node"] == "a")
    assert a["workloads"][0]["desired"] == "1.0.0" and a["workloads"][0]["running"] == "1.0.0"
    assert a["lastSeen"].endswith("Z")


def test_admin_endpoints_need_the_admin_token(api: ApiHarness) -> None:
    node_token = api.register("a")
    for token in (None, "nope", node_token, api.bootstrap_token):
        with api.client(token) as c:
            for path in ("/v1/fleet", "/v1/releases", "/v1/audit"):
                r = c.get(path)
                assert r.status_code == 401, (path, token)
                assert r.json()["error"] == "unauthorized"


def test_audit_since_and_limit(api: ApiHarness) -> None:
    for t in range(5):
        api.ctx.store.append_audit(
            AuditEvent(time=1000.0 + t, kind="applied", message=f"event {t}", revision="a" * 40)
        )
    with api.client(api.admin_token) as c:
        events = c.get("/v1/audit").json()["events"]
        assert [e["message"] for e in events] == [f"event {t}" for t in range(5)]
        assert events[0]["revision"] == "a" * 40 and events[0]["time"] == 1000.0
        got = c.get("/v1/audit", params={"since": "1003", "limit": "1"}).json()["events"]
        assert [e["message"] for e in got] == ["event 3"]
        for bad in ({"since": "yesterday"}, {"limit": "0"}, {"limit": "1.5"}, {"since": "nan"}):
            r = c.get("/v1/audit", params=bad)
            assert r.status_code == 400 and r.json()["error"] == "bad-request", bad


def test_releases_lists_rollouts(api: ApiHarness) -> None:
    with api.client(api.admin_token) as c:
        r = c.get("/v1/releases")
    assert r.status_code == 200 and r.json() == {"releases": []}


def test_metrics_count_polls_and_reports(api: ApiHarness) -> None:
    token = api.register("a")
    rec = api.put_desired("a")
    with api.client(token) as c:
        c.get("/v1/nodes/a/desired")
        c.get("/v1/nodes/a/desired", headers={"If-None-Match": rec.etag})
        c.get("/v1/nodes/a/desired", headers={"If-None-Match": rec.etag})
        c.post("/v1/nodes/a/status", json=_report("a", True))
        assert c.post("/v1/nodes/a/status", json={"node": "a"}).status_code == 422
    with api.client("not a token") as c:
        assert c.post("/v1/nodes/a/status", json=_report("a", True)).status_code == 401

    held: list[int] = []

    def poll() -> None:
        with api.client(token) as c:
            r = c.get("/v1/nodes/a/desired?wait=30", headers={"If-None-Match": rec.etag})
            held.append(r.status_code)

    waiter = threading.Thread(target=poll)
    waiter.start()
    with httpx.Client(base_url=api.url) as c:
        deadline = time.monotonic() + 5
        while "fleetkeeper_long_polls 1.0" not in (text := c.get("/metrics").text):
            assert time.monotonic() < deadline, "the held long-poll is not counted"
            time.sleep(0.02)
        api.put_desired("a", "2.0.0")  # releases the poll
        waiter.join(timeout=10)
        assert held == [200]
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'fleetkeeper_desired_polls_total{result="200"} 2.0' in text
    assert 'fleetkeeper_desired_polls_total{result="304"} 2.0' in text
    assert "fleetkeeper_long_polls 0.0" in text
    assert 'fleetkeeper_reports_total{result="accepted"} 1.0' in text
    assert 'fleetkeeper_reports_total{result="rejected"} 2.0' in text
    assert 'fleetkeeper_nodes{state="Healthy"} 1.0' in text
    assert "fleetkeeper_reconcile_duration_seconds_bucket" in text
    assert "fleetkeeper_revisions_applied_total" in text


def test_health_and_readiness(api: ApiHarness) -> None:
    with httpx.Client(base_url=api.url) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").status_code == 200
        api.ctx.ready = lambda: False
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["error"] == "unavailable"


def test_openapi_document_bundles_the_schemas(api: ApiHarness) -> None:
    with httpx.Client(base_url=api.url) as c:
        doc = c.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    text = json.dumps(doc)
    assert "urn:fleetkeeper" not in text  # every $ref inlined
    body = doc["paths"]["/v1/nodes/{node}/status"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"node", "generation", "workloads"}
    assert {"/v1/fleet", "/v1/releases", "/v1/audit", "/hooks/{provider}", "/metrics"} <= set(
        doc["paths"]
    )


@pytest.mark.parametrize(
    ("provider", "header", "prefix"),
    [
        ("github", "X-Hub-Signature-256", "sha256="),
        ("gitea", "X-Gitea-Signature", ""),
        ("bitbucket", "X-Hub-Signature", "sha256="),
        ("generic", "X-Fleetkeeper-Signature", "sha256="),
    ],
)
def test_webhook_signatures(api: ApiHarness, provider: str, header: str, prefix: str) -> None:
    body = b'{"ref": "refs/heads/main"}'
    good = prefix + hmac.new(api.webhook_secret.encode(), body, hashlib.sha256).hexdigest()
    bad = prefix + hmac.new(b"other secret", body, hashlib.sha256).hexdigest()
    with httpx.Client(base_url=api.url) as c:
        for headers in (
            {},
            {header: bad},
            {header: good[:-1] + ("1" if good.endswith("0") else "0")},
            {header: "garbage"},
        ):
            r = c.post(f"/hooks/{provider}", content=body, headers=headers)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        assert api.triggers == []
        r = c.post(f"/hooks/{provider}", content=body, headers={header: good})
        assert r.status_code == 202 and r.json() == {"triggered": True}
        assert len(api.triggers) == 1
        # the signature covers the exact bytes: a re-serialised body does not verify
        r = c.post(f"/hooks/{provider}", content=body + b" ", headers={header: good})
        assert r.status_code == 401 and len(api.triggers) == 1


def test_unknown_webhook_provider(api: ApiHarness) -> None:
    with httpx.Client(base_url=api.url) as c:
        r = c.post("/hooks/sourcehut", content=b"{}")
    assert r.status_code == 404 and r.json()["error"] == "not-found"


def test_a_steady_scrape_reads_no_node_records_or_documents(api: ApiHarness) -> None:
    """/metrics counts the fleet from memory (reconciler/api/gauges.py): building the
    whole status document of 8,000 nodes every scrape cost about a second of CPU."""
    reads: list[str] = []
    store = api.ctx.store
    for name in ("nodes", "node", "all_desired", "reports"):
        method = getattr(store, name)

        def counted(*args: object, _name: str = name, _method: object = method) -> object:
            reads.append(_name)
            return _method(*args)  # type: ignore[operator]

        setattr(store, name, counted)

    def nodes_gauge(text: str) -> dict[str, float]:
        return {
            line.split('"')[1]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("fleetkeeper_nodes{")
        }

    tokens = {n: api.register(n) for n in ("a", "b")}
    with httpx.Client(base_url=api.url) as c:
        assert nodes_gauge(c.get("/metrics").text) == {
            "Healthy": 0.0,
            "Unhealthy": 0.0,
            "Stale": 3.0,  # c is declared and never registered
        }
        first = list(reads)
        with api.client(tokens["a"]) as node:
            assert node.post("/v1/nodes/a/status", json=_report("a", True)).status_code == 200
        with api.client(tokens["b"]) as node:
            assert node.post("/v1/nodes/b/status", json=_report("b", False)).status_code == 200
        reads.clear()
        got = nodes_gauge(c.get("/metrics").text)
        assert got == {"Healthy": 1.0, "Unhealthy": 1.0, "Stale": 1.0}
        # the same counts as the status document built from the store
        fleet = c.get("/v1/fleet", headers={"Authorization": f"Bearer {api.admin_token}"})
        rows = [n["health"] for n in fleet.json()["nodes"]]
        assert {s: float(rows.count(s)) for s in got} == got
    assert reads[: reads.index("nodes")] == []  # before /v1/fleet: nothing read
    assert "all_desired" not in first and "nodes" not in first


def test_a_slow_store_leaves_metrics_answering_and_says_why(
    api: ApiHarness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The gauges wait ``STATUS_TIMEOUT`` for the store; past it the other metrics still
    answer and the log names the timeout (a TimeoutError's message is empty: the log line
    once ended in nothing)."""
    import reconciler.api.app as app_module

    monkeypatch.setattr(app_module, "STATUS_TIMEOUT", 0.1)
    read = app_module.read_gauges

    def slow(ctx: object) -> object:  # a database that takes its time
        time.sleep(0.5)
        return read(ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(app_module, "read_gauges", slow)
    with caplog.at_level("WARNING", logger="reconciler.api.app"):
        r = httpx.get(f"{api.url}/metrics", timeout=10)
    assert r.status_code == 200 and "fleetkeeper_" in r.text
    said = [m for m in caplog.messages if "without the fleet gauges" in m]
    assert said and said[-1].endswith("TimeoutError"), said
