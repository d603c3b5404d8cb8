"""`fleetkeeper --log-format json serve`: one JSON object per line, rollout events carry
revision/release/node, and no secret (admin, bootstrap, node token, webhook secret) leaks.

The nodes here speak the real agent protocol over HTTP (register, desired, status) so the
test controls exactly when a node converges or fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from reconciler.forges import sign
from tests.helpers.fleet import (
    FleetRepo,
    converged_report,
    failed_report,
    fleet_doc,
    fleet_files,
    nodes_named,
    release_doc,
)
from tests.helpers.server import _wait_listening, register_doc, wait_ready, write_config
from tests.helpers.wait import wait_until

ROLLOUT_EVENTS = {"rollout-started", "batch-started", "batch-done", "halted", "succeeded"}


def _wait(what: str, predicate: Any, timeout: float = 20.0) -> Any:
    return wait_until(what, predicate, timeout)


def test_json_logs_carry_context_and_no_secrets(tmp_path: Path) -> None:
    files = fleet_files(
        nodes_named("node-a", "node-b"),
        [release_doc("echo", "1.0.0", batch_size=1, soak=0, timeout=60)],
        fleet_doc(),
    )
    repo = FleetRepo.create(tmp_path / "fleet", files)
    config, secrets = write_config(
        tmp_path / "reconciler", str(repo.path), extra={"pollIntervalSeconds": 0.5}
    )
    out, err = tmp_path / "serve.stdout", tmp_path / "serve.stderr"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler.cli", "--log-format", "json", "serve"]
            + ["--config", str(config)],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ),
        )
    node_tokens: list[str] = []
    try:
        url = _wait_listening(proc, out, err)
        wait_ready(url, proc)
        with httpx.Client(base_url=url, timeout=10) as http:
            admin = {"Authorization": f"Bearer {secrets['admin']}"}
            for node in ("node-a", "node-b"):
                r = http.post(
                    f"/v1/nodes/{node}/register",
                    json=register_doc(node),
                    headers={"Authorization": f"Bearer {secrets['bootstrap']}"},
                )
                assert r.status_code == 200, r.text
                node_tokens.append(r.json()["token"])
            a, b = ({"Authorization": f"Bearer {t}"} for t in node_tokens)
            # secrets presented in the wrong places must not be echoed into the log
            assert http.get("/v1/nodes/node-b/desired", headers=a).status_code in (401, 403)
            assert http.get("/v1/nodes/node-a/desired", headers=admin).status_code in (401, 403)
            assert http.get("/v1/fleet", headers=a).status_code in (401, 403)
            body = b'{"ref": "refs/heads/main"}'
            sig = {"x-fleetkeeper-signature": "sha256=" + sign(secrets["webhook"], body)}
            assert http.post("/hooks/generic", content=body, headers=sig).status_code == 202
            bad = {"x-fleetkeeper-signature": "sha256=" + secrets["webhook"]}
            assert http.post("/hooks/generic", content=body, headers=bad).status_code == 401

            def desired(headers: dict[str, str], node: str) -> dict[str, Any] | None:
                r = http.get(f"/v1/nodes/{node}/desired", headers=headers)
                doc = r.json() if r.status_code == 200 else None
                return doc if doc and doc.get("workloads") else None

            doc_a = _wait("node-a's desired state", lambda: desired(a, "node-a"))
            r = http.post("/v1/nodes/node-a/status", json=converged_report(doc_a), headers=a)
            assert r.status_code in (200, 202, 204), r.text
            doc_b = _wait("batch 2 to reach node-b", lambda: desired(b, "node-b"))
            report = failed_report(doc_b, "echo", None, "sha256 mismatch: expected 00, got ff")
            r = http.post("/v1/nodes/node-b/status", json=report, headers=b)
            assert r.status_code in (200, 202, 204), r.text

            def halted() -> bool:
                fleet = http.get("/v1/fleet", headers=admin).json()
                return any(x["phase"] == "Halted" for x in fleet["releases"])

            _wait("the rollout to halt on node-b", halted)
    finally:
        proc.terminate()
        proc.wait(15)

    lines = [line for line in err.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    rollout = [r for r in records if r.get("event") in ROLLOUT_EVENTS]
    assert rollout, "no rollout event was logged:\n" + "\n".join(lines[-30:])
    assert all(r.get("release") == "echo" and len(r.get("revision", "")) == 40 for r in rollout)
    halts = [r for r in rollout if r["event"] == "halted"]
    assert halts and halts[0].get("node") == "node-b", halts
    assert any(r.get("event") == "approved" and r.get("revision") for r in records)
    registered = {r.get("node") for r in records if r.get("event") == "registered"}
    assert registered == {"node-a", "node-b"}

    everything = out.read_text() + err.read_text()
    leaked = {
        name: value
        for name, value in {**secrets, **{f"node{i}": t for i, t in enumerate(node_tokens)}}.items()
        if value in everything
    }
    assert not leaked, f"secrets in the log: {sorted(leaked)}"
