"""Resource limits of a real agent (issue 10, points 7 and 8): decompression bombs, downloads
that send more than their ``size``, and downloads a newer desired generation makes stale.

The reconciler side is the real API app over a real SQLite store (``api_harness``); the
desired documents are put into the store as the loop does. Artifacts come from a real HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.errors import UnpackError
from agent.unpack import unpack
from tests.helpers.agents import AgentProc, desired_doc, make_agent, workload_doc
from tests.helpers.artifacts import (
    Artifact,
    ArtifactServer,
    bomb_archive,
    build_program,
    free_port,
    many_entries_tarball,
)
from tests.helpers.server import ApiHarness, api_harness

NODE = "node-l"


@dataclass
class Rig:
    harness: ApiHarness
    agent: AgentProc
    port: int

    def publish(self, workloads: Sequence[dict[str, Any]]) -> int:
        """Store a new desired document for the node and wake its long-poll."""
        rec, changed = self.harness.ctx.store.put_desired(NODE, desired_doc(NODE, 0, workloads))
        assert changed
        self.harness.ctx.hub.notify_from_thread(NODE)
        return int(rec.generation)

    def serves(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).text.strip()

    def reported(self, version: str, phase: str) -> bool:
        w = self.agent.workload("hello")
        return w is not None and (w.get("version"), w["phase"]) == (version, phase)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with api_harness(tmp_path) as h:
        agent = make_agent(tmp_path, NODE, h.url, h.bootstrap_token, pollWaitSeconds=2)
        try:
            yield Rig(h, agent, free_port())
        finally:
            agent.stop()
            agent.kill_workloads()


def healthy_on(rig: Rig, srv: ArtifactServer, art: Artifact, version: str) -> dict[str, Any]:
    w = workload_doc("hello", version, art, srv.url(art.path.name), rig.port)
    rig.publish([w])
    if not rig.agent.alive():
        rig.agent.start()
    rig.agent.wait_for(lambda a: rig.reported(version, "Healthy"), what=f"{version} healthy")
    return w


def installed_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# -- point 7: decompression bombs ----------------------------------------------------------
@pytest.mark.parametrize(
    ("fmt", "declared", "expect"),
    [
        # 600 MB of zeros in ~600 KB, no unpackedSize: the 100x bound stops it near 60 MB.
        ("tar.gz", None, "100 times its size"),
        # A zip bomb against a declared unpackedSize of 4 MiB.
        ("zip", 4 << 20, "declared unpackedSize of 4194304 bytes"),
    ],
)
def test_decompression_bomb_is_refused_and_the_old_version_keeps_running(
    rig: Rig, tmp_path: Path, fmt: str, declared: int | None, expect: str
) -> None:
    dist = tmp_path / "dist"
    good = build_program(dist, "hello", "1.0.0")
    bomb = bomb_archive(dist, "hello", "2.0.0", 600 << 20, fmt=fmt)
    assert bomb.size < 2 << 20  # it really is a bomb: > 300x
    with ArtifactServer(dist) as srv:
        healthy_on(rig, srv, good, "1.0.0")
        w = workload_doc("hello", "2.0.0", bomb, srv.url(bomb.path.name), rig.port)
        if declared is not None:
            w["artifact"]["unpackedSize"] = declared
        rig.publish([w])
        rig.agent.wait_for(lambda a: rig.reported("1.0.0", "Failed"), what="bomb refused")
        message = str(rig.agent.workload("hello")["message"])  # type: ignore[index]
        assert "refusing to unpack" in message and expect in message
        assert "share/zeros" in message
        assert rig.serves() == "hello 1.0.0"
        assert rig.agent.current("hello") == "1.0.0"
        versions = rig.agent.install_root / "hello" / "versions"
        assert sorted(p.name for p in versions.iterdir()) == ["1.0.0"]  # staging removed
        # Counted while extracting: nothing near 600 MB was ever kept.
        assert installed_bytes(rig.agent.install_root) < 1 << 20
        bound = declared if declared is not None else 100 * bomb.size
        assert "expands to more than" in message and str(bound) in message


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_archive_with_too_many_entries_is_refused(tmp_path: Path, fmt: str) -> None:
    # unpack() itself with a lower cap: 100,000 real files take a minute to create here.
    many = many_entries_tarball(tmp_path / "dist", "hello", "2.0.0", 1000, fmt=fmt)
    dest = tmp_path / "staging"
    dest.mkdir()
    with pytest.raises(UnpackError, match="more than 500 entries"):
        unpack(many.path, dest, filename=many.path.name, max_entries=500)
    ok = tmp_path / "ok"
    ok.mkdir()
    assert unpack(many.path, ok, filename=many.path.name, max_entries=1001) == fmt
    assert len(list((ok / "junk").iterdir())) == 1000
