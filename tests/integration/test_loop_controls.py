"""Rollout controls over the real loop: real git repo (merged PRs), real SQLite store, the
loop's injected clock. A held node and a node behind a closed maintenance window."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import schema
from reconciler.plan.controls import Control
from reconciler.store.base import AuditEvent
from tests.helpers.fleet import LoopRig, fleet_files, nodes_named, release_doc

V = "1.0.0"
NIGHTS = [{"days": ["Tue"], "start": "02:00", "duration": "2h", "timezone": "Europe/Berlin"}]
MON_2048_BERLIN = datetime(2026, 11, 30, 19, 48, tzinfo=UTC).timestamp()
NODES = nodes_named("n1", "n2", "n3")
OPENS = datetime(2026, 12, 1, 1, 0, tzinfo=UTC).timestamp()  # Tue 02:00 CET


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[LoopRig]:
    n1, n2, n3 = NODES
    held = {**n2, "hold": True}
    night = {**n3, "windows": NIGHTS}
    rel = release_doc("app", V, batch_size=3, soak=0)
    r = LoopRig.create(tmp_path, fleet_files([n1, held, night], [rel]))
    r.clock.t = MON_2048_BERLIN
    yield r
    r.close()


def release_row(rig: LoopRig) -> dict[str, object]:
    status = rig.reconciler.fleet_status()  # type: ignore[union-attr]
    assert schema.errors("fleet-status", status) == []
    return next(r for r in status["releases"] if r["agent"] == "app")  # type: ignore[union-attr, index]


def test_hold_and_window_over_the_real_loop(rig: LoopRig) -> None:
    first = rig.once()
    assert first.error is None
    # n1 goes at once; n2 is held (keeps nothing, it ran nothing); n3 waits for its window
    assert rig.versions("app") == {"n1": V, "n2": None, "n3": None}
    assert first.next_wake_at == MON_2048_BERLIN + 900  # n1's timeout comes first
    row = release_row(rig)
    assert row["reason"] == (
        "Waiting for window (opens Tue 02:00 Europe/Berlin, in 5h 12m) (held: n2)"
    )
    assert row["held"] == ["n2"] and row["waitingUntil"] == "2026-12-01T01:00:00Z"
    status = rig.reconciler.fleet_status()  # type: ignore[union-attr]
    n2 = next(n for n in status["nodes"] if n["node"] == "n2")  # type: ignore[union-attr, index]
    assert n2["held"] is True and n2["heldUntil"] is None  # type: ignore[index]

    # waiting is a steady state: a second pass writes nothing
    rig.clock.t += 60
    rig.converge("n1", "n2", "n3")
    rig.once()
    before = rig.snapshot()
    again = rig.once()
    assert again.writes == 0 and again.changed_nodes == () and again.audit == ()
    assert again.next_wake_at == OPENS  # n1 runs it: the window's opening is next
    conds = {c["type"]: c for c in rig.reconciler.conditions()}  # type: ignore[union-attr]
    assert conds["Reconciling"]["message"] == (
        "app 1.0.0 Progressing batch 1/1, waiting for window Tue 02:00 Europe/Berlin"
    )
    assert rig.snapshot() == before

    # the window opens: n3 is given the version, and the rollout finishes without n2
    rig.clock.t = OPENS
    rig.converge("n1", "n2")
    opened = rig.once()
    assert rig.versions("app") == {"n1": V, "n2": None, "n3": V}
    assert "n3" in opened.changed_nodes
    rig.clock.t = OPENS + 30
    rig.converge("n1", "n2", "n3")
    rig.once()
    assert rig.phase("app") == "Succeeded"  # the held node did not block it
    assert rig.state("app").held == ("n2",)  # type: ignore[union-attr]

    # the hold is lifted by a merged change: n2 joins in a new last batch
    rig.repo.change({"nodes/n2.yaml": NODES[1]}, "release n2 from its hold")
    rig.clock.t = OPENS + 60
    rig.converge("n1", "n2", "n3")
    rig.once()
    assert rig.versions("app") == {"n1": V, "n2": V, "n3": V}
    rig.clock.t = OPENS + 90
    rig.converge("n1", "n2", "n3")
    rig.once()
    assert rig.phase("app") == "Succeeded" and rig.state("app").held == ()  # type: ignore[union-attr]
    assert rig.once().writes == 0


def test_a_pause_over_the_real_loop_is_read_from_the_store_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    rig = LoopRig.create(tmp_path, fleet_files(NODES, [release_doc("app", V, soak=0)]))
    try:
        rig.once()
        assert rig.versions("app") == {"n1": V, "n2": None, "n3": None}
        st = rig.state("app")
        assert st is not None and rig.store is not None
        pause = Control(0, "app", "pause", st.fingerprint, "alice", "freeze", rig.clock.t)
        event = AuditEvent(time=rig.clock.t, kind="rollout-pause", message="paused")
        rig.store.add_control(pause, event)
        rig.clock.t += 30
        rig.converge("n1", "n2", "n3")
        paused = rig.once()
        assert "app" in paused.changed_rollouts
        assert rig.versions("app") == {"n1": V, "n2": None, "n3": None}  # n2 not given it
        assert release_row(rig)["reason"] == "Paused by alice: freeze"
        # paused is a steady state: the next pass writes nothing
        rig.clock.t += 30
        rig.converge("n1", "n2", "n3")
        rig.once()
        assert rig.once().writes == 0
        rig.start()  # a restart reads the same records: still paused
        rig.clock.t += 30
        rig.converge("n1", "n2", "n3")
        rig.once()
        assert rig.versions("app") == {"n1": V, "n2": None, "n3": None}
        st = rig.state("app")
        assert st is not None and st.paused is not None and st.paused.by == "alice"
    finally:
        rig.close()
