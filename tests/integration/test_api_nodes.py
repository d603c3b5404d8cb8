"""Agent endpoints over a real socket: register, desired (ETag long-poll), status, auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.api.context import REGISTRATION_WAKE_SECONDS
from schema import errors as schema_errors
from tests.helpers.server import ApiHarness, api_harness, desired_doc, register_doc


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(tmp_path) as harness:
        yield harness


def test_register_returns_token_and_reregister_rotates(api: ApiHarness) -> None:
    t1 = api.register("gpu-1")
    assert len(t1) >= 32
    with api.client(t1) as c:
        assert c.get("/v1/nodes/gpu-1/desired").status_code == 200
    # proof of the current identity: the node's own credential rotates it
    t2 = api.register("gpu-1", t1, roles=["inference", "coding"])
    assert t2 != t1
    with api.client(t1) as c:
        assert c.get("/v1/nodes/gpu-1/desired").status_code == 401  # old token revoked
    with api.client(t2) as c:
        assert c.get("/v1/nodes/gpu-1/desired").status_code == 200
    rec = api.ctx.store.node("gpu-1")
    assert rec.facts["roles"] == ["inference", "coding"]
    assert t2 not in rec.token_hash and len(rec.token_hash) == 64  # stored hashed
    assert [e.kind for e in api.ctx.store.audit()] == ["registered", "registered"]
    assert "credential rotated" in api.ctx.store.audit()[1].message
    # registrations wake the loop REGISTRATION_WAKE_SECONDS later (one pass for a burst)
    _wait_for(lambda: len(api.wakes) >= 1, 5)
    assert 1 <= len(api.wakes) <= 2


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _register_together(api: ApiHarness, secret: str, names: list[str]) -> list[httpx.Response]:
    """Register ``names`` at the same instant, one connection each."""
    clients = [api.client(secret) for _ in names]
    for c in clients:  # connect first, so that only the requests race
        c.get("/healthz")
    barrier = threading.Barrier(len(names))
    answers: dict[str, httpx.Response] = {}

    def one(c: httpx.Client, name: str) -> None:
        barrier.wait()
        answers[name] = c.post(f"/v1/nodes/{name}/register", json=register_doc(name))

    threads = [
        threading.Thread(target=one, args=(c, n)) for c, n in zip(clients, names, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    return [answers[n] for n in names]


def test_registrations_that_arrive_together_share_a_transaction_and_a_pass(
    api: ApiHarness,
) -> None:
    names = [f"fleet-{i:02d}" for i in range(32)]
    secret = api.create_token(roles=["inference"], uses=len(names))["token"]
    before = api.ctx.registrations.transactions
    answers = _register_together(api, secret, names)
    assert [r.status_code for r in answers] == [200] * len(names), [r.text for r in answers]
    tokens = {r.json()["token"] for r in answers}
    assert len(tokens) == len(names)
    commits = api.ctx.registrations.transactions - before
    assert 1 <= commits < len(names)  # group commit: several claims per transaction
    stored = {n.name for n in api.ctx.store.nodes()}
    assert stored == set(names)
    events = [e for e in api.ctx.store.audit() if e.kind == "registered"]
    assert sorted(e.node for e in events) == names  # each claim kept its own audit event
    (join,) = api.ctx.store.join_tokens()
    assert join.used == len(names)
    # every answered credential works at once
    for r, name in zip(answers, names, strict=True):
        with api.client(r.json()["token"]) as c:
            assert c.get(f"/v1/nodes/{name}/desired").status_code == 200
    _wait_for(lambda: len(api.wakes) >= 1, 5)
    time.sleep(REGISTRATION_WAKE_SECONDS + 0.2)  # no further wake is due
    assert len(api.wakes) < len(names) // 4  # one pass for the burst, not one each


def test_a_cached_join_token_spent_or_revoked_elsewhere_is_refused(api: ApiHarness) -> None:
    """The join token record is cached in memory by hash: a use or revocation the cache
    has not seen (another replica, an operator on the database) must still refuse."""
    spent = api.create_token(roles=["inference"], uses=1)
    api.register("fleet-a", spent["token"])  # cached now, with used=0 in memory
    with api.client(spent["token"]) as c:
        r = c.post("/v1/nodes/fleet-b/register", json=register_doc("fleet-b"))
    assert r.status_code == 401, r.text
    assert api.ctx.store.node("fleet-b") is None

    revoked = api.create_token(roles=["inference"], uses=5)
    api.register("fleet-c", revoked["token"])  # cached as active
    api.ctx.store.revoke_join_token(revoked["id"], time.time())  # behind the API's back
    with api.client(revoked["token"]) as c:
        r = c.post("/v1/nodes/fleet-d/register", json=register_doc("fleet-d"))
    assert r.status_code == 401, r.text
    assert "no longer active" in r.json()["message"]
    assert api.ctx.store.node("fleet-d") is None
    refused = [e for e in api.ctx.store.audit() if e.kind == "registration-refused"]
    assert [e.node for e in refused] == ["fleet-b", "fleet-d"]
    assert all(e.details["reason"] == "token-spent" for e in refused[1:])
    # and the cache forgot it: the next attempt reads the store and says why precisely
    with api.client(revoked["token"]) as c:
        r = c.post("/v1/nodes/fleet-e/register", json=register_doc("fleet-e"))
    assert r.status_code == 401 and "revoked" in r.json()["message"], r.text


def test_register_needs_the_bootstrap_token(api: ApiHarness) -> None:
    body = register_doc("gpu-1")
    with api.client() as c:
        r = c.post("/v1/nodes/gpu-1/register", json=body)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    with api.client("wrong-token") as c:
        assert c.post("/v1/nodes/gpu-1/register", json=body).status_code == 401
    with api.client(api.admin_token) as c:
        assert c.post("/v1/nodes/gpu-1/register", json=body).status_code == 401
    with api.client(api.bootstrap_token) as c:
        r = c.post("/v1/nodes/gpu-2/register", json=body)
        assert r.status_code == 422 and "URL names 'gpu-2'" in r.json()["message"]


def test_desired_before_any_document_is_generation_zero(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    with api.client(token) as c:
        r = c.get("/v1/nodes/gpu-1/desired")
    assert r.status_code == 200
    doc = r.json()
    assert schema_errors("desired-state", doc) == []
    assert (doc["generation"], doc["workloads"], doc["node"]) == (0, [], "gpu-1")
    assert r.headers["etag"]


def test_desired_etag_and_304(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    rec = api.put_desired("gpu-1")
    with api.client(token) as c:
        r = c.get("/v1/nodes/gpu-1/desired")
        assert r.status_code == 200 and r.headers["etag"] == rec.etag
        assert r.json()["generation"] == 1
        assert schema_errors("desired-state", r.json()) == []
        r2 = c.get("/v1/nodes/gpu-1/desired", headers={"If-None-Match": rec.etag})
        assert r2.status_code == 304 and r2.headers["etag"] == rec.etag and r2.content == b""
        r3 = c.get("/v1/nodes/gpu-1/desired", headers={"If-None-Match": '"stale"'})
        assert r3.status_code == 200


def _change_latency(api: ApiHarness, token: str, version: str) -> float:
    """Seconds from a committed change of gpu-1's document to its waiting poller's answer."""
    with api.client(token) as c:
        etag = c.get("/v1/nodes/gpu-1/desired").headers["etag"]  # what the agent holds
    got: dict[str, object] = {}

    def poll() -> None:
        with api.client(token) as c:
            r = c.get(
                "/v1/nodes/gpu-1/desired", params={"wait": 30}, headers={"If-None-Match": etag}
            )
            got["at"] = time.monotonic()
            got["status"] = r.status_code
            got["version"] = r.json()["workloads"][0]["version"]

    t = threading.Thread(target=poll)
    t.start()
    time.sleep(0.3)  # the poller is waiting now
    assert "at" not in got
    # as the loop does, from a thread that is not the event loop's: write, then notify
    api.ctx.store.put_desired("gpu-1", desired_doc("gpu-1", version))
    changed_at = time.monotonic()  # the change is committed: the clock starts
    api.ctx.hub.notify_from_thread("gpu-1")
    t.join(timeout=5)
    assert got["status"] == 200 and got["version"] == version
    return float(got["at"]) - changed_at  # type: ignore[arg-type]


def test_long_poll_returns_within_100ms_of_a_change(api: ApiHarness) -> None:
    """The best of three rounds: one scheduling hiccup of a loaded 2-core CI machine is not
    the hub's latency, but a hub that scans or delays its waiters misses in every round."""
    token = api.register("gpu-1")
    api.put_desired("gpu-1", "1.0.0")
    latencies: list[float] = []
    for version in ("1.1.0", "1.2.0", "1.3.0"):
        latencies.append(_change_latency(api, token, version))
        if latencies[-1] < 0.1:
            break
    shown = ", ".join(f"{x * 1000:.0f} ms" for x in latencies)
    assert min(latencies) < 0.1, f"long-poll answered {shown} after the change"


def test_long_poll_times_out_with_304(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    rec = api.put_desired("gpu-1")
    with api.client(token) as c:
        start = time.monotonic()
        r = c.get(
            "/v1/nodes/gpu-1/desired", params={"wait": 0.3}, headers={"If-None-Match": rec.etag}
        )
        elapsed = time.monotonic() - start
    assert r.status_code == 304
    assert 0.25 <= elapsed < 2


def test_node_token_opens_only_its_own_node(api: ApiHarness) -> None:
    ta = api.register("node-a")
    api.register("node-b")
    with api.client(ta) as c:
        r = c.get("/v1/nodes/node-b/desired")
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        report = {"node": "node-b", "generation": 0, "workloads": []}
        assert c.post("/v1/nodes/node-b/status", json=report).status_code == 403
        assert c.get("/v1/fleet").status_code == 401  # a node token is no admin token
    with api.client("not-a-token") as c:
        assert c.get("/v1/nodes/node-a/desired").status_code == 401
    with httpx.Client(base_url=api.url) as c:
        r = c.get("/v1/nodes/node-a/desired")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_status_report_is_stored_and_wakes_the_loop(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    api.put_desired("gpu-1")
    wakes_before = len(api.wakes)
    report = {
        "node": "gpu-1",
        "generation": 1,
        "agentVersion": "0.1.0",
        "workloads": [{"name": "agent", "version": "1.0.0", "phase": "Healthy", "healthy": True}],
    }
    with api.client(token) as c:
        r = c.post("/v1/nodes/gpu-1/status", json=report)
    assert r.status_code == 200 and r.json() == {"node": "gpu-1", "generation": 1}
    assert len(api.wakes) == wakes_before + 1
    (stored,) = api.ctx.store.reports()
    assert stored.node == "gpu-1" and stored.report == report


def test_desired_wait_parameter_is_checked(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    with api.client(token) as c:
        for bad in ("abc", "-1", "nan", "inf"):
            r = c.get("/v1/nodes/gpu-1/desired", params={"wait": bad})
            assert r.status_code == 400, bad
            assert r.json()["error"] == "bad-request"


def test_desired_document_round_trips_the_stored_one(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    api.put_desired("gpu-1", "2.0.0")
    with api.client(token) as c:
        doc = c.get("/v1/nodes/gpu-1/desired").json()
    want = {**desired_doc("gpu-1", "2.0.0"), "generation": 1}
    assert doc == want


def test_conditional_get_fast_path_still_checks_the_token(api: ApiHarness) -> None:
    """The 304 fast path answers only the owner; anyone else gets the full refusal."""
    ta = api.register("node-a")
    tb = api.register("node-b")
    rec = api.put_desired("node-b")
    cases = [
        (tb, 304),  # the owner, matching ETag
        (ta, 403),  # another node's token, even with the right ETag
        ("nope", 401),
    ]
    for token, want in cases:
        with api.client(token) as c:
            for query in ("", "?wait=0"):
                r = c.get(f"/v1/nodes/node-b/desired{query}", headers={"If-None-Match": rec.etag})
                assert r.status_code == want, (token, query, r.text)
    with httpx.Client(base_url=api.url) as c:
        r = c.get("/v1/nodes/node-b/desired", headers={"If-None-Match": rec.etag})
        assert r.status_code == 401


def test_repeated_heartbeat_does_not_wake_the_loop(api: ApiHarness) -> None:
    token = api.register("gpu-1")
    report = {"node": "gpu-1", "generation": 0, "workloads": []}
    changed = {**report, "generation": 1}
    with api.client(token) as c:
        before = len(api.wakes)
        for _ in range(3):
            assert c.post("/v1/nodes/gpu-1/status", json=report).status_code == 200
        assert len(api.wakes) == before + 1  # only the first was news
        assert c.post("/v1/nodes/gpu-1/status", json=changed).status_code == 200
        assert len(api.wakes) == before + 2
    (stored,) = api.ctx.store.reports()
    assert stored.report == changed  # every heartbeat is stored (last seen moves on)
