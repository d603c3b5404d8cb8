"""Resource limits of a real agent (issue 10, points 7 and 8): decompression bombs, downloads
that send more than their ``size``, and downloads a newer desired generation makes stale.

The reconciler side is the real API app over a real SQLite store (``api_harness``); the
desired documents are put into the store as the loop does. Artifacts come from a real HTTP
server on 127.0.0.1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
    with api_harness(tmp_path, declared=(NODE,), sign=True) as h:
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


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 300 MiB filesystem (tmpfs), to run out of space on."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_unpacking_into_the_free_space_reserve_is_refused(tmp_path: Path, small_disk: Path) -> None:
    # unpackedSize allows 200 MB, but the disk has 300 MiB and keeps 256 MiB free.
    with api_harness(tmp_path, declared=(NODE,), sign=True) as h:
        agent = make_agent(
            tmp_path, NODE, h.url, h.bootstrap_token, installRoot=str(small_disk / "root")
        )
        rig = Rig(h, agent, free_port())
        dist = tmp_path / "dist"
        good = build_program(dist, "hello", "1.0.0")
        big = bomb_archive(dist, "hello", "2.0.0", 100 << 20)
        try:
            with ArtifactServer(dist) as srv:
                healthy_on(rig, srv, good, "1.0.0")
                w = workload_doc("hello", "2.0.0", big, srv.url(big.path.name), rig.port)
                w["artifact"]["unpackedSize"] = 200 << 20
                rig.publish([w])
                agent.wait_for(lambda a: rig.reported("1.0.0", "Failed"), what="disk refused")
                message = str(agent.workload("hello")["message"])  # type: ignore[index]
                assert "below the reserve of 268435456 bytes" in message
                assert rig.serves() == "hello 1.0.0"
                assert shutil.disk_usage(small_disk).free > 250 << 20  # staging was removed
        finally:
            agent.stop()
            agent.kill_workloads()


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


# -- point 8: downloads are bounded by size and dropped when stale -------------------------
def downloads(agent: AgentProc) -> Path:
    return agent.install_root / "hello" / "downloads"


def test_server_that_never_stops_sending_is_cut_at_size(rig: Rig, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    good = build_program(dist, "hello", "1.0.0")
    new = build_program(dist, "hello", "1.1.0", padding=256 << 10)
    with ArtifactServer(dist) as srv:
        healthy_on(rig, srv, good, "1.0.0")
        srv.flood(new.path.name)  # endless zeros, no Content-Length
        rig.publish([workload_doc("hello", "1.1.0", new, srv.url(new.path.name), rig.port)])
        rig.agent.wait_for(lambda a: rig.reported("1.0.0", "Failed"), what="flood refused")
        message = str(rig.agent.workload("hello")["message"])  # type: ignore[index]
        assert f"sends more than the expected {new.size} bytes" in message
        # Refused (not retried five times) and not kept: the stream was cut near size.
        assert srv.requests[new.path.name] == 1
        assert srv.sent[new.path.name] < new.size + (16 << 20)  # socket buffers, no more
        assert list(downloads(rig.agent).glob("*.part")) == []
        assert rig.serves() == "hello 1.0.0"


def test_server_announcing_more_than_size_is_refused(rig: Rig, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    good = build_program(dist, "hello", "1.0.0")
    new = build_program(dist, "hello", "1.1.0")
    with ArtifactServer(dist) as srv:
        healthy_on(rig, srv, good, "1.0.0")
        w = workload_doc("hello", "1.1.0", new, srv.url(new.path.name), rig.port)
        w["artifact"]["size"] = new.size - 1
        rig.publish([w])
        rig.agent.wait_for(lambda a: rig.reported("1.0.0", "Failed"), what="size refused")
        message = str(rig.agent.workload("hello")["message"])  # type: ignore[index]
        assert f"announces {new.size} bytes, more than the expected {new.size - 1}" in message
        assert srv.requests[new.path.name] == 1  # refused, not retried
        assert list(downloads(rig.agent).glob("*.part")) == []


def stale_then_fresh(tmp_path: Path, srv_dist: Path) -> tuple[Artifact, Artifact]:
    slow = build_program(srv_dist, "hello", "2.0.0", padding=4 << 20)
    fresh = build_program(srv_dist, "hello", "2.1.0")
    return slow, fresh


def test_newer_generation_abandons_the_download_in_flight(rig: Rig, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    slow, fresh = stale_then_fresh(tmp_path, dist)
    with ArtifactServer(dist) as srv:
        srv.slow_down(slow.path.name, 0.2)  # 4 MiB at 320 KiB/s: about 13 s
        rig.publish([workload_doc("hello", "2.0.0", slow, srv.url(slow.path.name), rig.port)])
        rig.agent.start()
        rig.agent.wait_for(
            lambda a: srv.sent[slow.path.name] > 256 << 10, what="slow download under way"
        )
        rig.publish([workload_doc("hello", "2.1.0", fresh, srv.url(fresh.path.name), rig.port)])
        rig.agent.wait_for(lambda a: rig.reported("2.1.0", "Healthy"), what="2.1.0 healthy")
        assert rig.serves() == "hello 2.1.0"
        # It did not wait for the stale 4 MiB (about 13 s at this rate): never sent whole.
        assert srv.completed[slow.path.name] == 0
        assert srv.sent[slow.path.name] < slow.size
        assert list(downloads(rig.agent).glob("*.part")) == []
        assert not (rig.agent.install_root / "hello" / "versions" / "2.0.0").exists()
        assert "dropped the download" in rig.agent.logs()


def test_restarted_agent_does_not_resume_a_stale_download(rig: Rig, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    slow, fresh = stale_then_fresh(tmp_path, dist)
    with ArtifactServer(dist) as srv:
        srv.slow_down(slow.path.name, 0.2)
        rig.publish([workload_doc("hello", "2.0.0", slow, srv.url(slow.path.name), rig.port)])
        rig.agent.start()
        part = downloads(rig.agent) / f"{slow.sha256}.part"
        rig.agent.wait_for(
            lambda a: part.exists() and part.stat().st_size > 256 << 10, what="partial download"
        )
        rig.agent.kill()  # SIGKILL mid-download: the .part and the old document stay
        # While the agent is down, the reconciler moves on.
        rig.publish([workload_doc("hello", "2.1.0", fresh, srv.url(fresh.path.name), rig.port)])
        rig.agent.start()
        rig.agent.wait_for(lambda a: rig.reported("2.1.0", "Healthy"), what="2.1.0 healthy")
        assert srv.completed[slow.path.name] == 0
        assert not part.exists()
        assert not (rig.agent.install_root / "hello" / "versions" / "2.0.0").exists()
