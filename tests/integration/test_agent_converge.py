"""Converge one workload for real: artifact server on 127.0.0.1, real unpack, real processes."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent import procinfo
from agent.board import Board
from agent.converge import Converger, Outcome
from agent.report import decide_phase
from agent.state import StateDir
from agent.supervise.child import ChildSupervisor
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import Artifact, build_program, describe, evil_tarball
from tests.helpers.desired import workload_doc


@dataclass
class Rig:
    tmp: Path
    dist: Path
    server: ArtifactServer
    conv: Converger
    sup: ChildSupervisor
    state: StateDir
    port: int
    generation: int = 0

    def build(self, version: str, **kw: Any) -> Artifact:
        return build_program(self.dist, "hello", version, **kw)

    def doc(self, version: str, art: Artifact, **kw: Any) -> dict[str, Any]:
        return workload_doc("hello", version, art, self.server.url(art.path.name), self.port, **kw)

    def converge(self, w: dict[str, Any], *, same_doc: bool = False) -> Outcome:
        if not same_doc:
            self.generation += 1
        return self.conv.converge({"generation": self.generation, "workloads": [w]})[0]

    def served_version(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).text.strip()

    def current(self) -> str | None:
        try:
            return Path(os.readlink(self.conv.root / "hello" / "current")).name
        except OSError:
            return None


def make_rig(tmp: Path, root: Path | None = None) -> tuple[Rig, ArtifactServer]:
    dist = tmp / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    server = ArtifactServer(dist).__enter__()
    state = StateDir(tmp / "state")
    state.ensure()
    sup = ChildSupervisor(state, grace_seconds=2)
    conv = Converger(
        install_root=root or tmp / "root",
        state=state,
        supervisor=sup,
        board=Board(),
        exit_code=sup.exit_code,
    )
    return Rig(tmp, dist, server, conv, sup, state, free_port()), server


@contextmanager
def running_rig(tmp: Path, root: Path | None = None) -> Iterator[Rig]:
    """``make_rig``, its workload stopped and its artifact server closed on the way out."""
    r, server = make_rig(tmp, root)
    try:
        yield r
    finally:
        r.sup.stop("hello")
        server.__exit__(None, None, None)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with running_rig(tmp_path) as r:
        yield r


def test_install_then_update_proves_a_new_process_of_the_new_version(rig: Rig) -> None:
    a1, a2 = rig.build("1.0.0"), rig.build("1.1.0")
    out = rig.converge(rig.doc("1.0.0", a1))
    assert out.ok, out.message
    first = rig.sup.running("hello")
    assert first is not None and rig.served_version() == "hello 1.0.0"

    out = rig.converge(rig.doc("1.1.0", a2))
    assert out.ok, out.message
    second = rig.sup.running("hello")
    assert second is not None and second.pid != first.pid
    assert rig.served_version() == "hello 1.1.0"
    assert rig.current() == "1.1.0"
    assert Path(os.readlink(rig.conv.root / "hello" / "previous")).name == "1.0.0"
    for phase in ("download", "verify", "unpack", "flip", "restart", "prove"):
        assert phase in out.timings

    seen = rig.conv.observe(rig.doc("1.1.0", a2))
    assert (seen.version, seen.pid, seen.healthy, seen.sha256) == (
        "1.1.0",
        second.pid,
        True,
        a2.sha256,
    )
    assert seen.current == str((rig.conv.root / "hello" / "versions" / "1.1.0").resolve())
    # Idempotent: the same document again changes nothing and downloads nothing.
    before = sum(rig.server.requests.values())
    assert rig.converge(rig.doc("1.1.0", a2), same_doc=True).ok
    assert sum(rig.server.requests.values()) == before
    assert rig.sup.running("hello") == second


def test_wrong_sha256_leaves_the_old_version_running(rig: Rig) -> None:
    a1, a2 = rig.build("1.0.0"), rig.build("1.1.0")
    assert rig.converge(rig.doc("1.0.0", a1)).ok
    old = rig.sup.running("hello")
    bad = rig.doc("1.1.0", a2)
    bad["artifact"]["sha256"] = "ab" * 32
    out = rig.converge(bad)
    assert not out.ok and out.phase == "Failed"
    # the expected digest is named; the digest of what was read never is (a forged document
    # could otherwise learn what a local file holds)
    assert "ab" * 32 in out.message and a2.sha256 not in out.message, out.message
    assert rig.sup.running("hello") == old
    assert rig.current() == "1.0.0"
    assert not (rig.conv.root / "hello" / "versions" / "1.1.0").exists()
    seen = rig.conv.observe(bad)
    assert (seen.version, seen.desired_version, seen.healthy) == ("1.0.0", "1.1.0", True)


def test_truncated_download_is_resumed_with_range(rig: Rig) -> None:
    art = rig.build("1.0.0", padding=300_000)
    rig.server.truncate_next(art.path.name, at=100_000)
    out = rig.converge(rig.doc("1.0.0", art))
    assert out.ok, out.message
    ranges = [r for n, r in rig.server.ranges if n == art.path.name]
    assert ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=")
    assert int(ranges[1][6:-1]) >= 90_000  # resumed near the cut, not from zero
    assert rig.served_version() == "hello 1.0.0"


def test_server_without_range_support_downloads_again(tmp_path: Path) -> None:
    with running_rig(tmp_path) as r:
        r.server.ignore_range = True
        art = r.build("1.0.0", padding=200_000)
        r.server.truncate_next(art.path.name, at=50_000)
        out = r.converge(r.doc("1.0.0", art))
        assert out.ok, out.message
        assert r.server.requests[art.path.name] == 2


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "device"])
def test_unsafe_archives_are_refused(rig: Rig, kind: str) -> None:
    good = rig.build("1.0.0")
    assert rig.converge(rig.doc("1.0.0", good)).ok
    evil = evil_tarball(rig.dist, kind, name="hello")
    out = rig.converge(rig.doc("6.6.6", evil))
    assert not out.ok and ("refus" in out.message), out.message
    assert rig.current() == "1.0.0"
    assert not (rig.conv.root / "hello" / "versions" / "6.6.6").exists()
    assert not (rig.conv.root / "hello" / "x").exists()
    assert not Path("/tmp/fleetkeeper-evil-x").exists()
    leftovers = [p.name for p in (rig.conv.root / "hello" / "versions").iterdir()]
    assert leftovers == ["1.0.0"]
    assert rig.served_version() == "hello 1.0.0"


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ({"exit_at_start": True}, "exited at start"),
        ({"unhealthy": True}, "health did not pass"),
        ({"probe_version": "9.9.9"}, "does not name 1.1.0"),
    ],
)
def test_failed_version_is_rolled_back_and_not_retried(
    rig: Rig, behaviour: dict[str, Any], why: str
) -> None:
    a1 = rig.build("1.0.0")
    a2 = rig.build("1.1.0", **behaviour)
    assert rig.converge(rig.doc("1.0.0", a1)).ok
    old = rig.sup.running("hello")
    assert old is not None
    w = rig.doc("1.1.0", a2, timeout=2)
    out = rig.converge(w)
    assert not out.ok and out.phase == "Failed"
    assert why in out.message and "rolled back to 1.0.0" in out.message, out.message
    now = rig.sup.running("hello")
    assert now is not None and now.pid != old.pid  # the old version was restarted...
    assert rig.served_version() == "hello 1.0.0"  # ...and proven to serve again
    assert rig.current() == "1.0.0"
    seen = rig.conv.observe(w)
    assert (seen.version, seen.desired_version, seen.healthy) == ("1.0.0", "1.1.0", True)
    assert decide_phase(rig.conv.board.get("hello").phase, seen) == "Failed"
    # The same document again: no retry (no download, no restart).
    requests = sum(rig.server.requests.values())
    again = rig.converge(w, same_doc=True)
    assert not again.ok and sum(rig.server.requests.values()) == requests
    assert rig.sup.running("hello") == now
    # A new generation of the document asking for the same target: still no retry.
    again = rig.converge(w)
    assert not again.ok and again.timings == {} and rig.sup.running("hello") == now
    # An operator's retry (retryGeneration) tries again: the staged version is reused, the
    # restart is tried again.
    retried = rig.converge({**w, "retryGeneration": 1})
    assert not retried.ok and "restart" in retried.timings


def test_first_install_failure_leaves_nothing_current(rig: Rig) -> None:
    art = rig.build("1.0.0", exit_at_start=True)
    out = rig.converge(rig.doc("1.0.0", art, timeout=2))
    assert not out.ok and "no previous version" in out.message
    assert rig.current() is None
    assert rig.sup.running("hello") is None


def test_symlinked_install_root_is_still_managed(tmp_path: Path) -> None:
    real = tmp_path / "real-root"
    real.mkdir()
    link = tmp_path / "link-root"
    link.symlink_to(real)
    with running_rig(tmp_path, root=link) as r:
        a1, a2 = r.build("1.0.0"), r.build("1.1.0")
        assert r.converge(r.doc("1.0.0", a1)).ok
        out = r.converge(r.doc("1.1.0", a2))
        assert out.ok, out.message
        assert r.conv.managed(link / "hello" / "current" / "bin" / "hello")
        assert r.conv.managed(real / "hello")
        assert not r.conv.managed(tmp_path / "elsewhere")
        seen = r.conv.observe(r.doc("1.1.0", a2))
        assert seen.version == "1.1.0" and seen.current is not None
        assert seen.current.startswith(str(real.resolve()))


def test_zip_single_file_and_file_urls(rig: Rig) -> None:
    z = build_program(rig.dist, "hello", "2.0.0", fmt="zip")
    w = workload_doc("hello", "2.0.0", z, z.path.resolve().as_uri(), rig.port)
    assert rig.converge(w).ok
    assert rig.served_version() == "hello 2.0.0"
    single = rig.dist / "hello-single"
    single.write_text(
        (rig.conv.root / "hello" / "versions" / "2.0.0" / "bin" / "hello")
        .read_text()
        .replace("2.0.0", "2.1.0")
    )
    art = describe(single)
    w = workload_doc("hello", "2.1.0", art, rig.server.url(single.name), rig.port)
    w["run"]["command"][0] = "hello-single"
    w["versionProbe"] = ["hello-single", "--version"]
    out = rig.converge(w)
    assert out.ok, out.message
    assert rig.served_version() == "hello 2.1.0"


def test_old_versions_are_pruned_keeping_three(rig: Rig) -> None:
    for i in range(5):
        v = f"1.{i}.0"
        assert rig.converge(rig.doc(v, rig.build(v))).ok
    kept = sorted(p.name for p in (rig.conv.root / "hello" / "versions").iterdir())
    assert kept == ["1.2.0", "1.3.0", "1.4.0"]


def test_wrong_digest_is_not_downloaded_again_for_the_same_document(rig: Rig) -> None:
    art = rig.build("1.0.0")
    bad = rig.doc("1.0.0", art)
    bad["artifact"]["sha256"] = "cd" * 32
    assert not rig.converge(bad).ok
    assert rig.converge(bad, same_doc=True).phase == "Failed"
    assert rig.server.requests[art.path.name] == 1
    assert "cd" * 32 in rig.conv.board.get("hello").message  # type: ignore[operator]


def test_agent_install_detection_resolves_both_sides(tmp_path: Path) -> None:
    from agent.selfinstall import agent_location, managed_workload

    real = tmp_path / "data" / "fleetkeeper"
    code = real / "fleetkeeper-agent" / "versions" / "0.2.0" / "lib" / "agent"
    code.mkdir(parents=True)
    (real / "fleetkeeper-agent" / "current").symlink_to("versions/0.2.0")
    link = tmp_path / "opt-fleetkeeper"
    link.symlink_to(real)
    # Agent code reached through `current`, install root through a symlink: still managed.
    seen_from = link / "fleetkeeper-agent" / "current" / "lib" / "agent"
    assert managed_workload(seen_from, link) == "fleetkeeper-agent"
    assert managed_workload(code, link) == "fleetkeeper-agent"
    assert managed_workload(seen_from, real) == "fleetkeeper-agent"
    assert managed_workload(agent_location(), link) is None


def test_without_health_url_a_quick_exit_is_not_proof(rig: Rig) -> None:
    good = rig.build("1.0.0")
    w = rig.doc("1.0.0", good)
    del w["health"]
    assert rig.converge(w).ok
    dies = rig.build("1.1.0", crash_after=0.3)
    w2 = rig.doc("1.1.0", dies)
    del w2["health"]
    out = rig.converge(w2)
    assert not out.ok and "exited" in out.message and "rolled back to 1.0.0" in out.message


def test_a_workload_no_longer_desired_is_stopped(rig: Rig) -> None:
    assert rig.converge(rig.doc("1.0.0", rig.build("1.0.0"))).ok
    info = rig.sup.running("hello")
    assert info is not None
    rig.conv.converge({"generation": 99, "workloads": []})
    assert rig.sup.running("hello") is None
    time.sleep(0.1)
    assert procinfo.read(info.pid) is None


def test_free_disk_space_is_checked_before_downloading(rig: Rig) -> None:
    art = rig.build("1.0.0")
    w = rig.doc("1.0.0", art)
    w["artifact"]["size"] = 1 << 60  # an exabyte: no disk has room for that
    out = rig.converge(w)
    assert not out.ok and "not enough disk space" in out.message
    assert rig.server.requests[art.path.name] == 0


def test_an_unmanaged_agent_refuses_to_run_itself_as_a_workload(rig: Rig) -> None:
    art = rig.build("1.0.0")
    w = rig.doc("1.0.0", art)
    w["name"] = "fleetkeeper-agent"
    out = rig.converge(w)
    assert not out.ok and "not installed under installRoot" in out.message
    assert rig.server.requests[art.path.name] == 0


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "chain"])
def test_unsafe_zip_archives_are_refused(tmp_path: Path, kind: str) -> None:
    import stat
    import zipfile

    from agent.errors import UnpackError
    from agent.unpack import unpack

    path = tmp_path / f"evil-{kind}.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("bin/app", "#!/bin/sh\n")

        def link(name: str, target: str) -> None:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)

        if kind == "dotdot":
            zf.writestr("../x", "escaped")
        elif kind == "absolute":
            zf.writestr("/tmp/fleetkeeper-evil-zip", "escaped")
        elif kind == "symlink":
            link("bin/escape", "../../outside")
        else:  # a link to '.' then a link through it: lexically inside, really outside
            link("a", ".")
            link("b", "a/..")
    dest = tmp_path / "stage"
    dest.mkdir()
    with pytest.raises(UnpackError, match="refusing"):
        unpack(path, dest, filename=path.name)
    assert not (tmp_path / "x").exists()
    assert not Path("/tmp/fleetkeeper-evil-zip").exists()


def test_not_before_defers_the_download_and_keeps_the_old_version(rig: Rig) -> None:
    """rollout.spreadSeconds: the agent fetches nothing before its notBefore, keeps the old
    version running (and reported), then converges once the time has passed."""
    a1, a2 = rig.build("1.0.0"), rig.build("1.1.0")
    assert rig.converge(rig.doc("1.0.0", a1)).ok
    old = rig.sup.running("hello")
    later = time.time() + 2
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(later) + 1))
    w = rig.doc("1.1.0", a2)
    w["notBefore"] = stamp
    out = rig.converge(w)
    assert (out.ok, out.phase) == (False, "Pending")
    assert out.retry_at is not None and out.retry_at > time.time()
    assert stamp in out.message and "1.1.0" in out.message
    assert rig.server.requests[a2.path.name] == 0
    assert rig.sup.running("hello") == old and rig.served_version() == "hello 1.0.0"
    note = rig.conv.board.get("hello")
    assert decide_phase(note.phase, rig.conv.observe(w)) == "Pending"
    time.sleep(max(0.0, out.retry_at - time.time()) + 0.1)
    out = rig.converge(w, same_doc=True)
    assert out.ok, out.message
    assert rig.server.requests[a2.path.name] == 1 and rig.served_version() == "hello 1.1.0"
