"""Rollout controls in the pure planner: windows (around DST), maxUnavailable, spread, holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from reconciler.dashboard.render import nodes_section
from reconciler.plan.budget import dropped_off, max_unavailable, spread_delay, unavailable
from reconciler.plan.observations import NodeReport
from reconciler.plan.state import fingerprint
from reconciler.plan.windows import Opening, next_opening, open_now, wait_text
from reconciler.spec import Window
from reconciler.views.fleet_status import release_row
from reconciler.views.view import health_tone, node_rows
from tests.helpers.fleet import (
    PlanSim,
    fleet_doc,
    fleet_files,
    node_doc,
    nodes_named,
    release_doc,
    spec_of,
)
from tests.helpers.reports import report_doc, workload_report

V = "1.0.0"


def utc(text: str) -> float:
    """``"2026-03-29 01:30"`` (UTC) as unix seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def window(days: str, start: str, minutes: int, tz: str = "Europe/Berlin") -> Window:
    return Window(days=tuple(days.split(",")), start=start, minutes=minutes, timezone=tz)


# --- windows: open or not at a UTC instant ---------------------------------------------

SUN_0230 = window("Sun", "02:30", 60)
SUN_0100_4H = window("Sun", "01:00", 240)
FRI_2300_3H = window("Fri", "23:00", 180, "UTC")
TUE_0200 = window("Tue", "02:00", 120)

OPEN_CASES = [
    # spring forward, Europe/Berlin 2026-03-29: 02:00 CET jumps to 03:00 CEST. 02:30 does
    # not exist; the window opens at the pre-gap offset: 01:30 UTC (03:30 CEST).
    ("spring: before the shifted opening", SUN_0230, "2026-03-29 01:29", False),
    ("spring: at 03:30 CEST", SUN_0230, "2026-03-29 01:30", True),
    ("spring: one real hour later it closes", SUN_0230, "2026-03-29 02:30", False),
    # fall back, 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice and
    # the window takes the first (CEST, 00:30 UTC)
    ("fall: first 02:30 (CEST)", SUN_0230, "2026-10-25 00:30", True),
    ("fall: closed again at the second 02:30 (CET)", SUN_0230, "2026-10-25 01:30", False),
    # a 4h window over the fall-back hour lasts 4 real hours: 23:00 UTC to 03:00 UTC
    ("fall: 4h is elapsed time, still open", SUN_0100_4H, "2026-10-25 02:59", True),
    ("fall: 4h is elapsed time, closed", SUN_0100_4H, "2026-10-25 03:00", False),
    ("winter offset: Sun 01:00 CET is 00:00 UTC", SUN_0100_4H, "2026-11-29 00:00", True),
    # crossing midnight: Friday 23:00 for 3h is open early Saturday, not early Friday
    ("midnight: Sat 01:00 belongs to Friday's window", FRI_2300_3H, "2026-12-05 01:00", True),
    ("midnight: closed at Sat 02:00", FRI_2300_3H, "2026-12-05 02:00", False),
    ("midnight: Fri 01:00 is not in it", FRI_2300_3H, "2026-12-04 01:00", False),
    ("wrong day", TUE_0200, "2026-12-02 01:30", False),
    (
        "unknown zone never opens",
        window("Tue", "02:00", 120, "Mars/Olympus"),
        "2026-12-01 01:30",
        False,
    ),
]


@pytest.mark.parametrize(("name", "w", "at", "want"), OPEN_CASES, ids=[c[0] for c in OPEN_CASES])
def test_window_open(name: str, w: Window, at: str, want: bool) -> None:
    assert open_now((w,), utc(at)) is want


def test_no_windows_or_ignore_is_always_open() -> None:
    assert open_now(None, 0.0) and open_now("ignore", 0.0) and open_now((), 0.0)


NEXT_CASES = [
    # Monday 20:48 CET -> Tuesday 02:00 CET is 5h 12m away
    ("Berlin in winter", TUE_0200, "2026-11-30 19:48", "2026-12-01 01:00", "Tue 02:00"),
    ("Berlin in summer (CEST)", TUE_0200, "2026-06-29 12:00", "2026-06-30 00:00", "Tue 02:00"),
    ("spring-forward gap", SUN_0230, "2026-03-28 12:00", "2026-03-29 01:30", "Sun 03:30"),
    ("fall-back first occurrence", SUN_0230, "2026-10-24 12:00", "2026-10-25 00:30", "Sun 02:30"),
    (
        "next week when this one passed",
        TUE_0200,
        "2026-12-01 01:30",
        "2026-12-08 01:00",
        "Tue 02:00",
    ),
]


@pytest.mark.parametrize(
    ("name", "w", "now", "opens", "label"), NEXT_CASES, ids=[c[0] for c in NEXT_CASES]
)
def test_next_opening(name: str, w: Window, now: str, opens: str, label: str) -> None:
    got = next_opening((w,), utc(now))
    assert got is not None
    assert got.start == utc(opens)
    assert got.label() == f"{label} {w.timezone}"


def test_wait_text_says_when() -> None:
    o = next_opening((TUE_0200,), utc("2026-11-30 19:48"))
    assert isinstance(o, Opening)
    text = wait_text(o.label(), o.start, utc("2026-11-30 19:48"))
    assert text == "Waiting for window (opens Tue 02:00 Europe/Berlin, in 5h 12m)"
    assert wait_text("x", 100.0, 99.5).endswith("in 1m)")  # rounded up, never "in 0m"


# --- maxUnavailable: 1, 3, 10, 1,000 targeted nodes -------------------------------------

BUDGET = [
    # (value, {targeted: allowed})
    ("10%", {1: 1, 3: 1, 10: 1, 1000: 100}),
    ("25%", {1: 1, 3: 1, 10: 2, 1000: 250}),
    ("33%", {1: 1, 3: 1, 10: 3, 1000: 330}),
    ("50%", {1: 1, 3: 1, 10: 5, 1000: 500}),
    ("100%", {1: 1, 3: 3, 10: 10, 1000: 1000}),
    (2, {1: 2, 3: 2, 10: 2, 1000: 2}),
    (0, {1: 0, 3: 0, 10: 0, 1000: 0}),
]


@pytest.mark.parametrize(("value", "want"), BUDGET)
def test_max_unavailable(value: int | str, want: dict[int, int]) -> None:
    assert {n: max_unavailable(value, n) for n in want} == want


# --- spread ------------------------------------------------------------------------------


def test_spread_is_bounded_deterministic_and_spread_out() -> None:
    nodes = [f"node-{i}" for i in range(500)]
    first = [spread_delay(n, "fp1", 600) for n in nodes]
    assert first == [spread_delay(n, "fp1", 600) for n in nodes]  # a hash, not random
    assert all(0 <= d <= 600 for d in first)
    # 500 nodes over 601 seconds: no second gets more than a handful of fetches
    assert max(first.count(d) for d in set(first)) <= 6
    assert len(set(first)) > 300
    assert first != [spread_delay(n, "fp2", 600) for n in nodes]  # a new rollout reshuffles
    assert {spread_delay(n, "fp1", 0) for n in nodes} == {0}


# --- the planner with the controls --------------------------------------------------------


def workloads(doc: dict[str, Any]) -> list[dict[str, Any]]:
    items = doc["workloads"]
    assert isinstance(items, list)
    return items


def release(**rollout: Any) -> dict[str, Any]:
    doc = release_doc("app", V, batch_size=1, soak=0, timeout=900)
    doc["rollout"].update(rollout)
    return doc


def sim(rel: dict[str, Any], nodes: list[dict[str, Any]] | None = None, **kw: Any) -> PlanSim:
    return PlanSim(fleet_files(nodes or nodes_named("n1", "n2", "n3"), [rel]), **kw)


BERLIN_NIGHTS = [{"days": ["Tue"], "start": "02:00", "duration": "2h", "timezone": "Europe/Berlin"}]
MON_2048 = utc("2026-11-30 19:48")
TUE_0200_UTC = utc("2026-12-01 01:00")


def test_closed_window_waits_and_wakes_at_the_opening() -> None:
    s = sim(release(windows=BERLIN_NIGHTS), now=MON_2048)
    plan = s.step()
    assert s.versions("app") == {"n1": None, "n2": None, "n3": None}
    st = s.state("app")
    assert st is not None and st.wait is not None and st.phase == "Progressing"
    assert plan.next_wake_at == TUE_0200_UTC
    row = release_row(st, s.reports, s.now, s.ttl)
    assert row["reason"] == "Waiting for window (opens Tue 02:00 Europe/Berlin, in 5h 12m)"
    assert row["waitingUntil"] == "2026-12-01T01:00:00Z"
    assert s.step().changed_rollouts == frozenset()  # waiting writes nothing new
    s.step(TUE_0200_UTC)
    assert s.versions("app") == {"n1": V, "n2": None, "n3": None}
    s.run_until(TUE_0200_UTC + 600)
    assert s.state("app").phase == "Succeeded"  # type: ignore[union-attr]


def test_node_window_wins_and_ignore_overrides_it() -> None:
    nodes = nodes_named("n1", "n2")
    nodes[1]["windows"] = BERLIN_NIGHTS
    s = sim(release(batchSize=2), nodes, now=MON_2048)
    s.step()
    assert s.versions("app") == {"n1": V, "n2": None}  # the batch straddles: n2 waits
    st = s.state("app")
    assert st is not None and st.wait is not None and st.wait.until == TUE_0200_UTC
    emergency = sim(release(batchSize=2, windows="ignore"), nodes, now=MON_2048)
    emergency.step()
    assert emergency.versions("app") == {"n1": V, "n2": V}


def test_timeout_counts_from_the_window_not_the_batch() -> None:
    s = sim(release(windows=BERLIN_NIGHTS, timeoutSeconds=60), now=MON_2048)
    s.step()
    s.agents = {"n1": "down"}
    s.step(TUE_0200_UTC)  # given now; had the batch start counted, 5h > 60s would halt
    assert s.state("app").phase == "Progressing"  # type: ignore[union-attr]
    s.step(TUE_0200_UTC + 61)
    assert s.state("app").phase == "Halted"  # type: ignore[union-attr]


def test_backpressure_holds_the_next_batch_then_lets_it_go() -> None:
    s = sim(release(maxUnavailable=1), nodes_named("n1", "n2", "n3", "n4"))
    s.agents = {"n3": "down", "n4": "down"}
    s.step(0)  # nobody has reported yet: all four count as unavailable
    s.run_until(60)  # n1 and n2 report; n3 and n4 never do
    st = s.state("app")
    assert st is not None
    assert s.versions("app") == {"n1": None, "n2": None, "n3": None, "n4": None}
    assert st.wait is not None and st.wait.kind == "backpressure"
    assert st.wait.nodes == ("n3", "n4")
    reason = release_row(st, s.reports, s.now, s.ttl)["reason"]
    assert reason == (
        "Waiting: 2 targeted node(s) unavailable: n3 (Stale), n4 (Stale); maxUnavailable 1"
    )
    s.agents = {"n4": "down"}  # n3 comes back: one down is within the budget
    s.run_until(90)
    assert s.versions("app")["n1"] == V
    assert s.state("app").wait is None  # type: ignore[union-attr]


def test_drop_off_halts_naming_the_nodes() -> None:
    rel = release(maxUnavailable=1, batchSize=2, soakSeconds=300)
    s = sim(rel, nodes_named("n1", "n2", "n3", "n4"))
    s.step(0)
    s.run_until(390)  # batch 1 (n1, n2) soaked; batch 2 (n3, n4) given and soaking
    assert s.versions("app")["n3"] == V
    s.agents = {"n1": "unhealthy:app", "n2": "down"}
    s.run_until(420)
    assert s.state("app").phase == "Soaking"  # type: ignore[union-attr]  # one is within budget
    s.run_until(600)  # n2 goes Stale too: two dropped off, more than 1
    st = s.state("app")
    assert st is not None and st.phase == "Halted" and st.halt is not None
    assert st.halt.reason == (
        "2 node(s) of the started batches dropped off: n1 (Unhealthy), n2 (Stale); "
        "more than maxUnavailable 1"
    )


def test_spread_puts_not_before_in_the_document_and_repeats_it() -> None:
    s = sim(release(spreadSeconds=600, batchSize=3), now=1000.0)
    s.step()
    stamps = {}
    for n in ("n1", "n2", "n3"):
        (w,) = workloads(s.desired[n])
        stamps[n] = w["notBefore"]
        at = datetime.fromisoformat(str(stamps[n]).replace("Z", "+00:00")).timestamp()
        assert 1000 <= at <= 1600
    assert s.step().desired == s.desired  # second pass: the same document
    assert len(set(stamps.values())) > 1


def test_held_node_keeps_its_version_and_never_blocks() -> None:
    nodes = [node_doc("n1"), node_doc("n2"), node_doc("n3")]
    s = sim(release_doc("app", "0.9.0", soak=0), nodes)
    s.step(0)
    s.run_until(200)
    assert s.versions("app") == {"n1": "0.9.0", "n2": "0.9.0", "n3": "0.9.0"}
    s.files["nodes/n2.yaml"]["hold"] = {"until": "2026-12-24"}
    s.files["releases/app/1.0.0.yaml"] = release(batchSize=1)
    s.run_until(600)
    st = s.state("app")
    assert st is not None and st.phase == "Succeeded" and st.held == ("n2",)
    assert s.versions("app") == {"n1": V, "n2": "0.9.0", "n3": V}
    assert release_row(st, s.reports, s.now, s.ttl)["held"] == ["n2"]
    assert s.step().changed_rollouts == frozenset()
    # the hold ends at the start of its day (UTC): n2 rejoins in a new last batch
    end = utc("2026-12-24 00:00")
    assert s.step().next_wake_at == end
    s.step(end)
    s.run_until(end + 120)
    assert s.versions("app")["n2"] == V and s.state("app").held == ()  # type: ignore[union-attr]


def test_fleet_default_windows_apply_to_every_release() -> None:
    fleet = fleet_doc()
    fleet["defaults"] = {"rollout": {"windows": BERLIN_NIGHTS}}
    files = fleet_files(nodes_named("n1"), [release()], fleet=fleet)
    s = PlanSim(files, now=MON_2048)
    s.step()
    assert s.versions("app") == {"n1": None}
    s.files["releases/app/1.0.0.yaml"] = release(windows="ignore")  # the emergency override
    s.step()
    assert s.versions("app") == {"n1": V}


@pytest.mark.parametrize(
    ("row", "want"),
    [
        ({"held": True, "heldUntil": "2026-12-24T00:00:00Z"}, "Healthy, held until 2026-12-24"),
        ({"held": True, "heldUntil": None}, "Healthy, held"),
        ({}, "Healthy"),
    ],
)
def test_status_and_dashboard_show_a_held_node(row: dict[str, Any], want: str) -> None:
    status = {"nodes": [{"node": "n2", "health": "Healthy", "workloads": [], **row}]}
    (shown,) = node_rows(status, 0.0)
    assert shown.health == want and shown.tone == "ok"
    assert health_tone(shown.health) == "ok"  # the CLI table and the dashboard pill
    html = nodes_section([shown])
    assert f'<span class="pill ok">{want}</span>' in html, html


def test_unused_controls_keep_the_fingerprint_an_upgrade_must_not_restart_rollouts() -> None:
    def fp(doc: dict[str, Any]) -> str:
        return fingerprint(spec_of(fleet_files(nodes_named("n1"), [doc])).deployables[0])

    plain = release_doc("app", V)
    # The digest this release has on main without the rollout controls. If a new field of
    # Deployable changes it, every running rollout restarts when the reconciler is upgraded:
    # leave the field out of the digest while it has its default, as the controls do.
    assert fp(plain) == "aa97e9c53acfd27c"
    explicit = release_doc("app", V)
    explicit["rollout"]["spreadSeconds"] = 0
    assert fp(explicit) == fp(plain)
    explicit["rollout"]["spreadSeconds"] = 60
    assert fp(explicit) != fp(plain)


def test_a_batch_starts_when_a_window_opens_and_backpressure_is_judged_then() -> None:
    s = sim(release(windows=BERLIN_NIGHTS, maxUnavailable=0), nodes_named("n1", "n2"))
    s.step(MON_2048)
    s.run_until(MON_2048 + 60)
    assert "batch-started" not in s.kinds()  # nothing starts hours before the window
    s.agents = {"n2": "down"}  # n2 goes silent before the window opens
    s.run_until(TUE_0200_UTC - 30)
    s.heartbeat()
    s.step(TUE_0200_UTC)
    st = s.state("app")
    assert st is not None and st.wait is not None and st.wait.kind == "backpressure"
    assert s.versions("app") == {"n1": None, "n2": None}
    s.agents = {}
    s.run_until(TUE_0200_UTC + 30)
    assert s.versions("app")["n1"] == V and "batch-started" in s.kinds()


def _report(node: str, at: float, phase: str = "Healthy", version: str = V) -> NodeReport:
    doc = report_doc(node, [workload_report("app", version, phase=phase)])
    return NodeReport.from_json(node, doc, at)


UNAVAILABLE = [
    # (reports at now=1000 with ttl 90, want)
    ({"a": _report("a", 990)}, []),
    ({"a": _report("a", 900)}, [("a", "Stale")]),  # 100s > ttl
    ({"a": _report("a", 990, "Unhealthy")}, [("a", "Unhealthy")]),
    ({}, [("a", "Stale")]),  # never reported
]


@pytest.mark.parametrize(("reports", "want"), UNAVAILABLE)
def test_unavailable(reports: dict[str, NodeReport], want: list[tuple[str, str]]) -> None:
    assert unavailable(["a"], reports, 1000.0, 90.0) == want


def test_dropped_off_judges_converged_and_converging_nodes_differently() -> None:
    reports = {
        "done-ok": _report("done-ok", 990),
        "done-old": _report("done-old", 990, version="0.9.0"),  # no longer runs the target
        "done-silent": _report("done-silent", 800),
        "busy-restarting": _report("busy-restarting", 990, "Restarting"),  # still converging
        "busy-silent": _report("busy-silent", 800),
    }
    got = dropped_off(
        ["done-ok", "done-old", "done-silent"],
        ["busy-restarting", "busy-silent"],
        "app",
        V,
        reports,
        1000.0,
        90.0,
    )
    assert got == [("done-old", "runs 0.9.0"), ("done-silent", "Stale"), ("busy-silent", "Stale")]
