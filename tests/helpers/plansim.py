"""``PlanSim``: a pure simulation of the planner plus agents (no I/O), for planner scenarios."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.plan.controls import Action, Control
from reconciler.plan.inputs import PlanInputs
from reconciler.plan.observations import NodeReport
from reconciler.plan.rollout import Plan, PlanEvent, compute_plan
from reconciler.plan.select import NodeFacts, inventory
from reconciler.plan.state import RolloutState, state_from_json
from reconciler.spec import JSON, FleetSpec
from tests.helpers.fleetdocs import Doc, spec_of
from tests.helpers.reports import desired_versions, report_doc, simulated_workloads


@dataclass
class PlanSim:
    """Drives ``compute_plan`` like the loop does, with simulated agents.

    ``agents[node]`` is how that node's agent behaves: ``"ok"`` converges to whatever is
    desired, ``"down"`` sends nothing, ``"fail:<workload>"`` fails that workload (and keeps
    running what it ran before), ``"unhealthy:<workload>"`` runs it but unhealthy.
    """

    files: dict[str, Doc]
    ttl: float = 90.0
    now: float = 0.0
    revision: str = "a" * 40
    agents: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, dict[str, JSON]] = field(default_factory=dict)
    desired: dict[str, dict[str, JSON]] = field(default_factory=dict)
    reports: dict[str, NodeReport] = field(default_factory=dict)
    running: dict[str, dict[str, str]] = field(default_factory=dict)
    stale: frozenset[str] = frozenset()
    events: list[PlanEvent] = field(default_factory=list)
    registered: list[NodeFacts] = field(default_factory=list)
    last: Plan | None = None
    controls: list[Control] = field(default_factory=list)  # operator controls, as stored
    generations: dict[str, int] = field(default_factory=dict)  # as the store would number

    def spec(self) -> FleetSpec:
        return spec_of(self.files)

    def plan(self) -> Plan:
        """One pass at ``now`` without applying it."""
        spec = self.spec()
        return compute_plan(
            PlanInputs(
                spec,
                inventory(spec, self.registered),
                self.rollouts,
                self.reports,
                self.desired,
                self.now,
                self.ttl,
                revision=self.revision,
                approval={"kind": "merge", "ref": self.revision, "signers": []},
                stale_before=self.stale,
                controls={
                    c.name: [x for x in self.controls if x.name == c.name] for c in self.controls
                },
            )
        )

    def controls_by_name(self) -> dict[str, list[Control]]:
        out: dict[str, list[Control]] = {}
        for c in self.controls:
            out.setdefault(c.name, []).append(c)
        return out

    def control(
        self, action: Action, name: str, node: str | None = None, reason: str = "test"
    ) -> Control:
        """Record an operator control against ``name``'s current rollout (as the API does)."""
        st = self.state(name)
        assert st is not None, f"no rollout of {name}"
        c = Control(
            seq=len(self.controls) + 1,
            name=name,
            action=action,
            fingerprint=st.fingerprint,
            actor="alice",
            reason=reason,
            at=self.now,
            node=node,
        )
        self.controls.append(c)
        return c

    def step(self, at: float | None = None) -> Plan:
        """One pass at ``at`` (default: now), applied as the loop would apply it."""
        if at is not None:
            self.now = at
        plan = self.plan()
        self.rollouts = {k: dict(v) for k, v in plan.rollouts.items()}
        for node, doc in plan.desired.items():
            if self.desired.get(node) != doc:
                self.generations[node] = self.generations.get(node, 0) + 1
        self.desired = {k: dict(v) for k, v in plan.desired.items()}
        self.stale = plan.stale
        self.events.extend(plan.events)
        self.last = plan
        return plan

    def heartbeat(self) -> None:
        """Every agent not down reports what it runs at ``now``."""
        for node, doc in sorted(self.desired.items()):
            mode = self.agents.get(node, "ok")
            if mode == "down":
                continue
            ws = simulated_workloads(mode, doc, self.running.setdefault(node, {}))
            generation = self.generations.get(node, 0)
            report = report_doc(node, ws, generation)
            self.reports[node] = NodeReport.from_json(node, report, self.now)

    def run_until(self, until: float, every: float = 30.0) -> Plan | None:
        """Heartbeat and pass every ``every`` seconds up to and including ``until``."""
        plan = self.last
        while self.now + every <= until:
            self.now += every
            self.heartbeat()
            plan = self.step()
        return plan

    def versions(self, workload: str) -> dict[str, str | None]:
        """``{node: desired version of workload or None}``."""
        return {n: desired_versions(d).get(workload) for n, d in sorted(self.desired.items())}

    def state(self, name: str) -> RolloutState | None:
        return state_from_json(self.rollouts[name])

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]
