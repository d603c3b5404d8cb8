"""What the loop plans from, kept in memory between passes; the store stays the truth.

A pass of the served loop needs the node facts, the rollout states, the desired
documents and every node's last report. Reading and JSON-decoding all of them from the
store on every pass made the cost of a heartbeat grow with the fleet. ``WorkingSet``
keeps them from one pass to the next, together with the planner's ``Memo``, so that a
pass re-plans only what the new reports touched (``reconciler.plan.incremental``):

- node facts: a registration patches in the node's new record, a reset re-reads them
  (``nodes_changed``); operator rollout controls newer than the last one seen are asked
  for every pass (one indexed query: another replica's API may have added one), and a
  new one makes the pass a full one;
- rollout states and desired documents are the ones the last pass wrote;
- a full pass (everything re-read from the store, every rollout stepped) runs on the
  first pass, on the jittered resync, when the applied revision or the inventory
  changed, and after any failed pass (``invalidate``): level-triggered, the memory can
  never drift far from the store.

Without a ``ReportBook`` (tests that write reports straight into the store) every pass
is a full pass over the store, as before.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence

from reconciler.plan.controls import Control
from reconciler.plan.incremental import Memo, Replan, replan
from reconciler.plan.inputs import PlanInputs
from reconciler.plan.observations import NodeReport
from reconciler.plan.select import NodeFacts, inventory
from reconciler.reportbook import ReportBook
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import AppliedRevision, DesiredRecord, NodeRecord, Store


class WorkingSet:
    def __init__(
        self,
        store: Store,
        reports: ReportBook | None,
        ttl: float,
    ) -> None:
        self._store = store
        self._reports = reports
        self._ttl = ttl
        self._nodes: dict[str, NodeFacts] | None = None  # by name, in name order
        self._nodes_seen = 0  # the re-read count self._nodes was read at
        self._registrations = 0  # bumped from the event loop; read by the pass's thread
        self._controls: dict[str, list[Control]] | None = None
        self._control_seq = 0  # the newest control in self._controls
        self._joined: dict[str, NodeRecord] = {}  # registered since the last pass
        self._joined_lock = threading.Lock()  # nodes_changed (loop) vs plan (thread)
        self._rollouts: dict[str, Mapping[str, JSON]] | None = None
        self._desired: dict[str, Mapping[str, JSON]] | None = None
        self._memo: Memo | None = None
        self._previous: Mapping[str, Mapping[str, JSON]] | None = None
        self._basis: tuple[str, str] | None = None  # revision, approval
        self._inventory: dict[str, NodeFacts] | None = None
        self.full_passes = 0
        self.incremental_passes = 0

    def nodes_changed(self, record: NodeRecord | None = None) -> None:
        """A node registered (``record``, as stored: the next pass patches it in) or left
        (a reset, None: the next pass re-reads every node from the store).

        Patching rather than re-reading: a flood of registrations (a fleet enrolling at
        1,000 nodes/s) would otherwise make every pass read and decode every node. A
        counter rather than clearing ``_nodes``: a change that lands while a pass is
        reading the nodes is still seen by the next pass."""
        if record is None:
            self._registrations += 1
            return
        with self._joined_lock:
            self._joined[record.name] = record

    def invalidate(self) -> None:
        """Forget everything: the next pass re-reads the store and steps every rollout."""
        self._nodes = self._rollouts = self._desired = self._controls = None
        self._memo = self._previous = self._basis = self._inventory = None

    def rollouts(self) -> dict[str, Mapping[str, JSON]]:
        """The rollout states as the last pass wrote them (a copy: any thread may call
        it); from the store when none is held (before the first pass, after a failure)."""
        held = self._rollouts
        return dict(held) if held is not None else dict(self._store.rollouts())

    def desired(self) -> dict[str, Mapping[str, JSON]]:
        """The desired documents as stored (with their generation)."""
        if self._desired is None:
            self._desired = {d.node: d.document for d in self._store.all_desired()}
        return self._desired

    def plan(
        self, spec: FleetSpec, applied: AppliedRevision, now: float, stale_before: frozenset[str]
    ) -> Replan:
        book = self._reports
        if book is None:
            self.invalidate()
        elif self._memo is None:  # a full pass re-reads the reports from the store too
            book.absorb(self._store.reports())
        news = book.take_news() if book is not None else frozenset()
        basis = (applied.sha, json.dumps(applied.approval, sort_keys=True))
        seen = self._registrations
        with self._joined_lock:  # taken before a re-read: applying one twice is harmless
            joined, self._joined = self._joined, {}
        if self._nodes is None or seen != self._nodes_seen:
            self._nodes = {
                r.name: NodeFacts.from_registration(r.name, r.facts, r.admission)
                for r in self._store.nodes()
            }
            self._nodes_seen, self._inventory = seen, None
        if joined:
            for r in joined.values():
                self._nodes[r.name] = NodeFacts.from_registration(r.name, r.facts, r.admission)
            self._nodes = dict(sorted(self._nodes.items()))  # the store's order (by name)
            self._inventory = None
        if self._controls is None:
            self._controls, self._control_seq = {}, 0
        fresh = self._store.controls(self._control_seq)
        for c in fresh:
            self._controls.setdefault(c.name, []).append(c)
            self._control_seq = max(self._control_seq, c.seq)
        if fresh:  # a new control: every rollout is stepped with it
            self._memo = None
        if basis != self._basis or self._inventory is None:
            self._memo = self._previous = None
        if self._inventory is None:
            self._inventory = inventory(spec, self._nodes.values())
        if self._rollouts is None:
            self._rollouts = dict(self._store.rollouts())
        reports: Mapping[str, NodeReport]
        if book is not None:
            reports = book.snapshot()
        else:
            reports = {
                r.node: NodeReport.from_json(r.node, r.report, r.received_at)
                for r in self._store.reports()
            }
        inputs = PlanInputs(
            spec,
            self._inventory,
            self._rollouts,
            reports,
            self.desired(),
            now,
            self._ttl,
            revision=applied.sha,
            approval=applied.approval,
            stale_before=stale_before,
            controls=self._controls,
        )
        result = replan(inputs, memo=self._memo, news=news, previous=self._previous)
        if result.touched is None:
            self.full_passes += 1
        else:
            self.incremental_passes += 1
        self._basis = basis
        return result

    def written(self, result: Replan, stored: Sequence[DesiredRecord]) -> None:
        """The pass stored ``result``'s changes: they are what the next pass starts from."""
        if self._rollouts is not None:
            for name in result.plan.changed_rollouts:
                self._rollouts[name] = result.plan.rollouts[name]
        desired = self.desired()
        for rec in stored:
            desired[rec.node] = rec.document
        self._memo, self._previous = result.memo, result.plan.desired
