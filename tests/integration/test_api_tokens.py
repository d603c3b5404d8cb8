"""Join-token and node-reset endpoints over a real socket: admin only, bodies checked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import schema
from tests.helpers.server import ApiHarness, api_harness, register_doc


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiHarness]:
    with api_harness(tmp_path) as harness:
        yield harness


def test_token_endpoints_need_the_admin_token(api: ApiHarness) -> None:
    node = api.register("gpu-1")
    for token in (None, "nope", node, api.bootstrap_token):
        with api.client(token) as c:
            assert c.post("/v1/tokens", json={}).status_code == 401
            assert c.get("/v1/tokens").status_code == 401
            assert c.delete("/v1/tokens/abc").status_code == 401
            assert c.post("/v1/nodes/gpu-1/reset").status_code == 401
    with api.client(node) as c:  # the node was not reset by any of that
        assert c.get("/v1/nodes/gpu-1/desired").status_code == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"node": "gpu-1", "roles": ["a"]}, "should not be valid"),
        ({"uses": 0}, "uses"),
        ({"ttlSeconds": -1}, "ttlSeconds"),
        ({"labels": {"bad key!": "x"}}, "labels"),
        ({"node": "Not_A_Name"}, "node"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_token_requests_are_refused_with_the_reason(
    api: ApiHarness, body: dict[str, object], needle: str
) -> None:
    with api.client(api.admin_token) as c:
        r = c.post("/v1/tokens", json=body)
        assert r.status_code == 422 and needle in r.json()["message"], r.text
        assert c.get("/v1/tokens").json() == {"tokens": []}  # nothing was created


def test_create_list_revoke_and_the_secret_is_shown_once(api: ApiHarness) -> None:
    created = api.create_token(roles=["inference"], labels={"site": "lab"}, uses=2)
    assert schema.errors("join-token", created) == []
    assert created["state"] == "active" and created["token"].startswith("fkjoin_")
    stored = api.ctx.store.join_tokens()[0]
    assert created["token"] not in repr(stored) and len(stored.token_hash) == 64
    with api.client(api.admin_token) as c:
        listed = c.get("/v1/tokens").json()["tokens"]
        assert [t["id"] for t in listed] == [created["id"]] and "token" not in listed[0]
        assert all(schema.errors("join-token", t) == [] for t in listed)
        revoked = c.delete(f"/v1/tokens/{created['id']}").json()
        assert revoked["state"] == "revoked" and revoked["revokedAt"] is not None
        assert c.delete("/v1/tokens/000000000000").status_code == 404
    kinds = [e.kind for e in api.ctx.store.audit()]
    assert kinds == ["join-token-created", "join-token-revoked"]


def test_another_nodes_credential_cannot_register_a_name(api: ApiHarness) -> None:
    a = api.register("node-a")
    with api.client(a) as c:
        r = c.post("/v1/nodes/node-b/register", json=register_doc("node-b"))
    assert r.status_code == 403 and "another node's credential" in r.json()["message"]
    assert api.ctx.store.node("node-b") is None


def test_reset_of_an_unknown_node_is_404_and_audits_nothing(api: ApiHarness) -> None:
    with api.client(api.admin_token) as c:
        r = c.post("/v1/nodes/gpu-1/reset")
    assert r.status_code == 404 and "not registered" in r.json()["message"]
    assert list(api.ctx.store.audit()) == []
