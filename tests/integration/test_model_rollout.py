"""Models rolled out end to end: a real reconciler, real agents, real llama.cpp / MLX servers.

Each scenario commits ``models/<name>/<version>.yaml`` through a merged PR to a real fleet
repo; the tiny models are made by the test and served over HTTP from 127.0.0.1. Proof of
health is a completion from the port each node's runtime listens on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.fleet import API, FleetRepo, fleet_doc, node_doc, rollout_block
from tests.helpers.model_servers import runtime_available
from tests.helpers.models import (
    ModelFile,
    corrupt_gguf,
    pack_mlx_model,
    write_gguf,
    write_mlx_model,
)
from tests.helpers.server import RunningServer, running_server

pytestmark = [
    pytest.mark.models,
    pytest.mark.skipif(
        not runtime_available("llama_cpp"),
        reason="llama-cpp-python is not installed (pip install -e '.[llama]'; make test does)",
    ),
]

NAME = "tiny"


def model_file(
    name: str,
    version: str,
    model: ModelFile,
    url: str,
    *,
    runtime: str = "llama-cpp",
    sha256: str | None = None,
    targets: dict[str, Any] | None = None,
    **rollout: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Model",
        "name": name,
        "version": version,
        "runtime": runtime,
        "artifacts": [
            {"platform": "any", "url": url, "sha256": sha256 or model.sha256, "size": model.size}
        ],
        "args": {"port": "${node.labels.model-port}", "contextSize": 128, "threads": 1},
        "health": {"timeoutSeconds": 60},
        "targets": targets or {"roles": ["inference"]},
        "rollout": rollout_block(**rollout),
    }


class Hammer:
    """A client sending one-token completions back to back on its own thread; records
    failures and which version directories answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        url = f"http://127.0.0.1:{self.port}/v1/completions"
        while not self._stop.is_set():
            # A new connection each time: it may reach either server while both listen.
            try:
                with httpx.Client(timeout=30, trust_env=False) as c:
                    r = c.post(url, json={"prompt": "Hi", "max_tokens": 1})
                if r.status_code != 200:
                    self.failures.append(f"HTTP {r.status_code}: {r.text[:200]}")
                else:
                    self.versions.add(Path(str(r.json()["model"])).parent.name)
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Hammer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@dataclass
class Fleet:
    repo: FleetRepo
    server: RunningServer
    agents: list[AgentProc]
    files: ArtifactServer
    ports: dict[str, int]

    def publish(self, model: ModelFile) -> str:
        """Serve ``model`` from the artifact server; its URL."""
        target = self.files.root / model.path.name
        if model.path != target:
            target.write_bytes(model.path.read_bytes())
        return self.files.url(model.path.name)

    def agent(self, node: str) -> AgentProc:
        return next(a for a in self.agents if a.node == node)

    def complete(self, node: str) -> httpx.Response:
        with httpx.Client(timeout=10, trust_env=False) as c:
            return c.post(
                f"http://127.0.0.1:{self.ports[node]}/v1/completions",
                json={"prompt": "Hello", "max_tokens": 2},
            )

    def wait_model(
        self, node: str, version: str, sha256: str, *, phase: str = "Healthy", timeout: float = 60
    ) -> dict[str, Any]:
        agent = self.agent(node)

        def ok(a: AgentProc) -> bool:
            w = a.workload(NAME)
            return bool(
                w and w.get("version") == version and w["phase"] == phase and w["sha256"] == sha256
            )

        agent.wait_for(ok, timeout=timeout, what=f"{NAME} {version} {phase} on {node}")
        w = agent.workload(NAME)
        assert w is not None
        return w

    def release(self, name: str = NAME) -> dict[str, Any]:
        rows = [r for r in self.server.fleet()["releases"] if r["agent"] == name]
        return dict(rows[-1]) if rows else {}


@contextmanager
def model_fleet(
    tmp: Path, nodes: Sequence[str], labels: dict[str, str] | None = None
) -> Iterator[Fleet]:
    ports = {n: free_port() for n in nodes}
    node_files = {
        f"nodes/{n}.yaml": node_doc(n, labels={"model-port": str(ports[n]), **(labels or {})})
        for n in nodes
    }
    repo = FleetRepo.create(tmp / "fleet", {"fleet.yaml": fleet_doc(), **node_files})
    (tmp / "files").mkdir()
    with ExitStack() as stack:
        files = stack.enter_context(ArtifactServer(tmp / "files"))
        server = stack.enter_context(running_server(tmp / "reconciler", repo=repo))
        agents = stack.enter_context(
            running_agents(tmp / "agents", server.url, server.bootstrap_token, list(nodes))
        )
        yield Fleet(repo, server, agents, files, ports)


def test_model_rolls_out_to_two_nodes_then_upgrades_in_stages(tmp_path: Path) -> None:
    v1 = write_gguf(tmp_path / "src" / "tiny-1.0.0.gguf", seed=1)
    v2 = write_gguf(tmp_path / "src" / "tiny-1.1.0.gguf", seed=2)
    with model_fleet(tmp_path, ["node-a", "node-b"]) as fleet:
        doc1 = model_file(NAME, "1.0.0", v1, fleet.publish(v1), batch_size=2, soak=0)
        fleet.repo.change({f"models/{NAME}/1.0.0.yaml": doc1}, "model tiny 1.0.0")
        for node in ("node-a", "node-b"):
            w = fleet.wait_model(node, "1.0.0", v1.sha256)
            assert w["healthy"] is True
            r = fleet.complete(node)
            assert r.status_code == 200 and r.json()["choices"], r.text
        # Registered facts say which runtimes each node can start; status shows them.
        rows = fleet.server.fleet()["nodes"]
        assert sorted(r["node"] for r in rows) == ["node-a", "node-b"]
        assert all(r["runtimes"]["llama-cpp"] is True for r in rows), rows

        doc2 = model_file(NAME, "1.1.0", v2, fleet.publish(v2), batch_size=1, soak=2)
        with Hammer(fleet.ports["node-a"]) as hammer:  # blue/green: no request may fail
            fleet.repo.change({f"models/{NAME}/1.1.0.yaml": doc2}, "model tiny 1.1.0")
            first = fleet.wait_model("node-a", "1.1.0", v2.sha256)
            time.sleep(0.3)
        assert hammer.failures == [], hammer.failures[:3]
        assert {"1.0.0", "1.1.0"} <= hammer.versions, hammer.versions
        # Staged: while node-a soaks on the new model, node-b still serves the old one.
        b = fleet.agent("node-b").workload(NAME)
        assert b is not None and b["version"] == "1.0.0" and b["sha256"] == v1.sha256
        assert fleet.complete("node-b").status_code == 200
        fleet.wait_model("node-b", "1.1.0", v2.sha256)
        for node in ("node-a", "node-b"):
            assert fleet.complete(node).status_code == 200
        assert first["current"] and first["current"].endswith(f"/{NAME}/versions/1.1.0")
        deadline = time.monotonic() + 20
        while fleet.release().get("phase") != "Succeeded" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fleet.release()["version"] == "1.1.0"
        assert fleet.release()["phase"] == "Succeeded"


def test_wrong_sha256_leaves_the_old_model_serving(tmp_path: Path) -> None:
    v1 = write_gguf(tmp_path / "src" / "tiny-1.0.0.gguf", seed=1)
    v2 = write_gguf(tmp_path / "src" / "tiny-2.0.0.gguf", seed=2)
    with model_fleet(tmp_path, ["node-a"]) as fleet:
        doc1 = model_file(NAME, "1.0.0", v1, fleet.publish(v1), soak=0)
        fleet.repo.change({f"models/{NAME}/1.0.0.yaml": doc1}, "model tiny 1.0.0")
        fleet.wait_model("node-a", "1.0.0", v1.sha256)
        pid = fleet.agent("node-a").workload(NAME)["pid"]  # type: ignore[index]

        doc2 = model_file(NAME, "2.0.0", v2, fleet.publish(v2), sha256="0" * 64, soak=0)
        fleet.repo.change({f"models/{NAME}/2.0.0.yaml": doc2}, "model tiny 2.0.0 (bad digest)")

        def failed(a: AgentProc) -> bool:
            w = a.workload(NAME)
            return bool(w and w.get("desiredVersion") == "2.0.0" and w["phase"] == "Failed")

        fleet.agent("node-a").wait_for(failed, timeout=30, what="2.0.0 refused")
        w = fleet.agent("node-a").workload(NAME)
        assert w is not None
        assert "sha256" in w["message"].lower() or "SHA-256" in w["message"], w["message"]
        assert w["version"] == "1.0.0" and w["sha256"] == v1.sha256 and w["pid"] == pid
        assert fleet.complete("node-a").status_code == 200


def test_corrupt_gguf_fails_health_and_rolls_back(tmp_path: Path) -> None:
    v1 = write_gguf(tmp_path / "src" / "tiny-1.0.0.gguf", seed=1)
    bad = corrupt_gguf(tmp_path / "src" / "tiny-1.0.1.gguf")
    with model_fleet(tmp_path, ["node-a"]) as fleet:
        doc1 = model_file(NAME, "1.0.0", v1, fleet.publish(v1), soak=0)
        fleet.repo.change({f"models/{NAME}/1.0.0.yaml": doc1}, "model tiny 1.0.0")
        fleet.wait_model("node-a", "1.0.0", v1.sha256)

        doc2 = model_file(NAME, "1.0.1", bad, fleet.publish(bad), soak=0, on_failure="rollback")
        fleet.repo.change({f"models/{NAME}/1.0.1.yaml": doc2}, "model tiny 1.0.1 (corrupt)")

        def rolled_back(a: AgentProc) -> bool:
            w = a.workload(NAME)
            return bool(
                w
                and w.get("desiredVersion") == "1.0.1"
                and w["phase"] in ("RolledBack", "Failed")
                and w.get("version") == "1.0.0"
            )

        fleet.agent("node-a").wait_for(rolled_back, timeout=60, what="1.0.1 rolled back")
        w = fleet.agent("node-a").workload(NAME)
        assert w is not None
        assert "Failed to load model from file" in w["message"], w["message"]
        assert w["sha256"] == v1.sha256
        assert fleet.complete("node-a").status_code == 200
        assert fleet.agent("node-a").current(NAME) == "1.0.0"


@pytest.mark.skipif(
    not runtime_available("mlx_lm") or not runtime_available("mlx"),
    reason="mlx-lm with an mlx backend is not installed (pip install -e '.[mlx]'; make test does)",
)
def test_mlx_model_rolls_out_to_an_opted_in_linux_node(tmp_path: Path) -> None:
    archive = pack_mlx_model(
        write_mlx_model(tmp_path / "src" / "mlx", seed=3), tmp_path / "src" / "mlx-0.1.0.tar.gz"
    )
    with model_fleet(tmp_path, ["node-a"], labels={"mlx-cpu": "true"}) as fleet:
        doc = model_file(NAME, "0.1.0", archive, fleet.publish(archive), runtime="mlx-lm", soak=0)
        fleet.repo.change({f"models/{NAME}/0.1.0.yaml": doc}, "mlx model 0.1.0")
        w = fleet.wait_model("node-a", "0.1.0", archive.sha256, timeout=90)
        assert w["healthy"] is True
        r = fleet.complete("node-a")
        assert r.status_code == 200 and r.json()["choices"], r.text
