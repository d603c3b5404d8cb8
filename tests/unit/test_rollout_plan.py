"""The pure rollout planner, scenario by scenario (Flux-style ``want`` tables)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from reconciler.plan.batches import batch_size, make_batches
from reconciler.plan.select import NodeFacts
from reconciler.plan.state import state_from_json, state_to_json
from reconciler.spec import Rollout
from tests.helpers.fleet import (
    PlanSim,
    fleet_doc,
    fleet_files,
    model_doc,
    node_doc,
    nodes_named,
    release_doc,
)

FIVE = ("n1", "n2", "n3", "n4", "n5")


def sim(*releases: dict[str, Any], nodes: tuple[str, ...] = FIVE, **kw: Any) -> PlanSim:
    return PlanSim(fleet_files(nodes_named(*nodes), releases), **kw)


# --- batching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "targeted", "want"),
    [(1, 5, 1), (2, 5, 2), (10, 5, 10), ("25%", 5, 2), ("50%", 5, 3), ("1%", 5, 1), ("100%", 3, 3)],
)
def test_batch_size(size: int | str, targeted: int, want: int) -> None:
    assert batch_size(size, targeted) == want


@pytest.mark.parametrize(
    ("rollout", "want"),
    [
        (Rollout(batch_size=2), [("n1", "n2"), ("n3", "n4"), ("n5",)]),
        (Rollout(batch_size="40%"), [("n1", "n2"), ("n3", "n4"), ("n5",)]),
        (Rollout(batch_size="50%"), [("n1", "n2", "n3"), ("n4", "n5")]),
        (Rollout(batch_size=2, canary=("n4",)), [("n4",), ("n1", "n2"), ("n3", "n5")]),
        (Rollout(batch_size=5, canary=("n2", "n9")), [("n2",), ("n1", "n3", "n4", "n5")]),
    ],
)
def test_make_batches(rollout: Rollout, want: list[tuple[str, ...]]) -> None:
    targeted = [c for c in rollout.canary if c in FIVE] + [
        n for n in FIVE if n not in rollout.canary
    ]
    assert make_batches(targeted, rollout) == want


# --- scenarios: (time, action) steps with the wanted outcome after each -------------------


@dataclass(frozen=True)
class Want:
    at: float
    versions: dict[str, str | None]  # node -> desired version of "app"
    phase: str
    batch: str | None = None  # "n/m" of the active batch
    halted_node: str | None = None
    agents: dict[str, str] = field(default_factory=dict)  # agent behaviour from this step on


def batch_of(s: PlanSim, name: str = "app") -> str | None:
    st = s.state(name)
    i = st.active_batch()
    return None if i is None else f"{i + 1}/{len(st.batches)}"


V = "1.0.0"
# Each case builds its simulation afresh (a factory), so no run sees another's state.
SCENARIOS: dict[str, tuple[Callable[[], PlanSim], list[Want]]] = {
    # five nodes, batch 2, soak 300: n3 gets nothing until n1 and n2 have soaked
    "batch2-soak": (
        lambda: sim(release_doc("app", V, batch_size=2, soak=300, timeout=900)),
        [
            Want(0, {"n1": V, "n2": V, "n3": None, "n4": None, "n5": None}, "Progressing", "1/3"),
            Want(60, {"n1": V, "n2": V, "n3": None, "n4": None, "n5": None}, "Soaking", "1/3"),
            Want(300, {"n1": V, "n2": V, "n3": None, "n4": None, "n5": None}, "Soaking", "1/3"),
            Want(330, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": None}, "Progressing", "2/3"),
            Want(720, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Soaking", "3/3"),
            Want(1200, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Succeeded"),
        ],
    ),
    # canary first, alone
    "canary": (
        lambda: sim(release_doc("app", V, batch_size=5, canary=["n3"], soak=60)),
        [
            Want(
                0, {"n1": None, "n2": None, "n3": V, "n4": None, "n5": None}, "Progressing", "1/2"
            ),
            Want(60, {"n1": None, "n2": None, "n3": V, "n4": None, "n5": None}, "Soaking", "1/2"),
            Want(90, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Progressing", "2/2"),
            Want(120, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Soaking", "2/2"),
            Want(240, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Succeeded"),
        ],
    ),
    # percentage batch size: 40% of 5 -> 2 at a time
    "percent": (
        lambda: sim(release_doc("app", V, batch_size="40%", soak=0)),
        [
            Want(0, {"n1": V, "n2": V, "n3": None, "n4": None, "n5": None}, "Progressing", "1/3"),
            Want(30, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": None}, "Progressing", "2/3"),
            Want(60, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Progressing", "3/3"),
            Want(90, {"n1": V, "n2": V, "n3": V, "n4": V, "n5": V}, "Succeeded"),
        ],
    ),
    # n2 fails its health check: Halted naming n2, n3..n5 untouched, forever
    "fail-halts": (
        lambda: sim(release_doc("app", V, batch_size=2, soak=60)),
        [
            Want(
                0, {"n1": V, "n2": V, "n3": None}, "Progressing", "1/3", agents={"n2": "fail:app"}
            ),
            Want(30, {"n1": V, "n2": V, "n3": None, "n4": None}, "Halted", "1/3", "n2"),
            Want(3000, {"n1": V, "n2": V, "n3": None, "n4": None}, "Halted", "1/3", "n2"),
        ],
    ),
    # unhealthy but not Failed: waits until the timeout, then halts naming the node
    "timeout-halts": (
        lambda: sim(release_doc("app", V, batch_size=2, soak=60, timeout=300)),
        [
            Want(0, {"n1": V, "n2": V}, "Progressing", "1/3", agents={"n1": "unhealthy:app"}),
            Want(270, {"n1": V, "n2": V, "n3": None}, "Progressing", "1/3"),
            Want(300, {"n1": V, "n2": V, "n3": None}, "Halted", "1/3", "n1"),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(SCENARIOS))
def test_rollout_scenario(case: str) -> None:
    build, wants = SCENARIOS[case]
    s = build()
    for want in wants:
        s.agents.update(want.agents)
        if want.at == 0:
            s.step(0)
        else:
            s.run_until(want.at)
        got = {n: v for n, v in s.versions("app").items() if n in want.versions}
        assert got == want.versions, f"{case} at t={want.at}"
        st = s.state("app")
        assert st.phase == want.phase, f"{case} at t={want.at}: {st.halt}"
        if want.batch is not None:
            assert batch_of(s) == want.batch, f"{case} at t={want.at}"
        if want.halted_node is not None:
            assert st.halt is not None and st.halt.node == want.halted_node
            assert want.halted_node in st.halt.reason


def test_third_node_waits_for_soak_and_next_wake_is_soak_end() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=300))
    s.step(0)
    s.now = 10
    s.heartbeat()
    plan = s.step()
    assert s.state("app").phase == "Soaking"
    assert plan.next_wake_at == 310  # soak measured from the first healthy report
    s.run_until(300)
    assert s.versions("app")["n3"] is None
    s.now = 310
    s.heartbeat()
    s.step()
    assert s.versions("app")["n3"] == V


def test_unhealthy_report_resets_soak() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=100, timeout=900))
    s.step(0)
    s.run_until(60)  # healthy since 30
    s.agents["n1"] = "unhealthy:app"
    s.run_until(90)
    s.agents["n1"] = "ok"
    s.run_until(150)  # healthy again since 120: not soaked at 150 (would be at 130 before)
    assert s.state("app").phase == "Soaking"
    assert s.state("app").nodes["n1"].healthy_since == 120
    s.run_until(240)
    assert s.versions("app")["n3"] == V


def test_halted_reason_names_failed_node_and_message() -> None:
    s = sim(release_doc("app", V, batch_size=2))
    s.agents["n2"] = "fail:app"
    s.step(0)
    s.run_until(30)
    st = s.state("app")
    assert st.halt is not None
    assert st.halt.reason == "node n2 reported Failed for app 1.0.0: health check failed"
    assert "halted" in s.kinds()


def test_rollback_gives_updated_nodes_previous_version() -> None:
    s = sim(release_doc("app", "1.0.0", batch_size=2, soak=0))
    s.step(0)
    s.run_until(120)
    assert s.state("app").phase == "Succeeded"
    s.files.update(
        fleet_files(
            releases=[release_doc("app", "1.1.0", batch_size=2, soak=0, on_failure="rollback")]
        )
    )
    s.agents["n2"] = "fail:app"
    s.run_until(150)  # 1.1.0 batch 1 (n1, n2) starts
    assert s.versions("app") == {
        "n1": "1.1.0",
        "n2": "1.1.0",
        "n3": "1.0.0",
        "n4": "1.0.0",
        "n5": "1.0.0",
    }
    s.run_until(180)  # n2 reports Failed
    st = s.state("app")
    assert st.phase == "Halted" and st.halt is not None and st.halt.node == "n2"
    assert set(st.rolled_back) == {"n1", "n2"}
    assert set(s.versions("app").values()) == {"1.0.0"}
    assert "rolled-back" in s.kinds()


def test_halt_without_rollback_keeps_updated_nodes() -> None:
    s = sim(release_doc("app", "1.0.0", batch_size=2, soak=0))
    s.step(0)
    s.run_until(120)
    s.files.update(fleet_files(releases=[release_doc("app", "1.1.0", batch_size=2, soak=0)]))
    s.agents["n2"] = "fail:app"
    s.run_until(180)
    assert s.state("app").phase == "Halted"
    assert s.versions("app") == {
        "n1": "1.1.0",
        "n2": "1.1.0",
        "n3": "1.0.0",
        "n4": "1.0.0",
        "n5": "1.0.0",
    }


def test_stale_node_halts_after_timeout_other_release_proceeds() -> None:
    s = sim(
        release_doc("app", V, batch_size=1, soak=0, timeout=300, canary=["n2"]),
        release_doc("other", V, batch_size=2, soak=0, targets={"nodes": ["n1", "n3", "n4"]}),
    )
    s.agents["n2"] = "unhealthy:app"
    s.step(0)
    s.run_until(30)
    s.agents["n2"] = "down"  # n2 stops reporting after its first report
    assert s.versions("app")["n2"] == V
    s.run_until(270)
    assert s.state("app").phase == "Progressing"  # waits for it (not skipped)
    assert "n2" in s.stale and "stale" in s.kinds()
    s.run_until(300)
    st = s.state("app")
    assert st.phase == "Halted" and st.halt is not None and st.halt.node == "n2"
    assert "Stale" in st.halt.reason
    assert s.versions("app") == {"n1": None, "n2": V, "n3": None, "n4": None, "n5": None}
    # the other release rolled out meanwhile; n2 being offline does not block it
    assert s.state("other").phase == "Succeeded"
    assert s.versions("other") == {"n1": V, "n2": None, "n3": V, "n4": V, "n5": None}


def test_stale_is_never_converged() -> None:
    s = sim(release_doc("app", V, batch_size=5, soak=60, timeout=900), ttl=45)
    s.step(0)
    s.heartbeat()
    s.step(0)  # everyone healthy since 0 ...
    s.agents = dict.fromkeys(FIVE, "down")
    s.step(60)  # ... but the reports are 60s old: Stale, not soaked
    assert s.state("app").phase == "Progressing"
    assert s.stale == frozenset(FIVE)
    assert all(p.healthy_since is None for p in s.state("app").nodes.values())


def test_superseded_mid_rollout() -> None:
    s = sim(release_doc("app", "1.0.0", batch_size=2, soak=600))
    s.step(0)
    s.run_until(60)
    assert s.state("app").phase == "Soaking"
    s.files.update(fleet_files(releases=[release_doc("app", "1.1.0", batch_size=2, soak=600)]))
    s.run_until(90)
    st = s.state("app")
    assert (st.version, st.phase) == ("1.1.0", "Progressing")
    assert st.history[0].version == "1.0.0" and st.history[0].phase == "Superseded"
    # nodes not in the new batch keep what they had: nothing for n3..n5
    assert s.versions("app") == {"n1": "1.1.0", "n2": "1.1.0", "n3": None, "n4": None, "n5": None}
    assert "superseded" in s.kinds()


def test_changed_file_same_version_restarts_halted_rollout() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=0))
    s.agents["n1"] = "fail:app"
    s.step(0)
    s.run_until(30)
    assert s.state("app").phase == "Halted"
    s.run_until(300)
    assert s.state("app").phase == "Halted"  # no new input: stays halted
    s.agents["n1"] = "ok"
    s.files.update(
        fleet_files(releases=[release_doc("app", V, batch_size=2, soak=0, env={"X": "1"})])
    )
    s.run_until(420)
    assert s.state("app").phase == "Succeeded"


def test_resume_from_persisted_state() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=300))
    s.step(0)
    s.run_until(330)
    assert batch_of(s) == "2/3"
    # a new planner (after a restart) sees only what the store kept: JSON round trip
    resumed = PlanSim(
        s.files,
        now=s.now,
        rollouts={
            k: state_from_json(v) and state_to_json(state_from_json(v))
            for k, v in s.rollouts.items()
        },  # type: ignore[arg-type]
        desired=s.desired,
        reports=s.reports,
        stale=s.stale,
    )
    plan = resumed.plan()
    assert plan.changed_rollouts == frozenset()
    assert plan.desired == s.desired
    resumed.step()
    resumed.run_until(1200)
    assert resumed.state("app").phase == "Succeeded"
    assert "rollout-started" not in resumed.kinds()


def test_second_plan_with_same_inputs_changes_nothing() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=300), release_doc("other", V, batch_size=1))
    for t in (0, 30, 60, 90, 400):
        s.run_until(t) if t else s.step(0)
        again = s.plan()
        assert again.changed_rollouts == frozenset(), t
        assert again.desired == s.desired, t
        assert again.events == (), t


def test_new_node_joins_after_success() -> None:
    s = sim(release_doc("app", V, batch_size=2, soak=0), nodes=("n1", "n2"))
    s.step(0)
    s.run_until(60)
    assert s.state("app").phase == "Succeeded"
    s.files.update(fleet_files(nodes=[node_doc("n3", labels={"port": "9000"})]))
    s.step(61)
    assert s.versions("app")["n3"] == V
    assert s.state("app").phase == "Progressing"
    s.run_until(150)
    assert s.state("app").phase == "Succeeded"


def test_no_targeted_node_is_pending() -> None:
    s = sim(release_doc("app", V, roles=["coding"]))
    s.step(0)
    assert s.state("app").phase == "Pending"
    assert set(s.versions("app").values()) == {None}


def test_new_revision_that_does_not_touch_a_node_keeps_its_document() -> None:
    s = sim(release_doc("app", V, batch_size=5, soak=0))
    s.step(0)
    s.run_until(60)
    before = dict(s.desired)
    s.revision = "b" * 40
    s.files.update(fleet_files(releases=[release_doc("other", V, roles=["coding"])]))
    plan = s.step(90)
    assert plan.desired == before  # same workloads: same revision, no generation bump


def test_models_roll_out_like_releases() -> None:
    s = PlanSim(
        fleet_files(nodes_named("n1", "n2", "n3"), [model_doc("qwen", V, batch_size=1, soak=0)])
    )
    s.step(0)
    assert s.versions("qwen") == {"n1": V, "n2": None, "n3": None}
    assert s.desired["n1"]["workloads"][0]["model"] == {
        "runtime": "llama-cpp",
        "args": {"port": 8080, "contextSize": 2048},
    }
    s.run_until(120)
    assert s.state("qwen").phase == "Succeeded" and s.state("qwen").kind == "model"


def _unlisted_sim(unlisted: str | None, scoped: bool) -> PlanSim:
    fleet = fleet_doc()
    if unlisted is not None:
        fleet["registration"] = {"unlisted": unlisted}
    s = PlanSim(
        fleet_files(nodes_named("n1"), [release_doc("app", V, batch_size=5, soak=0)], fleet)
    )
    s.registered = [
        NodeFacts(
            "edge-1",
            "linux/arm64",
            roles=("inference",),
            labels={"port": "9001"},
            declared=False,
            scoped=scoped,
        ),
        NodeFacts("edge-2", "linux/arm64", roles=("coding",), declared=False, scoped=scoped),
    ]
    s.step(0)
    return s


# (registration.unlisted, join token scope covered the claims) -> does edge-1 get app?
UNLISTED = [
    (None, True, False),  # default deny: self-reported roles never pull a node in
    ("deny", True, False),
    ("allow", False, False),  # allowed, but a bootstrap/unscoped/node-scoped credential
    ("allow", True, True),
]


@pytest.mark.parametrize(("unlisted", "scoped", "gets"), UNLISTED)
def test_unlisted_node_gets_workloads_only_when_allowed_and_scoped(
    unlisted: str | None, scoped: bool, gets: bool
) -> None:
    s = _unlisted_sim(unlisted, scoped)
    want = {"n1": V, "edge-1": V, "edge-2": None} if gets else {"n1": V}
    assert s.versions("app") == want
    if gets:
        arts = {w["artifact"]["platform"] for w in s.desired["edge-1"]["workloads"]}
        assert arts == {"linux/arm64"}
        assert s.desired["edge-2"]["workloads"] == []
    else:
        assert "edge-1" not in s.desired and "edge-2" not in s.desired


def test_node_without_artifact_for_its_platform_is_left_out() -> None:
    s = PlanSim(
        fleet_files(
            [node_doc("mac", platform="darwin/arm64"), node_doc("gpu")],
            [release_doc("app", V, platforms=["linux/amd64"], batch_size=1, soak=0)],
        )
    )
    s.step(0)
    s.run_until(60)
    assert s.versions("app") == {"gpu": V, "mac": None}
    assert s.state("app").phase == "Succeeded"


def test_a_node_that_becomes_unlisted_loses_what_it_was_given() -> None:
    s = _unlisted_sim("allow", True)
    assert s.versions("app")["edge-1"] == V
    s.registered = [replace(f, scoped=False) for f in s.registered]  # e.g. after an upgrade
    s.step(1)
    assert s.desired["edge-1"]["workloads"] == []
    assert s.versions("app") == {"n1": V, "edge-1": None, "edge-2": None}
