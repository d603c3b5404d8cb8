"""Blue/green handoff in the child supervisor, with real processes: the new one starts beside
the old one, ``retire`` stops the old one, and an agent killed in between leaves no old
process serving (the next agent's adoption stops it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import procinfo
from agent.state import StateDir
from agent.supervise.child import ChildSupervisor
from agent.supervise.supervisor import HandoffSupervisor, LaunchSpec

SLEEP = "import sys, time; time.sleep(120)"


def spec(tmp: Path, version: str) -> LaunchSpec:
    cwd = tmp / "root" / "m" / "versions" / version
    cwd.mkdir(parents=True, exist_ok=True)
    return LaunchSpec("m", (sys.executable, "-c", SLEEP, version), cwd)


def ours(tmp: Path) -> Callable[[procinfo.ProcInfo], bool]:
    """Only processes running from this test's versions dir belong to workload m (adoption
    stops every *other* process that belongs: never answer True for strangers)."""
    root = os.path.realpath(tmp / "root" / "m" / "versions")
    return lambda info: bool(info.cwd) and os.path.realpath(str(info.cwd)).startswith(root + "/")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateDir]:
    sd = StateDir(tmp_path / "state")
    sd.root.mkdir()
    yield sd
    cleanup = ChildSupervisor(sd, grace_seconds=1)
    cleanup.adopt("m", ours(tmp_path))
    cleanup.stop("m")


@pytest.fixture
def sups(state: StateDir) -> Iterator[list[ChildSupervisor]]:
    """Supervisors made by a test; each stops what it started (and reaps its children)."""
    made: list[ChildSupervisor] = []
    yield made
    for sup in reversed(made):
        sup.stop("m")


def test_handoff_runs_both_until_retire(
    tmp_path: Path, state: StateDir, sups: list[ChildSupervisor]
) -> None:
    sup = ChildSupervisor(state, grace_seconds=1)
    sups.append(sup)
    assert isinstance(sup, HandoffSupervisor)
    old = sup.start(spec(tmp_path, "1.0.0"))
    new = sup.handoff(spec(tmp_path, "2.0.0"))
    assert new.pid != old.pid
    assert procinfo.alive(old.pid, old.start_id) and procinfo.alive(new.pid, new.start_id)
    running = sup.running("m")
    assert running is not None and running.pid == new.pid
    sup.retire("m")
    assert not procinfo.alive(old.pid, old.start_id)
    assert procinfo.alive(new.pid, new.start_id)
    sup.retire("m")  # nothing left to retire: no error


def test_handoff_without_a_running_process_is_a_start(
    tmp_path: Path, state: StateDir, sups: list[ChildSupervisor]
) -> None:
    sup = ChildSupervisor(state, grace_seconds=1)
    sups.append(sup)
    info = sup.handoff(spec(tmp_path, "1.0.0"))
    running = sup.running("m")
    assert running is not None and running.pid == info.pid


def test_agent_killed_mid_handoff_leaves_only_the_new_process(
    tmp_path: Path, state: StateDir, sups: list[ChildSupervisor]
) -> None:
    first = ChildSupervisor(state, grace_seconds=1)
    sups.append(first)
    old = first.start(spec(tmp_path, "1.0.0"))
    new = first.handoff(spec(tmp_path, "2.0.0"))
    # The agent dies here (before retire); a new agent on the same state dir adopts.
    second = ChildSupervisor(state, grace_seconds=1)
    sups.append(second)
    adopted = second.adopt("m", ours(tmp_path))
    assert adopted is not None and adopted.pid == new.pid
    assert not procinfo.alive(old.pid, old.start_id), "the old version kept serving"
    assert procinfo.alive(new.pid, new.start_id)
