"""Operator controls in the pure planner: pause, resume, retry, promote, skip-node.

Each scenario drives ``compute_plan`` with simulated agents (``PlanSim``) and control
records as the admin API stores them; the planner only folds them in.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from reconciler.dashboard.render import releases_section
from reconciler.plan.conditions import rollout_progress
from reconciler.plan.controls import Control, apply_controls, pause_of
from reconciler.plan.state import Pause, state_from_json, state_to_json
from reconciler.views.fleet_status import release_row
from reconciler.views.view import control_actions, release_rows
from tests.helpers.fleet import PlanSim, fleet_files, nodes_named, release_doc

V = "1.0.0"


def release(version: str = V, **rollout: Any) -> dict[str, Any]:
    doc = release_doc("app", version, batch_size=1, soak=0, timeout=900)
    doc["rollout"].update(rollout)
    return doc


def sim(rel: dict[str, Any], *names: str) -> PlanSim:
    return PlanSim(fleet_files(nodes_named(*(names or ("n1", "n2", "n3"))), [rel]))


def phase(s: PlanSim) -> str:
    st = s.state("app")
    assert st is not None
    return st.phase


def reason(s: PlanSim) -> Any:
    st = s.state("app")
    assert st is not None
    return release_row(st, s.reports, s.now, s.ttl)["reason"]


def entry(s: PlanSim, node: str) -> dict[str, Any]:
    items = s.desired[node]["workloads"]
    assert isinstance(items, list) and len(items) == 1 and isinstance(items[0], dict)
    return items[0]


def test_pause_holds_the_next_batch_and_lets_in_flight_nodes_finish() -> None:
    s = sim(release(soakSeconds=60))
    s.step(0)
    assert s.versions("app") == {"n1": V, "n2": None, "n3": None}
    s.control("pause", "app", reason="disk alarms on n2")
    s.run_until(300)
    st = s.state("app")
    assert st is not None and st.batches[0].done_at is not None  # n1 soaked and finished
    assert s.versions("app") == {"n1": V, "n2": None, "n3": None}  # nobody else given it
    assert reason(s) == "Paused by alice: disk alarms on n2"
    assert release_row(st, s.reports, s.now, s.ttl)["paused"] == {
        "by": "alice",
        "reason": "disk alarms on n2",
        "at": "1970-01-01T00:00:00Z",
    }
    assert s.step().changed_rollouts == frozenset()  # paused and idle: writes nothing
    s.control("resume", "app")
    s.run_until(600)
    assert phase(s) == "Succeeded" and set(s.versions("app").values()) == {V}
    assert "control-applied" not in s.kinds()  # pause/resume are levels, not events


def test_a_pause_survives_a_new_approved_version_and_never_changes_what_is_desired() -> None:
    s = sim(release())
    s.step(0)
    s.run_until(300)
    assert phase(s) == "Succeeded"
    s.control("pause", "app", reason="freeze for the demo")
    s.files["releases/app/1.1.0.yaml"] = release("1.1.0")  # approved while paused
    s.run_until(600)
    st = s.state("app")
    assert st is not None and st.version == "1.1.0" and st.paused is not None
    assert set(s.versions("app").values()) == {V}  # still paused: no node given 1.1.0
    assert reason(s) == "Paused by alice: freeze for the demo"
    s.control("resume", "app")
    s.run_until(900)
    assert phase(s) == "Succeeded" and set(s.versions("app").values()) == {"1.1.0"}


def test_pause_does_not_hide_a_failure_of_a_node_already_given_the_target() -> None:
    s = sim(release())
    s.step(0)
    s.control("pause", "app")
    s.agents = {"n1": "fail:app"}
    s.run_until(60)
    assert phase(s) == "Halted"
    assert reason(s).endswith("; Paused by alice: test")


@pytest.mark.parametrize("on_failure", ["halt", "rollback"])
def test_retry_lifts_a_halt_and_tells_the_agent_to_try_again(on_failure: str) -> None:
    s = sim(release(onFailure=on_failure))
    s.step(0)
    s.agents = {"n1": "fail:app"}
    s.run_until(60)
    assert phase(s) == "Halted"
    s.agents = {}  # fixed on the node (a missing library installed), no new commit
    s.run_until(300)
    assert phase(s) == "Halted"  # a halt stays until an operator acts
    s.control("retry", "app", reason="libcuda installed on n1")
    s.step()
    assert phase(s) == "Progressing"
    assert entry(s, "n1")["version"] == V and entry(s, "n1")["retryGeneration"] == 1
    assert [e.message for e in s.events if e.kind == "control-applied"] == [
        "app 1.0.0: retry by alice (libcuda installed on n1): retry 1: n1 given the target again"
    ]
    s.run_until(600)
    st = s.state("app")
    assert st is not None and st.phase == "Succeeded" and st.retries == 1
    assert s.versions("app") == {"n1": V, "n2": V, "n3": V}
    assert "retryGeneration" not in entry(s, "n2")  # only the retried node is told to


def test_after_a_retry_only_a_failure_of_the_new_document_halts_again() -> None:
    s = sim(release())
    s.step(0)
    s.agents = {"n1": "fail:app"}
    s.run_until(60)
    old = s.reports["n1"]
    s.control("retry", "app")
    s.step()
    # the agent's next heartbeat still describes the document it failed on
    s.reports["n1"] = replace(old, received_at=s.now + 10)
    s.step(s.now + 10)
    assert phase(s) == "Progressing"
    s.run_until(s.now + 30)  # it acts on the retry document and fails again: a real failure
    st = s.state("app")
    assert st is not None and st.phase == "Halted" and st.retries == 1
    assert s.reports["n1"].generation > old.generation


def test_a_retry_of_a_rollout_that_is_not_halted_does_nothing() -> None:
    s = sim(release(soakSeconds=600))
    s.step(0)
    s.control("retry", "app")
    s.step()
    st = s.state("app")
    assert st is not None and st.retries == 0 and st.control_seq == 1
    assert "retryGeneration" not in entry(s, "n1")


def test_skip_node_leaves_a_dead_node_behind_and_lifts_the_halt_it_caused() -> None:
    s = sim(release(timeoutSeconds=60))
    s.agents = {"n2": "down"}
    s.step(0)
    s.run_until(240)  # n1 done, n2 given and never converging
    st = s.state("app")
    assert st is not None and st.phase == "Halted" and st.halt is not None
    assert st.halt.node == "n2"
    s.control("skip-node", "app", node="n2", reason="n2's PSU died")
    s.run_until(420)
    st = s.state("app")
    assert st is not None and st.phase == "Succeeded" and st.skipped == ("n2",)
    assert s.versions("app") == {"n1": V, "n2": None, "n3": V}  # n2 keeps what it had
    row = release_row(st, s.reports, s.now, s.ttl)
    assert row["skipped"] == ["n2"] and row["reason"] == "(skipped: n2)"


def test_a_skipped_node_no_longer_counts_against_max_unavailable() -> None:
    s = sim(release(maxUnavailable=0), "n1", "n2")
    s.agents = {"n2": "down"}
    s.step(0)
    s.run_until(120)
    st = s.state("app")
    assert st is not None and st.wait is not None and st.wait.kind == "backpressure"
    s.control("skip-node", "app", node="n2")
    s.run_until(240)
    assert phase(s) == "Succeeded" and s.versions("app") == {"n1": V, "n2": None}


def test_promote_ends_the_running_batch_soak_only() -> None:
    s = sim(release(soakSeconds=3600))
    s.step(0)
    s.run_until(60)
    assert phase(s) == "Soaking"
    s.control("promote", "app", reason="canary looks fine")
    s.run_until(120)
    st = s.state("app")
    assert st is not None and st.batches[0].done_at is not None and st.batches[0].promoted
    assert s.versions("app") == {"n1": V, "n2": V, "n3": None}
    s.run_until(600)
    assert phase(s) == "Soaking"  # batch 2 soaks its full hour
    assert s.step().changed_rollouts == frozenset()  # the record is applied once


def test_controls_issued_against_an_older_rollout_are_ignored() -> None:
    s = sim(release(soakSeconds=3600))
    s.step(0)
    s.run_until(60)
    s.control("promote", "app")  # against 1.0.0's rollout ...
    s.files["releases/app/1.1.0.yaml"] = release("1.1.0", soakSeconds=3600)
    s.step()  # ... which 1.1.0 replaces before the planner folds it in
    s.run_until(180)
    st = s.state("app")
    assert st is not None and st.version == "1.1.0" and not st.batches[0].promoted
    assert st.control_seq == 0 and phase(s) == "Soaking"
    assert s.versions("app") == {"n1": "1.1.0", "n2": None, "n3": None}


def test_control_state_round_trips_through_json() -> None:
    s = sim(release(timeoutSeconds=60, soakSeconds=60))
    s.step(0)
    s.agents = {"n1": "fail:app"}
    s.run_until(60)
    s.agents = {}
    s.control("retry", "app")
    s.control("skip-node", "app", node="n3")
    s.run_until(180)
    s.control("promote", "app")
    s.control("pause", "app")
    s.step()
    st = s.state("app")
    assert st is not None
    assert st.paused == Pause("alice", "test", 180.0)
    assert st.retries == 1 and st.skipped == ("n3",) and st.control_seq == 4
    assert [b.promoted for b in st.batches] == [False, True, False]
    assert st.nodes["n1"].retry == 1
    assert state_from_json(state_to_json(st)) == st


CONTROL_ROWS = [
    ({"phase": "Soaking", "paused": None}, ("pause", "promote")),
    ({"phase": "Progressing", "paused": {"by": "a"}}, ("resume", "promote")),
    ({"phase": "Halted", "paused": None}, ("pause", "retry")),
    ({"phase": "Succeeded", "paused": None}, ("pause",)),
    ({"phase": "Superseded"}, ()),  # a history row: nothing to steer
]


@pytest.mark.parametrize(("row", "want"), CONTROL_ROWS)
def test_dashboard_offers_the_controls_that_apply(row: dict[str, Any], want: tuple[str]) -> None:
    assert control_actions(row) == want


def test_newest_pause_or_resume_wins() -> None:
    def c(seq: int, action: Any) -> Control:
        return Control(seq, "app", action, "fp", "bob", f"r{seq}", float(seq))

    assert pause_of([]) is None
    assert pause_of([c(1, "pause"), c(2, "resume")]) is None
    assert pause_of([c(2, "resume"), c(1, "pause"), c(3, "pause")]) == Pause("bob", "r3", 3.0)
    assert pause_of([c(1, "pause"), c(2, "retry")]) == Pause("bob", "r1", 1.0)
    s = sim(release())
    s.step(0)
    st = s.state("app")
    assert st is not None
    other = Control(1, "app", "promote", "not-this-rollout", "bob", "x", 0.0)
    assert apply_controls(st, [other]).state == st


def test_a_pause_shows_in_the_reconciling_condition_and_on_the_dashboard_card() -> None:
    s = sim(release(soakSeconds=600))
    s.step(0)
    s.control("pause", "app", reason="<b>freeze</b>")
    s.step(30)
    _, busy = rollout_progress(s.rollouts, {"app"})
    assert busy == ["app 1.0.0 Progressing batch 1/3, paused by alice: <b>freeze</b>"]
    st = s.state("app")
    assert st is not None
    row = release_row(st, s.reports, s.now, s.ttl)
    html = releases_section(release_rows({"releases": [row]}, s.now))
    assert "Paused by alice: &lt;b&gt;freeze&lt;/b&gt;" in html  # escaped, like every value
    assert 'data-action="resume"' in html and 'data-action="promote"' in html
    assert 'data-action="pause"' not in html and 'data-action="retry"' not in html
