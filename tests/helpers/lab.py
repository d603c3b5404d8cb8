"""A fleet repo, a real ``fleetkeeper serve`` on it and an artifact server, for end-to-end
tests with real agents::

    with fleet_lab(FleetLab, tmp, ("node-a", "node-b")) as lab:
        art = build_program(lab.tmp / "dist", "hello", "1.0.0")
        lab.repo.change({"releases/hello/1.0.0.yaml": hello_release("1.0.0", art, lab.url(art))})
        lab.workload_get("node-a", "/healthz")  # what the node's workload serves, or None

Each node is labelled with a free ``port`` for its workload (``lab.ports``); artifacts are
served from ``tmp/dist``. Both servers are stopped on exit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.helpers.artifact_server import ArtifactServer
from tests.helpers.artifacts import Artifact
from tests.helpers.fleet import FleetRepo
from tests.helpers.server import RunningServer, start_fleet


@dataclass
class FleetLab:
    tmp: Path
    repo: FleetRepo
    server: RunningServer
    artifacts: ArtifactServer
    ports: Mapping[str, int]  # node -> its workload's port (the node's ``port`` label)

    def url(self, art: Artifact) -> str:
        """Where the artifact server serves ``art``."""
        return self.artifacts.url(art.path.name)

    def workload_get(self, node: str, path: str) -> httpx.Response | None:
        """GET ``path`` from the workload on ``node``'s port (None: nothing answers)."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[node]}{path}", timeout=1)
        except httpx.HTTPError:
            return None


L = TypeVar("L", bound=FleetLab)


@contextmanager
def fleet_lab(
    kind: type[L],
    tmp: Path,
    nodes: Sequence[str],
    *,
    labels: Mapping[str, str] | None = None,
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[L]:
    """A ``kind`` (``FleetLab`` or a test's own subclass) over a fresh fleet of ``nodes``;
    on exit the artifact server and ``lab.server`` (a restarted one too) are stopped."""
    repo, server, ports = start_fleet(tmp, nodes, labels=labels, extra_config=extra_config)
    (tmp / "dist").mkdir()
    lab: L | None = None
    try:
        with ArtifactServer(tmp / "dist") as artifacts:
            lab = kind(tmp, repo, server, artifacts, ports)
            yield lab
    finally:
        (server if lab is None else lab.server).stop()
