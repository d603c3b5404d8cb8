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
