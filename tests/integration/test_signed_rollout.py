"""A real agent pinned to the real reconciler's key (made with ``ssh-keygen``): documents
verify, a rollout works, old agents still get the plain form, and the reconciler's key
rotates with the agent trusting old and new while it does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import yaml

import schema
from fleetkeeper_common.signing import ENVELOPE_TYPE, keyid
from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fakereconciler import new_key
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc
from tests.helpers.server import restart, start_server
from tests.helpers.wait import wait_until

NODE = "node-s"


def healthy(version: str) -> Any:
    def check(a: AgentProc) -> bool:
        w = a.workload("hello")
        return bool(w and (w["phase"], w["version"]) == ("Healthy", version))

    return check


def test_pinned_key_rollout_and_rotation(tmp_path: Path) -> None:
    port = free_port()
    old, new = tmp_path / "keys" / "old", tmp_path / "keys" / "new"
    old.parent.mkdir()
    new_key(old)
    new_id = keyid(new_key(new).public_key())
    repo = FleetRepo.create(
        tmp_path / "fleet",
        {
            "fleet.yaml": fleet_doc(),
            f"nodes/{NODE}.yaml": node_doc(NODE, labels={"port": str(port)}),
        },
    )
    server = start_server(
        tmp_path / "server",
        repo=repo,
        extra_config={
            "pollIntervalSeconds": 1,
            "listen": f"127.0.0.1:{free_port()}",
            "signingKeyFile": str(old),
        },
    )
    (tmp_path / "dist").mkdir()
    trusted = tmp_path / "trusted_keys"
    trusted.write_text(old.with_suffix(".pub").read_text() + new.with_suffix(".pub").read_text())
    try:
        with (
            ArtifactServer(tmp_path / "dist") as arts,
            running_agents(
                tmp_path, server.url, server.bootstrap_token, [NODE], trustedKeys=str(trusted)
            ) as (agent,),
        ):
            served = httpx.get(server.url + "/v1/signing-key").text
            assert served.split()[:2] == old.with_suffix(".pub").read_text().split()[:2]

            a1 = build_program(tmp_path / "dist", "hello", "1.0.0")
            repo.change(
                {"releases/hello/1.0.0.yaml": hello_release("1.0.0", a1, arts.url(a1.path.name))},
                "hello 1.0.0",
            )
            agent.wait_for(healthy("1.0.0"), timeout=40, what="1.0.0 healthy")
            assert httpx.get(f"http://127.0.0.1:{port}/healthz").text.strip() == "hello 1.0.0"
            assert "trust on first use" not in agent.logs()
            (row,) = [n for n in server.fleet()["nodes"] if n["node"] == NODE]
            assert row["desired"]["phase"] == "Accepted"  # the reconciler sees the node's verdict

            token = agent.state_dir.joinpath("node.token").read_text().strip()
            url = f"{server.url}/v1/nodes/{NODE}/desired"
            auth = {"Authorization": f"Bearer {token}"}
            first = httpx.get(url, headers={**auth, "Accept": ENVELOPE_TYPE})
            signed = first.json()
            # the 304 fast path holds for the signed form: the ETag is all it compares
            again = httpx.get(url, headers={**auth, "If-None-Match": first.headers["etag"]})
            assert again.status_code == 304
            assert schema.errors("signed-desired-state", signed) == []
            plain = httpx.get(url, headers=auth).json()  # what an old agent asks for
            assert (
                "signatures" not in plain and plain["generation"] == signed["signed"]["generation"]
            )
            assert schema.errors("desired-state", plain) == []

            # Rotation: the reconciler restarts with the new key; the agent trusts both.
            config = yaml.safe_load(server.config_path.read_text())
            config["signingKeyFile"] = str(new)
            server.config_path.write_text(yaml.safe_dump(config))
            server = restart(server)
            agent.wait_for(
                lambda a: f"re-signed, signed by {new_id}" in a.logs(),
                timeout=30,
                what="re-signed by new key",
            )
            a2 = build_program(tmp_path / "dist", "hello", "1.1.0")
            repo.change(
                {"releases/hello/1.1.0.yaml": hello_release("1.1.0", a2, arts.url(a2.path.name))},
                "hello 1.1.0",
            )
            agent.wait_for(
                healthy("1.1.0"), timeout=40, what="1.1.0 healthy, signed by the new key"
            )
            assert "refused desired state" not in agent.logs()
    finally:
        server.stop()


def test_a_fleet_converges_on_batch_signed_documents_and_old_agents_get_single(
    tmp_path: Path,
) -> None:
    """Several real agents against the real reconciler: the rollout's documents are signed
    as one batch (one signature, each envelope with its inclusion proof) and every node
    converges; a client that asks as the previous release did gets the single-signature
    form of the same document, which verifies the way that release verifies it."""
    import base64
    import json

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from fleetkeeper_common.signing import BATCH_TYPE, canonical_bytes

    nodes = ["bat-1", "bat-2", "bat-3"]
    ports = {n: free_port() for n in nodes}
    key = tmp_path / "keys" / "k"
    key.parent.mkdir()
    new_key(key)
    repo = FleetRepo.create(
        tmp_path / "fleet",
        {
            "fleet.yaml": fleet_doc(),
            **{f"nodes/{n}.yaml": node_doc(n, labels={"port": str(ports[n])}) for n in nodes},
        },
    )
    server = start_server(
        tmp_path / "server",
        repo=repo,
        extra_config={
            "pollIntervalSeconds": 1,
            "listen": f"127.0.0.1:{free_port()}",
            "signingKeyFile": str(key),
        },
    )
    (tmp_path / "dist").mkdir()
    trusted = tmp_path / "trusted_keys"
    trusted.write_text(key.with_suffix(".pub").read_text())
    try:
        with (
            ArtifactServer(tmp_path / "dist") as arts,
            running_agents(
                tmp_path, server.url, server.bootstrap_token, nodes, trustedKeys=str(trusted)
            ) as agents,
        ):
            # every node registered before the release: one pass then has all three
            wait_until(
                "three nodes registered",
                lambda: {n["node"] for n in server.fleet()["nodes"] if n["lastSeen"]} >= set(nodes),
                timeout=30,
            )
            a1 = build_program(tmp_path / "dist", "hello", "1.0.0")
            release = hello_release("1.0.0", a1, arts.url(a1.path.name))
            release["rollout"]["batchSize"] = "100%"  # one pass publishes every node's document
            repo.change({"releases/hello/1.0.0.yaml": release}, "hello 1.0.0")
            for agent in agents:
                agent.wait_for(healthy("1.0.0"), timeout=60, what=f"{agent.node} 1.0.0 healthy")
                port = ports[agent.node]
                assert httpx.get(f"http://127.0.0.1:{port}/healthz").text.strip() == "hello 1.0.0"
                assert "refused desired state" not in agent.logs()

            sigs, bodies = set(), {}
            for agent in agents:
                token = agent.state_dir.joinpath("node.token").read_text().strip()
                url = f"{server.url}/v1/nodes/{agent.node}/desired"
                auth = {"Authorization": f"Bearer {token}"}
                got = httpx.get(url, headers={**auth, "Accept": BATCH_TYPE})
                assert got.headers["content-type"] == BATCH_TYPE
                envelope = got.json()
                assert schema.errors("signed-desired-state", envelope) == []
                (sig,) = envelope["signatures"]
                assert sig["proof"]["size"] == len(nodes)  # the three signed together
                sigs.add(sig["sig"])
                bodies[agent.node] = envelope
                # the previous release's request: the single form, no proof
                old = httpx.get(url, headers={**auth, "Accept": ENVELOPE_TYPE})
                assert old.headers["content-type"] == ENVELOPE_TYPE
                assert old.headers["etag"] == got.headers["etag"]
                single = old.json()
                assert single["signed"] == envelope["signed"]
                (old_sig,) = single["signatures"]
                assert set(old_sig) == {"keyid", "sig"}
                public = serialization.load_ssh_public_key(key.with_suffix(".pub").read_bytes())
                assert isinstance(public, Ed25519PublicKey)
                # verified as the previous release does: Ed25519 over context + canonical
                public.verify(
                    base64.b64decode(old_sig["sig"]),
                    b"fleetkeeper desired-state v1\n" + canonical_bytes(single["signed"]),
                )
                assert json.loads(old.content) == single
            assert len(sigs) == 1  # one signature for the whole batch
            assert {b["signatures"][0]["proof"]["index"] for b in bodies.values()} == {0, 1, 2}
    finally:
        server.stop()
