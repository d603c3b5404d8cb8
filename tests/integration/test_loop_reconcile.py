"""The real reconcile loop: real git repo (merged-PR approval), real SQLite store, injected clock.

Agents are played by writing ReportRecords into the store, as the API does when one reports.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

import schema
from tests.helpers.fleet import (
    LoopRig,
    fleet_files,
    nodes_named,
    release_doc,
    report_doc,
)

FIVE = ("n1", "n2", "n3", "n4", "n5")
V1, V2 = "1.0.0", "1.1.0"


@pytest.fixture
def rig(tmp_path: Path) -> LoopRig:
    files = fleet_files(nodes_named(*FIVE), [release_doc("app", V1, batch_size=2, soak=300)])
    r = LoopRig.create(tmp_path, files)
    yield r  # type: ignore[misc]
    r.close()


def test_batch2_soak_over_the_real_loop(rig: LoopRig) -> None:
    t0 = rig.clock.t
    first = rig.once()
    assert first.error is None and first.revision == rig.repo.head()
    assert rig.versions("app") == {"n1": V1, "n2": V1, "n3": None, "n4": None, "n5": None}
    assert set(first.changed_nodes) == set(FIVE) and rig.notified == sorted(FIVE)
    for rec in rig.store.all_desired():  # every document the agents will fetch is schema-valid
        assert schema.errors("desired-state", rec.document) == []

    rig.clock.t = t0 + 20
    rig.converge(*FIVE)
    soaking = rig.once()
    assert rig.phase("app") == "Soaking"
    assert soaking.next_wake_at == t0 + 20 + 300

    rig.clock.t = t0 + 200
    rig.converge(*FIVE)  # heartbeats keep the reports fresh
    rig.once()
    assert rig.versions("app")["n3"] is None  # n3 gets nothing until n1, n2 have soaked

    rig.clock.t = t0 + 320
    rig.converge(*FIVE)
    rig.once()
    assert rig.versions("app") == {"n1": V1, "n2": V1, "n3": V1, "n4": V1, "n5": None}
    assert "batch-done" in rig.audit_kinds()
    status = rig.reconciler.fleet_status()
    assert schema.errors("fleet-status", status) == []
    row = next(r for r in status["releases"] if r["agent"] == "app")
    assert (row["phase"], row["batch"]) == ("Progressing", "2/3")


def test_second_pass_writes_nothing(rig: LoopRig) -> None:
    t0 = rig.clock.t
    rig.once()
    for t in (30, 330, 700):
        rig.clock.t = t0 + t
        rig.converge(*FIVE)
        rig.once()
        before = rig.snapshot()
        gens = rig.generations()
        again = rig.once()
        assert again.writes == 0, again
        assert again.changed_nodes == () and again.audit == ()
        assert rig.snapshot() == before
        assert rig.generations() == gens


def test_config_only_change_is_a_new_rollout_and_a_second_pass_writes_nothing(
    tmp_path: Path,
) -> None:
    """Issue 17: a merged PR that edits only a config file starts a new rollout of the same
    version, batch by batch, and the loop stays idempotent with config in the documents."""
    doc = release_doc("app", V1, batch_size=2, soak=300)
    doc["config"] = {"files": [{"from": "config/app/soul.md", "to": "soul.md", "template": True}]}
    files = {**fleet_files(nodes_named(*FIVE), [doc]), "config/app/soul.md": "I am ${node.name}\n"}
    rig = LoopRig.create(tmp_path, files)
    try:
        t0 = rig.clock.t
        rig.once()
        for t in range(1, 12):  # 3 batches, each given, reported, soaked
            rig.clock.t = t0 + 160 * t
            rig.converge(*FIVE)
            rig.once()
        assert rig.phase("app") == "Succeeded"
        t0 = rig.clock.t

        def digests() -> dict[str, str | None]:
            out = {}
            for d in rig.store.all_desired():
                (w,) = d.document["workloads"]
                out[d.node] = w["config"]["digest"]
            return out

        (old,) = set(digests().values())
        rig.repo.change({"config/app/soul.md": "I am ${node.name}, v2\n"}, "soul v2")
        rig.clock.t = t0 + 100
        rig.once()
        new = digests()
        assert rig.versions("app") == dict.fromkeys(FIVE, V1)
        assert [n for n in FIVE if new[n] != old] == ["n1", "n2"]  # the first batch only
        row = rig.state("app")
        assert row.version == V1 and row.config_digest == new["n1"] != old
        # n1 and n2 report the same version with the old config, for longer than the soak:
        # they have not converged (on version alone they would have), so n3 waits
        for t in (500, 900):
            rig.clock.t = t0 + t
            rig.converge("n3", "n4", "n5")
            for n in ("n1", "n2"):
                w = {"name": "app", "version": V1, "phase": "Healthy", "healthy": True}
                rig.put_report(report_doc(n, [{**w, "configDigest": old}]))
            rig.once()
        assert [n for n in FIVE if digests()[n] != old] == ["n1", "n2"]
        before, gens = rig.snapshot(), rig.generations()
        again = rig.once()
        assert again.writes == 0 and rig.snapshot() == before and rig.generations() == gens
        # once they report it in use and soak, the next batch gets it
        for t in (1000, 1400):
            rig.clock.t = t0 + t
            rig.converge(*FIVE)
            rig.once()
        assert [n for n in FIVE if digests()[n] != old] == ["n1", "n2", "n3", "n4"]
    finally:
        rig.close()


def test_failed_node_halts_and_names_it(rig: LoopRig) -> None:
    t0 = rig.clock.t
    rig.once()
    rig.clock.t = t0 + 30
    rig.converge("n1")
    rig.fail("n2", "app", None, "health check failed: connection refused")
    rig.once()
    st = rig.state("app")
    assert st.phase == "Halted" and st.halt.node == "n2"
    assert rig.versions("app") == {"n1": V1, "n2": V1, "n3": None, "n4": None, "n5": None}
    conds = {c["type"]: c for c in rig.reconciler.conditions()}
    assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == "RolloutHalted"
    assert "n2" in conds["Stalled"]["message"]
    halted = [e for e in rig.store.audit(limit=1000) if e.kind == "halted"]
    assert len(halted) == 1 and halted[0].release == "app" and "n2" in halted[0].message
    # an hour later, nothing moved
    rig.clock.t = t0 + 3600
    rig.converge("n1", "n2", "n3", "n4", "n5")
    assert rig.once().writes == 0
    assert rig.versions("app")["n3"] is None


def test_rollback_over_the_loop(tmp_path: Path) -> None:
    files = fleet_files(nodes_named(*FIVE), [release_doc("app", V1, batch_size=5, soak=0)])
    rig = LoopRig.create(tmp_path, files)
    try:
        t0 = rig.clock.t
        rig.once()
        rig.clock.t = t0 + 10
        rig.converge(*FIVE)
        rig.once()
        assert rig.phase("app") == "Succeeded"
        new = release_doc("app", V2, batch_size=2, soak=0, on_failure="rollback")
        rig.repo.change(fleet_files(releases=[new]), "app 1.1.0")
        rig.clock.t = t0 + 20
        rig.once()
        assert rig.versions("app") == {"n1": V2, "n2": V2, "n3": V1, "n4": V1, "n5": V1}
        gens = rig.generations()
        rig.clock.t = t0 + 30
        rig.converge("n1")
        rig.fail("n2", "app", V1)
        rig.once()
        assert rig.phase("app") == "Halted"
        assert set(rig.versions("app").values()) == {V1}
        after = rig.generations()
        assert after["n1"] == gens["n1"] + 1 and after["n3"] == gens["n3"]  # n3 untouched
    finally:
        rig.close()


def test_restart_resumes_and_leaves_converged_nodes_alone(rig: LoopRig) -> None:
    t0 = rig.clock.t
    rig.once()
    rig.clock.t = t0 + 30
    rig.converge(*FIVE)
    rig.once()
    rig.clock.t = t0 + 340
    rig.converge(*FIVE)
    rig.once()  # batch 2 started
    gens = rig.generations()
    rollouts = rig.store.rollouts()
    rig.close()
    rig.notified.clear()
    rig.start()  # a new process: new Reconciler, store reopened
    resumed = rig.once()
    assert resumed.writes == 0 and rig.notified == []
    assert rig.store.rollouts() == rollouts and rig.generations() == gens
    for t in (700, 1100, 1150, 1500):
        rig.clock.t = t0 + t
        rig.converge(*FIVE)
        rig.once()
    assert rig.phase("app") == "Succeeded"
    final = rig.generations()
    assert {n: final[n] for n in ("n1", "n2")} == {n: gens[n] for n in ("n1", "n2")}
    assert rig.audit_kinds().count("rollout-started") == 1


def test_unapproved_tip_is_reported_once_and_not_applied(rig: LoopRig) -> None:
    first = rig.once()
    applied = first.revision
    sha = rig.repo.direct_commit(
        fleet_files(releases=[release_doc("app", "2.0.0", batch_size=2)]), "sneak 2.0.0 in"
    )
    r1 = rig.once()
    r2 = rig.once()
    assert r1.revision == applied and r2.revision == applied
    assert r2.writes == 0
    refused = [e for e in rig.store.audit(limit=1000) if e.kind == "refused"]
    assert len(refused) == 1 and refused[0].revision == sha
    rows = json.loads(rig.store.get_meta("tip-status"))
    assert rows[0]["agent"] == "app" and rows[0]["version"] == "2.0.0"
    assert rows[0]["phase"] == "Unapproved"
    status = rig.reconciler.fleet_status()
    assert schema.errors("fleet-status", status) == []
    assert [r["phase"] for r in status["releases"]] == ["Progressing", "Unapproved"]
    conds = {c["type"]: c for c in rig.reconciler.conditions()}
    assert conds["Stalled"]["reason"] == "Unapproved"
    assert "2.0.0" not in json.dumps(rig.versions("app"))


def test_invalid_revision_keeps_last_good(rig: LoopRig) -> None:
    first = rig.once()
    bad = release_doc("app", V2, batch_size=2)
    bad["rollout"]["batchSize"] = 0  # schema: minimum 1
    sha = rig.repo.change(fleet_files(releases=[bad]), "bad app 1.1.0")
    r1 = rig.once()
    r2 = rig.once()
    assert r1.revision == first.revision and r2.writes == 0
    invalid = [e for e in rig.store.audit(limit=1000) if e.kind == "invalid"]
    assert len(invalid) == 1 and invalid[0].revision == sha
    assert "releases/app/1.1.0.yaml" in invalid[0].message
    rows = json.loads(rig.store.get_meta("tip-status"))
    assert [(r["agent"], r["version"], r["phase"]) for r in rows] == [("app", V2, "Invalid")]
    assert set(v for v in rig.versions("app").values() if v) == {V1}
    conds = {c["type"]: c for c in rig.reconciler.conditions()}
    assert conds["Stalled"]["reason"] == "Invalid" and conds["Ready"]["status"] == "False"
    # a fix through a merged PR is applied, and the Invalid row goes away
    fixed = rig.repo.change(fleet_files(releases=[release_doc("app", V2, batch_size=2)]), "fix")
    assert rig.once().revision == fixed
    assert json.loads(rig.store.get_meta("tip-status")) == []


def test_run_wakes_on_demand_and_stops(rig: LoopRig) -> None:
    """``run`` passes at once, sleeps (pollInterval 5 s), and a wake() from another thread
    runs the next pass well before the resync."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(rig.reconciler.run(stop))
        for _ in range(200):
            if rig.reconciler.first_pass_done:
                break
            await asyncio.sleep(0.01)
        assert rig.reconciler.first_pass_done
        assert rig.versions("app")["n1"] == V1
        # a new approved release; woken from a thread like the API does
        rig.repo.change(fleet_files(releases=[release_doc("app", V2, batch_size=2)]), "v2")
        threading.Thread(target=rig.reconciler.wake).start()
        for _ in range(300):
            if rig.versions("app").get("n1") == V2:
                break
            await asyncio.sleep(0.01)
        assert rig.versions("app")["n1"] == V2
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_stale_node_halts_its_release_after_timeout_other_release_proceeds(
    tmp_path: Path,
) -> None:
    files = fleet_files(
        nodes_named(*FIVE),
        [
            release_doc("app", V1, batch_size=5, soak=0, timeout=300),
            release_doc("tool", V1, batch_size=2, soak=0, targets={"nodes": ["n1", "n3", "n4"]}),
        ],
    )
    rig = LoopRig.create(tmp_path, files)
    try:
        t0 = rig.clock.t
        rig.once()
        rig.clock.t = t0 + 10
        rig.converge("n1", "n3", "n4", "n5")
        rig.put_report(report_doc("n2", []))  # n2 reports once, app not running yet ...
        rig.once()
        for t in (60, 120, 240):  # ... then goes silent; the others keep reporting
            rig.clock.t = t0 + t
            rig.converge("n1", "n3", "n4", "n5")
            rig.once()
        assert rig.phase("app") == "Progressing"  # waits for n2, does not skip it
        assert rig.phase("tool") == "Succeeded"  # n2 does not block another release
        stale = [e for e in rig.store.audit(limit=1000) if e.kind == "stale"]
        assert [e.node for e in stale] == ["n2"]
        rig.clock.t = t0 + 300
        rig.converge("n1", "n3", "n4", "n5")
        rig.once()
        st = rig.state("app")
        assert st.phase == "Halted" and st.halt.node == "n2" and "Stale" in st.halt.reason
        nodes = {n["node"]: n for n in rig.reconciler.fleet_status()["nodes"]}
        assert nodes["n2"]["health"] == "Stale" and nodes["n1"]["health"] == "Healthy"
    finally:
        rig.close()
