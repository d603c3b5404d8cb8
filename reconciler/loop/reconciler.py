"""``Reconciler``: one reconcile pass at a time, and the loop that runs them.

One pass (``reconcile_once``), level-triggered, runs ``steps.STEPS`` in order:

1. ``fetch_source`` — a failure is *waiting*: noted in the conditions, and the pass goes
   on with what the mirror already holds (rollouts keep following the reports);
2. ``evaluate_approval`` from the last applied revision; each decision goes to the audit
   log once (refusals repeat every pass until fixed: deduplicated through store meta);
3. ``load_target``: when the approved revision differs from the applied one, load it; an
   invalid revision is never applied (the last good one stays, audited once as ``invalid``);
4. ``plan_rollouts``: ``replan`` (``plan.incremental``) from the spec, the inventory, the
   rollout states, reports and desired documents, and ``now``; the ``WorkingSet`` keeps
   these in memory between passes and hands the planner the nodes whose reports were
   news, so a pass steps only the rollouts they touch (a full pass, everything re-read
   from the store, on the first pass, the jittered resync, a new revision or inventory,
   and after a failed pass);
5. ``write_changes``, only of what changed: rollout state first, then desired documents
   (the agent is notified of each changed node), then audit records, then the applied
   revision. That order makes a crash at any point safe: the next pass recomputes the rest;
6. the status conditions (``Ready``, ``Reconciling``, ``Stalled``), summarised from what
   the pass found and written whatever happens, when they changed.

A second pass with no new input writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reconciler.approval.engine import Approver
from reconciler.config import Config
from reconciler.loop import meta
from reconciler.loop.steps import Parts, Pass, run_steps
from reconciler.plan.conditions import Condition, Findings, in_order, rollout_progress, summarize
from reconciler.plan.rollout import Plan
from reconciler.plan.select import latest_versions
from reconciler.reportbook import ReportBook
from reconciler.source import GitSource
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import AuditEvent, DesiredRecord, Store
from reconciler.threadsafe import call_in_loop
from reconciler.views.readmodel import read_fleet_status
from reconciler.working_set import WorkingSet

log = logging.getLogger(__name__)

JITTER = 0.2  # resyncs vary by +-20%
MIN_SLEEP = 0.05


@dataclass(frozen=True)
class PassResult:
    revision: str | None  # the applied revision after this pass
    changed_nodes: tuple[str, ...]  # desired documents that changed (agents notified)
    changed_rollouts: tuple[str, ...]
    audit: tuple[AuditEvent, ...]  # records appended
    writes: int  # store writes made by this pass (0 when nothing changed)
    next_wake_at: float | None  # soak end / timeout deadline: run again then
    conditions: tuple[Condition, ...]
    error: str | None = None  # what stopped the pass early, if anything


class Reconciler:
    def __init__(
        self,
        config: Config,
        store: Store,
        source: GitSource,
        notify: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        approver: Approver | None = None,
        reports: ReportBook | None = None,
        publish: Callable[[Sequence[DesiredRecord]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.source = source
        self.clock = clock
        self.first_pass_done = False
        self.last_result: PassResult | None = None
        # reports: the API's report book (None: read from the store, every pass full);
        # publish: many stored documents to the long-poll hub at once (else notify each)
        self.reports = reports
        self.working = WorkingSet(store, reports, float(config.heartbeat_ttl))
        self._parts = Parts(
            config,
            store,
            source,
            notify,
            approver or Approver(),
            self.working,
            reports,
            publish,
            wake=self.wake,
        )
        self._pass_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending_wake = False
        self._rng = random.Random()

    # -- what others read -----------------------------------------------------------------

    def spec(self) -> FleetSpec | None:
        """The applied revision's fleet spec (None before the first approved revision)."""
        return self._parts.spec

    def fleet_status(self) -> dict[str, JSON]:
        """The ``GET /v1/fleet`` document from the store and the applied spec (blocking)."""
        reports = self.reports.records() if self.reports is not None else None
        return read_fleet_status(
            self.store, self.spec(), self.clock(), self.config.heartbeat_ttl, reports
        )

    def conditions(self) -> list[dict[str, JSON]]:
        return meta.CONDITIONS.read(self.store)

    # -- one pass ---------------------------------------------------------------------------

    def reconcile_once(self) -> PassResult:
        """One synchronous pass; never two at once (a lock), never raises for expected errors."""
        with self._pass_lock:
            p = Pass(now=self.clock())
            error = run_steps(self._parts, p)
            if error is not None:  # memory may be ahead of the store: start over from it
                self.working.invalidate()
            # a pass that stopped early reports no plan and no revision
            plan = p.plan if error is None else None
            sha = p.applied.sha if error is None and p.applied is not None else None
            conditions = self._write_conditions(p, self._findings(p, plan, sha))
            result = PassResult(
                revision=sha,
                changed_nodes=tuple(p.changed_nodes),
                changed_rollouts=tuple(sorted(plan.changed_rollouts)) if plan else (),
                audit=tuple(p.audit),
                writes=p.writes,
                next_wake_at=plan.next_wake_at if plan else None,
                conditions=conditions,
                error=error,
            )
            self.last_result = result
            self.first_pass_done = True
            return result

    def _findings(self, p: Pass, plan: Plan | None, sha: str | None) -> Findings:
        halted: list[str] = []
        busy: list[str] = []
        if plan is not None:
            spec = self._parts.spec
            live = set(latest_versions(spec)) if spec is not None else set()
            memo = p.replan.memo.rollouts if p.replan is not None else {}
            parsed = {name: m.state for name, m in memo.items()}
            halted, busy = rollout_progress(plan.rollouts, live, parsed)
        return Findings(
            revision=sha,
            planned=plan is not None,
            stalled=p.stalled,
            halted=halted,
            busy=busy,
            unapproved=str(p.tip_rows[0].get("reason")) if p.tip_rows else None,
            waiting=(p.waiting.reason, str(p.waiting)) if p.waiting is not None else None,
        )

    def _write_conditions(self, p: Pass, findings: Findings) -> tuple[Condition, ...]:
        previous = self.conditions()
        out = summarize(findings, previous, p.now)
        doc = [c.to_json() for c in out]
        if meta.dumps(doc) != meta.dumps(in_order(previous)):
            try:
                meta.CONDITIONS.put(self.store, doc)
                p.writes += 1
            except Exception:
                log.exception("cannot write the status conditions")
        return out

    # -- the loop ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Run a pass soon (thread-safe): a report, a registration, a new commit."""
        loop, event = self._loop, self._event
        if loop is None or event is None or loop.is_closed():
            self._pending_wake = True
            return
        call_in_loop(loop, event.set)

    def _sleep_for(self, result: PassResult) -> tuple[float, bool]:
        """How long to sleep, and whether that sleep ends in the resync (not a deadline)."""
        interval = self.config.poll_interval
        delay = interval * (1 + self._rng.uniform(-JITTER, JITTER))
        resync = True
        if result.next_wake_at is not None and result.next_wake_at - self.clock() < delay:
            delay, resync = result.next_wake_at - self.clock(), False
        return max(MIN_SLEEP, delay), resync

    async def run(self, stop: asyncio.Event) -> None:
        """Pass, then sleep until woken, the next deadline, or a jittered resync; until stop."""
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        if self._pending_wake:
            self._event.set()
        while not stop.is_set():
            self._event.clear()
            self._pending_wake = False
            result = await asyncio.to_thread(self.reconcile_once)
            delay, resync = self._sleep_for(result)
            waiter = asyncio.ensure_future(self._event.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {waiter, stopper}, timeout=delay, return_when="FIRST_COMPLETED"
                )
            finally:
                waiter.cancel()
                stopper.cancel()
            if resync and not done:  # the jittered resync: re-read everything from the store
                self.working.invalidate()
