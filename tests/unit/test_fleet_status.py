"""The pure fleet status builder: rows per node and per release, schema-valid."""

from __future__ import annotations

from typing import Any

import pytest

import schema
from reconciler.plan.observations import NodeReport
from reconciler.spec import FleetSpec
from reconciler.store.base import AppliedRevision, DesiredRecord, NodeRecord, ReportRecord
from reconciler.views.fleet_status import fleet_gauges, fleet_status, gauges_of, is_unlisted
from tests.helpers.fleet import PlanSim, fleet_files, nodes_named, release_doc

V = "1.0.0"


def status_of(s: PlanSim, **kw: Any) -> dict[str, Any]:
    reports = [
        ReportRecord(
            node=n,
            report={
                "node": n,
                "generation": 1,
                "workloads": [
                    {"name": w.name, "version": w.version, "phase": w.phase, "healthy": w.healthy}
                    for w in r.workloads.values()
                ],
            },
            received_at=r.received_at,
        )
        for n, r in s.reports.items()
    ]
    desired = [DesiredRecord(n, 1, '"1"', {**d, "generation": 1}) for n, d in s.desired.items()]
    regs = [NodeRecord("n1", {"platform": "linux/amd64", "runtimes": {"llama-cpp": True}}, "h", 0)]
    doc = fleet_status(
        s.spec(),
        regs,
        s.rollouts,
        reports,
        desired,
        s.now,
        s.ttl,
        applied=AppliedRevision("a" * 40, {"kind": "merge", "ref": "a" * 40, "signers": []}, 0),
        **kw,
    )
    assert schema.errors("fleet-status", doc) == []
    assert_gauges_match(doc, s.spec(), regs, s.rollouts, reports, desired, s.now, s.ttl, **kw)
    return doc


def assert_gauges_match(
    doc: dict[str, Any],
    spec: FleetSpec | None,
    regs: list[NodeRecord],
    rollouts: Any,
    reports: list[ReportRecord],
    desired: list[DesiredRecord],
    now: float,
    ttl: float,
    **kw: Any,
) -> None:
    """/metrics' gauges, counted without the rows, are the document's."""
    last = {r.node: NodeReport.from_json(r.node, r.report, r.received_at) for r in reports}
    gauges = fleet_gauges(
        spec,
        [r.name for r in regs],
        {r.name for r in regs if is_unlisted(spec, r)},
        [d.node for d in desired],
        rollouts,
        last,
        now,
        ttl,
        **kw,
    )
    assert gauges == gauges_of(doc)
    assert sum(gauges.health.values()) == len(doc["nodes"])


def release(doc: dict[str, Any], name: str = "app") -> dict[str, Any]:
    rows = [r for r in doc["releases"] if r["agent"] == name and r["phase"] != "Superseded"]
    assert len(rows) == 1
    return rows[0]


@pytest.mark.parametrize(
    ("until", "agents", "want"),
    [
        (
            0,
            {},
            {
                "phase": "Progressing",
                "batch": "1/3",
                "reason": "waiting for n1 (Stale), n2 (Stale)",
            },
        ),
        (
            30,
            {},
            {
                "phase": "Soaking",
                "batch": "1/3",
                "soakRemainingSeconds": 300.0,
                "reason": "soaking, 300s left",
            },
        ),
        (120, {}, {"phase": "Soaking", "batch": "1/3", "soakRemainingSeconds": 210.0}),
        (30, {"n2": "fail:app"}, {"phase": "Halted", "batch": "1/3"}),
        (
            2000,
            {},
            {"phase": "Succeeded", "batch": "3/3", "reason": None, "soakRemainingSeconds": None},
        ),
    ],
)
def test_release_rows(until: float, agents: dict[str, str], want: dict[str, Any]) -> None:
    s = PlanSim(
        fleet_files(
            nodes_named("n1", "n2", "n3", "n4", "n5"),
            [release_doc("app", V, batch_size=2, soak=300)],
        )
    )
    s.agents.update(agents)
    s.step(0)
    s.run_until(until)
    row = release(status_of(s))
    assert {k: row[k] for k in want} == want
    assert row["version"] == V and row["kind"] == "process"
    assert [b["nodes"] for b in row["batches"]] == [["n1", "n2"], ["n3", "n4"], ["n5"]]


def test_halted_row_names_node_and_batch_timeline() -> None:
    s = PlanSim(fleet_files(nodes_named("n1", "n2", "n3"), [release_doc("app", V, batch_size=2)]))
    s.agents["n2"] = "fail:app"
    s.step(0)
    s.run_until(30)
    row = release(status_of(s))
    assert row["phase"] == "Halted"
    assert "n2" in row["reason"]
    assert [b["state"] for b in row["batches"]] == ["Halted", "Pending"]
    assert row["batches"][0]["startedAt"] == "1970-01-01T00:00:00Z"


def test_node_rows_health_desired_vs_running() -> None:
    s = PlanSim(
        fleet_files(nodes_named("n1", "n2", "n3"), [release_doc("app", V, batch_size=3)]), ttl=90
    )
    s.agents.update({"n2": "unhealthy:app", "n3": "down"})
    s.step(0)
    s.run_until(30)
    doc = status_of(s)
    rows = {r["node"]: r for r in doc["nodes"]}
    assert [rows[n]["health"] for n in ("n1", "n2", "n3")] == ["Healthy", "Unhealthy", "Stale"]
    assert rows["n1"]["workloads"] == [
        {"name": "app", "desired": V, "running": V, "phase": "Healthy", "healthy": True}
    ]
    assert rows["n3"]["workloads"][0]["running"] is None
    assert rows["n3"]["lastSeen"] is None
    assert rows["n1"]["lastSeen"] == "1970-01-01T00:00:30Z"
    assert rows["n1"]["runtimes"] == {"llama-cpp": True}
    s.run_until(200)  # n1 keeps reporting; a node silent for more than the TTL is Stale
    s.agents["n1"] = "down"
    s.run_until(300)
    assert {r["node"]: r["health"] for r in status_of(s)["nodes"]}["n1"] == "Stale"


def test_superseded_row_and_blocked_rows() -> None:
    s = PlanSim(fleet_files(nodes_named("n1", "n2"), [release_doc("app", V, soak=600)]))
    s.step(0)
    s.run_until(30)
    s.files.update(fleet_files(releases=[release_doc("app", "1.1.0", soak=600)]))
    s.run_until(60)
    blocked = [
        {
            "agent": "app",
            "version": "2.0.0",
            "phase": "Unapproved",
            "batch": None,
            "reason": "Unapproved: abc changes releases/app/2.0.0.yaml without a merge",
        }
    ]
    doc = status_of(s, blocked=blocked)
    phases = [(r["version"], r["phase"]) for r in doc["releases"]]
    assert phases == [(V, "Superseded"), ("1.1.0", "Progressing"), ("2.0.0", "Unapproved")]
    assert doc["revision"] == "a" * 40


_EDGE = {"platform": "linux/arm64", "roles": ["inference"], "labels": {"site": "lab"}}
_SCOPED = {
    "via": "join-token",
    "tokenId": "t",
    "scope": {"roles": ["inference"], "labels": {"site": "lab"}},
}
_NARROW = {"via": "join-token", "tokenId": "t", "scope": {"roles": ["inference"]}}

# (registration.unlisted, admission of the file-less node) -> its health
UNLISTED_HEALTH = [
    (None, _SCOPED, "Unlisted"),
    ("allow", {}, "Unlisted"),  # registered before join tokens, or with the bootstrap token
    ("allow", {"via": "join-token", "tokenId": "t", "scope": {"node": "edge-1"}}, "Unlisted"),
    ("allow", _NARROW, "Unlisted"),  # claims a label the scope does not cover
    ("allow", _SCOPED, "Stale"),  # admitted: planned, judged by its reports (none yet)
]


@pytest.mark.parametrize(("unlisted", "admission", "health"), UNLISTED_HEALTH)
def test_a_node_without_a_file_shows_unlisted_unless_admitted(
    unlisted: str | None, admission: dict[str, Any], health: str
) -> None:
    from reconciler.spec import build_spec
    from tests.helpers.fleet import fleet_doc

    fleet = fleet_doc()
    if unlisted is not None:
        fleet["registration"] = {"unlisted": unlisted}
    spec = build_spec(fleet_files(nodes_named("n1"), [], fleet))
    regs = [NodeRecord("edge-1", _EDGE, "h", 0, admission)]
    doc = fleet_status(spec, regs, {}, [], [], 100.0, 90.0)
    assert schema.errors("fleet-status", doc) == []
    assert_gauges_match(doc, spec, regs, {}, [], [], 100.0, 90.0)
    rows = {n["node"]: n["health"] for n in doc["nodes"]}
    assert rows == {"n1": "Stale", "edge-1": health}
