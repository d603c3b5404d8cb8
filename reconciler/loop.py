"""The reconcile loop: the imperative shell around the pure planner (Flux source-controller).

One pass (``Reconciler.reconcile_once``), level-triggered, in this order:

1. ``source.fetch()`` — a failure is *waiting*: noted in the conditions, and the pass goes
   on with what the mirror already holds (rollouts keep following the reports);
2. ``approval.evaluate`` from the last applied revision; each decision goes to the audit
   log once (refusals repeat every pass until fixed: deduplicated through store meta);
3. when the approved revision differs from the applied one: ``load_revision``; an invalid
   revision is never applied (the last good one stays, audited once as ``invalid``);
4. ``replan`` (``plan.incremental``) from the spec, the inventory, the rollout states,
   the reports and desired documents, and ``now``; the ``WorkingSet`` keeps these in
   memory between passes and hands the planner the nodes whose reports were news, so
   a pass steps only the rollouts they touched (a full pass on the first pass, the
   resync, a new revision or inventory, and after a failed pass);
5. writes, only of what changed: rollout state first, then desired documents (the agent
   is notified of each changed node), then audit records, then the applied revision. That
   order makes a crash at any point safe: the next pass recomputes the rest;
6. the status conditions (``Ready``, ``Reconciling``, ``Stalled``), written whatever
   happens, when they changed.

A second pass with no new input writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from reconciler import approval
from reconciler.approval.history import contains
from reconciler.config import Config
from reconciler.errors import FleetkeeperError, Waiting
from reconciler.logs import log_event
from reconciler.plan.incremental import Replan
from reconciler.plan.rollout import Plan, PlanEvent
from reconciler.plan.select import NodeFacts, latest_versions
from reconciler.plan.state import fingerprint, state_from_json
from reconciler.plan.status import fleet_status
from reconciler.reportbook import ReportBook
from reconciler.revision import LoadedRevision, load_revision
from reconciler.source import GitSource
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import AppliedRevision, AuditEvent, DesiredRecord, NodeRecord, Store
from reconciler.threadsafe import call_in_loop
from reconciler.working_set import WorkingSet

log = logging.getLogger(__name__)

# store meta keys owned by the loop
META_CONDITIONS = "conditions"
META_TIP_STATUS = "tip-status"  # release rows for an Unapproved/Invalid newest tip
META_AUDIT_SEEN = "audit-seen"  # decisions already audited (refusals repeat every pass)
META_STALE = "stale-nodes"
AUDIT_SEEN_LIMIT = 500
JITTER = 0.2  # resyncs vary by +-20%
MIN_SLEEP = 0.05

ConditionStatus = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str  # Ready | Reconciling | Stalled
    status: ConditionStatus
    reason: str
    message: str
    last_transition_time: float
    observed_revision: str | None = None

    def to_json(self) -> dict[str, JSON]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
            "observedRevision": self.observed_revision,
        }

    def same(self, other: Condition) -> bool:
        return (self.status, self.reason, self.message, self.observed_revision) == (
            other.status,
            other.reason,
            other.message,
            other.observed_revision,
        )


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


@dataclass
class _Pass:
    """What one pass has found so far (mutable scratch, never leaves ``reconcile_once``)."""

    now: float
    writes: int = 0
    waiting: FleetkeeperError | None = None
    stalled: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)
    audit: list[AuditEvent] = field(default_factory=list)
    changed_nodes: list[str] = field(default_factory=list)
    tip_rows: list[dict[str, JSON]] = field(default_factory=list)
    replan: Replan | None = None


def _facts(rec: NodeRecord) -> NodeFacts:
    f = rec.facts
    roles, labels, runtimes, mem = (
        f.get("roles"),
        f.get("labels"),
        f.get("runtimes"),
        f.get("memoryGiB"),
    )
    return NodeFacts(
        name=rec.name,
        platform=str(f.get("platform", "")),
        accelerator=str(f.get("accelerator", "cpu")),
        memory_gib=float(mem) if isinstance(mem, int | float) else None,
        roles=tuple(str(r) for r in roles) if isinstance(roles, list) else (),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        declared=False,
        runtimes={str(k): v is True for k, v in runtimes.items()}
        if isinstance(runtimes, dict)
        else {},
    )


def _same_document(a: Mapping[str, JSON] | None, b: Mapping[str, JSON]) -> bool:
    if a is None:
        return False
    return {k: v for k, v in a.items() if k != "generation"} == dict(b)


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Reconciler:
    def __init__(
        self,
        config: Config,
        store: Store,
        source: GitSource,
        notify: Callable[[str], None],
        clock: Callable[[], float] = time.time,
        reports: ReportBook | None = None,
        publish: Callable[[Sequence[DesiredRecord]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.source = source
        self.notify = notify
        self.clock = clock
        self.reports = reports  # None: read the reports from the store (tests)
        self.publish = publish  # many stored documents at once (else notify per node)
        self.working = WorkingSet(store, reports, float(config.heartbeat_ttl), _facts)
        self._resync = False
        self.first_pass_done = False
        self.last_result: PassResult | None = None
        self._spec: FleetSpec | None = None
        self._spec_sha: str | None = None
        self._pass_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending_wake = False
        self._rng = random.Random()

    # -- what others read -----------------------------------------------------------------

    def spec(self) -> FleetSpec | None:
        """The applied revision's fleet spec (None before the first approved revision)."""
        return self._spec

    def fleet_status(self) -> dict[str, JSON]:
        """The ``GET /v1/fleet`` document from the store and the applied spec (blocking)."""
        s = self.store
        raw = s.get_meta(META_TIP_STATUS)
        blocked = json.loads(raw) if raw else []
        return fleet_status(
            self._spec,
            s.nodes(),
            s.rollouts(),
            self.reports.records() if self.reports is not None else s.reports(),
            s.all_desired(),
            self.clock(),
            self.config.heartbeat_ttl,
            applied=s.applied_revision(),
            blocked=blocked if isinstance(blocked, list) else [],
        )

    def conditions(self) -> list[dict[str, JSON]]:
        raw = self.store.get_meta(META_CONDITIONS)
        doc = json.loads(raw) if raw else []
        return doc if isinstance(doc, list) else []

    # -- one pass ---------------------------------------------------------------------------

    def reconcile_once(self) -> PassResult:
        """One synchronous pass; never two at once (a lock), never raises for expected errors."""
        with self._pass_lock:
            p = _Pass(now=self.clock())
            plan: Plan | None = None
            applied: AppliedRevision | None = None
            error: str | None = None
            try:
                plan, applied = self._pass(p)
            except FleetkeeperError as exc:
                self.working.invalidate()
                error = str(exc)
                p.stalled.append((exc.reason, str(exc)))
                log.warning("reconcile pass stopped: %s", exc)
            except Exception as exc:  # a bug: keep the loop alive, say so in the status
                self.working.invalidate()
                error = f"{type(exc).__name__}: {exc}"
                p.stalled.append(("InternalError", error))
                log.exception("reconcile pass failed")
            conditions = self._write_conditions(p, plan, applied)
            result = PassResult(
                revision=applied.sha if applied is not None else None,
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

    def _pass(self, p: _Pass) -> tuple[Plan | None, AppliedRevision | None]:
        store = self.store
        try:
            self.source.fetch()
        except Waiting as exc:
            p.waiting = exc  # go on with what the mirror already holds
        applied = store.applied_revision()
        last_sha = applied.sha if applied is not None else None
        result = approval.evaluate(
            self.source, self.config.approval, last_sha, self.config.state_dir
        )
        seen = self._audit_seen()
        seen_before = list(seen)
        pending_audit: list[AuditEvent] = []
        for rec in result.audit:
            key = f"{rec.kind}:{rec.revision}"
            if key in seen:
                continue
            seen.append(key)
            pending_audit.append(
                AuditEvent(
                    time=p.now,
                    kind=rec.kind,
                    message=rec.message,
                    revision=rec.revision,
                    details=dict(rec.details),
                )
            )

        # the spec of the applied revision (after a restart: load it again)
        if applied is not None and self._spec_sha != applied.sha:
            loaded = load_revision(self.source.repository(), applied.sha)
            self._spec, self._spec_sha = loaded.spec, applied.sha
        new_applied: AppliedRevision | None = None
        target = result.revision
        if target is not None and target != last_sha and result.approval is not None:
            loaded = load_revision(self.source.repository(), target)
            if loaded.spec is not None:
                new_applied = AppliedRevision(target, dict(result.approval), p.now)
            else:
                self._invalid(p, loaded, seen, pending_audit)
        p.tip_rows.extend(self._unapproved_rows(result.refused, target))

        spec, revision = self._spec, applied
        if new_applied is not None:
            spec, revision = (
                load_revision(self.source.repository(), new_applied.sha).spec,
                new_applied,
            )
        plan: Plan | None = None
        if spec is not None and revision is not None:
            plan = self._plan(p, spec, revision)
        # writes: rollout state, desired, audit, applied revision (see module docstring)
        if plan is not None and revision is not None:
            for name in sorted(plan.changed_rollouts):
                store.put_rollout(name, plan.rollouts[name])
                p.writes += 1
            existing = self.working.desired()
            touched = p.replan.touched if p.replan is not None else None
            docs = {
                node: doc
                for node, doc in sorted(plan.desired.items())
                if (touched is None or node in touched)
                and not _same_document(existing.get(node), doc)
            }
            stored: list[tuple[DesiredRecord, bool]] = []
            if docs:  # one transaction for all of them (a batch of 1,000 nodes: one fsync)
                stored = store.put_desired_many(docs)
                p.writes += len(docs)
                fresh = [r for r, changed in stored if changed]
                p.changed_nodes.extend(r.node for r in fresh)
                if self.publish is not None:
                    self.publish(fresh)
                else:
                    for r in fresh:
                        self.notify(r.node)
            if p.replan is not None:
                self.working.written(p.replan, [r for r, _ in stored])
                if self.reports is not None and self.reports.watch(p.replan.awaiting, p.now):
                    self.wake()
            pending_audit.extend(self._events(plan.events, p.now, revision))
            stale = _dumps(sorted(plan.stale))
            if stale != (store.get_meta(META_STALE) or "[]"):
                store.set_meta(META_STALE, stale)
                p.writes += 1
        if new_applied is not None:
            pending_audit.append(
                AuditEvent(
                    time=p.now,
                    kind="applied",
                    message=f"applied revision {new_applied.sha}",
                    revision=new_applied.sha,
                    details={"approval": dict(new_applied.approval)},
                )
            )
        for event in pending_audit:
            store.append_audit(event)
            log_event(event)
            p.audit.append(event)
            p.writes += 1
        if seen != seen_before:
            store.set_meta(META_AUDIT_SEEN, _dumps(seen[-AUDIT_SEEN_LIMIT:]))
            p.writes += 1
        if new_applied is not None:
            store.set_applied_revision(new_applied)
            p.writes += 1
            self._spec, self._spec_sha = spec, new_applied.sha
            applied = new_applied
        tip = _dumps(p.tip_rows)
        if tip != (store.get_meta(META_TIP_STATUS) or "[]"):
            store.set_meta(META_TIP_STATUS, tip)
            p.writes += 1
        return plan, applied

    def _plan(self, p: _Pass, spec: FleetSpec, applied: AppliedRevision) -> Plan:
        raw = self.store.get_meta(META_STALE)
        stale_before = frozenset(json.loads(raw)) if raw else frozenset()
        p.replan = self.working.plan(spec, applied, p.now, stale_before)
        return p.replan.plan

    @staticmethod
    def _events(
        events: Sequence[PlanEvent], now: float, applied: AppliedRevision
    ) -> list[AuditEvent]:
        return [
            AuditEvent(
                time=now,
                kind=e.kind,
                message=e.message,
                revision=applied.sha if e.release is not None else None,
                release=e.release,
                node=e.node,
                details=dict(e.details),
            )
            for e in events
        ]

    def _audit_seen(self) -> list[str]:
        raw = self.store.get_meta(META_AUDIT_SEEN)
        doc = json.loads(raw) if raw else []
        return [str(k) for k in doc] if isinstance(doc, list) else []

    def _invalid(
        self,
        p: _Pass,
        loaded: LoadedRevision,
        seen: list[str],
        pending: list[AuditEvent],
    ) -> None:
        """An approved but invalid revision: never applied; one audit record; status rows."""
        errors = [v for v in loaded.violations if v.severity == "error"]
        first = str(errors[0]) if errors else "invalid"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        message = f"Invalid: {loaded.sha} is not applied: {first}{more}"
        p.stalled.append(("Invalid", message))
        key = f"invalid:{loaded.sha}"
        if key not in seen:
            seen.append(key)
            pending.append(
                AuditEvent(
                    time=p.now,
                    kind="invalid",
                    message=message,
                    revision=loaded.sha,
                    details={"violations": [str(v) for v in errors[:50]]},
                )
            )
        rows: dict[tuple[str, str], str] = {}
        for v in errors:
            parts = v.path.split("/")
            if len(parts) == 3 and parts[0] in ("releases", "models"):
                rows.setdefault((parts[1], parts[2].rsplit(".", 1)[0]), str(v))
        if not rows:
            rows[("fleet", loaded.sha[:12])] = first
        for (agent, version), why in sorted(rows.items()):
            p.tip_rows.append(
                {
                    "agent": agent,
                    "version": version,
                    "phase": "Invalid",
                    "batch": None,
                    "reason": f"{loaded.sha[:12]}: {why}",
                }
            )

    def _unapproved_rows(
        self, refused: Sequence[approval.Refusal], approved: str | None
    ) -> list[dict[str, JSON]]:
        """Release rows for refused commits newer than the approved revision."""
        repo = self.source.repository()
        current = [
            r
            for r in refused
            if approved is None
            or not (r.revision == approved or contains(repo, approved, r.revision))
        ]
        if not current:
            return []
        newest = current[-1]
        base = latest_versions(self._spec) if self._spec is not None else {}
        rows: list[dict[str, JSON]] = []
        try:
            loaded = load_revision(repo, newest.revision)
        except Exception:  # a refused commit that cannot even be read: one fleet-wide row
            loaded = None
        if loaded is not None and loaded.spec is not None:
            for name, d in sorted(latest_versions(loaded.spec).items()):
                old = base.get(name)
                if old is None or fingerprint(old) != fingerprint(d):
                    rows.append(
                        {
                            "agent": name,
                            "kind": d.kind,
                            "version": d.version,
                            "phase": "Unapproved",
                            "batch": None,
                            "reason": newest.reason,
                        }
                    )
        if not rows:
            rows.append(
                {
                    "agent": "fleet",
                    "version": newest.revision[:12],
                    "phase": "Unapproved",
                    "batch": None,
                    "reason": newest.reason,
                }
            )
        return rows

    def _write_conditions(
        self, p: _Pass, plan: Plan | None, applied: AppliedRevision | None
    ) -> tuple[Condition, ...]:
        sha = applied.sha if applied is not None else None
        halted: list[str] = []
        busy: list[str] = []
        if plan is not None:
            live = set(latest_versions(self._spec)) if self._spec is not None else set()
            for name in sorted(plan.rollouts):
                memo = p.replan.memo.rollouts.get(name) if p.replan is not None else None
                s = memo.state if memo is not None else state_from_json(plan.rollouts[name])
                if s is None or name not in live:
                    continue
                if s.phase == "Halted" and s.halt is not None:
                    halted.append(f"{s.name} {s.version}: {s.halt.reason}")
                elif s.phase in ("Progressing", "Soaking"):
                    i = s.active_batch()
                    batch = f" batch {i + 1}/{len(s.batches)}" if i is not None else ""
                    busy.append(f"{s.name} {s.version} {s.phase}{batch}")
        stalled = list(p.stalled) + [("RolloutHalted", h) for h in halted]
        if p.tip_rows and not any(r == "Invalid" for r, _ in stalled):
            stalled.append(("Unapproved", str(p.tip_rows[0].get("reason"))))
        want: list[tuple[str, ConditionStatus, str, str]] = []
        if stalled:
            reason, message = stalled[0]
            want.append(("Stalled", "True", reason, "; ".join(m for _, m in stalled)))
        else:
            want.append(("Stalled", "False", "Succeeded", "nothing needs a human"))
        if busy:
            want.append(("Reconciling", "True", "Progressing", "; ".join(busy)))
        else:
            want.append(("Reconciling", "False", "Succeeded", "no rollout in progress"))
        if p.waiting is not None:
            want.append(("Ready", "False", p.waiting.reason, str(p.waiting)))
        elif plan is None:
            reason, message = stalled[0] if stalled else ("NoApprovedRevision", "")
            want.append(("Ready", "False", reason, message or "no approved revision yet"))
        elif stalled:
            want.append(("Ready", "False", stalled[0][0], stalled[0][1]))
        else:
            want.append(("Ready", "True", "Succeeded", f"applied revision {sha}"))
        old = {str(c.get("type")): c for c in self.conditions() if isinstance(c, dict)}
        out: list[Condition] = []
        for ctype, status, reason, message in want:
            prev = old.get(ctype)
            cond = Condition(ctype, status, reason, message, p.now, sha)
            if prev is not None and prev.get("status") == status:
                t = prev.get("lastTransitionTime")
                cond = Condition(
                    ctype,
                    status,
                    reason,
                    message,
                    float(t) if isinstance(t, int | float) else p.now,
                    sha,
                )
            out.append(cond)
        doc = [c.to_json() for c in out]
        old_doc = [old[t] for t in ("Stalled", "Reconciling", "Ready") if t in old]
        if _dumps(doc) != _dumps(old_doc):
            try:
                self.store.set_meta(META_CONDITIONS, _dumps(doc))
                p.writes += 1
            except Exception:
                log.exception("cannot write the status conditions")
        return tuple(out)

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
