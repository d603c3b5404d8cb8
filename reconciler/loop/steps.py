"""One reconcile pass as ordered steps over a scratch value (Flux source-controller's shape).

    fetch_source -> evaluate_approval -> load_target -> plan_rollouts -> write_changes

Each step reads the ``Parts`` (store, source, config, notify) and the ``Pass`` the steps
before it filled in, and adds to it. A ``FleetkeeperError`` stops the pass (``run_steps``
returns it); the status conditions are summarised afterwards whatever happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

from reconciler.approval.engine import Approver
from reconciler.approval.values import ApprovalResult
from reconciler.config import Config
from reconciler.errors import FleetkeeperError, Waiting
from reconciler.logs import log_event
from reconciler.loop import meta, tip
from reconciler.plan.incremental import Replan
from reconciler.plan.rollout import Plan, PlanEvent
from reconciler.reportbook import ReportBook
from reconciler.revision import LoadedRevision, load_revision
from reconciler.source import GitSource
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import AppliedRevision, AuditEvent, DesiredRecord, Store
from reconciler.working_set import WorkingSet

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What the steps work with; the applied spec is kept here across passes."""

    config: Config
    store: Store
    source: GitSource
    notify: Callable[[str], None]
    approver: Approver
    working: WorkingSet  # what the planner reads, kept in memory between passes
    reports: ReportBook | None = None  # the API's report book (None: reports in the store)
    publish: Callable[[Sequence[DesiredRecord]], None] | None = None  # many at once
    wake: Callable[[], None] = lambda: None  # run another pass soon (the loop's wake)
    spec: FleetSpec | None = None  # the applied revision's spec
    spec_sha: str | None = None


@dataclass
class Pass:
    """What one pass has found so far (mutable scratch, never leaves ``reconcile_once``).

    ``replan``: what ``plan_rollouts`` planned, with the nodes it touched; the report book
    supplies the nodes whose reports changed (``WorkingSet.plan``), so a pass steps only
    the rollouts those touch.
    """

    now: float
    writes: int = 0
    waiting: FleetkeeperError | None = None
    stalled: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)
    audit: list[AuditEvent] = field(default_factory=list)  # records appended
    changed_nodes: list[str] = field(default_factory=list)
    tip_rows: list[dict[str, JSON]] = field(default_factory=list)
    # filled in by the steps, in order
    applied: AppliedRevision | None = None  # the store's, then the new one once written
    approval: ApprovalResult | None = None
    seen: list[str] = field(default_factory=list)  # audit-seen keys, with this pass's
    seen_changed: bool = False
    pending_audit: list[AuditEvent] = field(default_factory=list)
    loaded: dict[str, LoadedRevision] = field(default_factory=dict)  # load_revision per sha
    new_applied: AppliedRevision | None = None
    spec: FleetSpec | None = None  # the spec to plan with (the new one when it applies)
    revision: AppliedRevision | None = None  # the revision to plan with
    desired_before: Mapping[str, Mapping[str, JSON]] = field(default_factory=dict)
    plan: Plan | None = None
    replan: Replan | None = None

    def load(self, parts: Parts, sha: str) -> LoadedRevision:
        hit = self.loaded.get(sha)
        if hit is None:
            hit = self.loaded[sha] = load_revision(parts.source.repository(), sha)
        return hit

    def remember(self, key: str) -> bool:
        """Note an audited decision; False when it was audited before."""
        if key in self.seen:
            return False
        self.seen.append(key)
        self.seen_changed = True
        return True


Step = Callable[[Parts, Pass], None]


@dataclass(frozen=True)
class StoreObservations:
    """First observations of git objects, kept in the store (``approval.Observations``):
    a signature is judged with the keys as they were when the object was first seen."""

    store: Store
    now: float

    def first_seen(self, shas: Sequence[str]) -> Mapping[str, float]:
        return self.store.observe(shas, self.now)


def fetch_source(parts: Parts, p: Pass) -> None:
    """Fetch the fleet repo; when that fails the pass goes on with what the mirror holds
    (rollouts keep following the reports) and ``Ready`` says why."""
    try:
        parts.source.fetch()
    except Waiting as exc:
        p.waiting = exc


def evaluate_approval(parts: Parts, p: Pass) -> None:
    """Judge the commits after the applied revision; each decision audited once."""
    p.applied = parts.store.applied_revision()
    last = p.applied.sha if p.applied is not None else None
    config = parts.config
    p.approval = parts.approver.evaluate(
        parts.source,
        config.approval,
        last,
        config.state_dir,
        StoreObservations(parts.store, p.now),
    )
    p.seen = meta.AUDIT_SEEN.read(parts.store)
    for rec in p.approval.audit:
        if p.remember(f"{rec.kind}:{rec.revision}"):
            p.pending_audit.append(
                AuditEvent(
                    time=p.now,
                    kind=rec.kind,
                    message=rec.message,
                    revision=rec.revision,
                    details=dict(rec.details),
                )
            )


def load_target(parts: Parts, p: Pass) -> None:
    """The applied spec (again after a restart), the approved target when it is new and
    valid, and the status rows of a refused or invalid newest tip."""
    assert p.approval is not None
    if p.applied is not None and parts.spec_sha != p.applied.sha:
        parts.spec, parts.spec_sha = p.load(parts, p.applied.sha).spec, p.applied.sha
    target, approval = p.approval.revision, p.approval.approval
    last = p.applied.sha if p.applied is not None else None
    p.spec, p.revision = parts.spec, p.applied
    if target is not None and target != last and approval is not None:
        loaded = p.load(parts, target)
        if loaded.spec is not None:
            p.new_applied = AppliedRevision(target, dict(approval), p.now)
            p.spec, p.revision = loaded.spec, p.new_applied
        else:
            _invalid(p, loaded)
    repo, refused = parts.source.repository(), p.approval.refused
    p.tip_rows.extend(
        tip.unapproved_rows(repo, refused, target, parts.spec, lambda sha: p.load(parts, sha))
    )


def _invalid(p: Pass, loaded: LoadedRevision) -> None:
    """An approved but invalid revision: never applied; one audit record; status rows."""
    message, rows, details = tip.invalid(loaded)
    p.stalled.append(("Invalid", message))
    if p.remember(f"invalid:{loaded.sha}"):
        p.pending_audit.append(
            AuditEvent(
                time=p.now, kind="invalid", message=message, revision=loaded.sha, details=details
            )
        )
    p.tip_rows.extend(rows)


def plan_rollouts(parts: Parts, p: Pass) -> None:
    """``replan`` from the spec, the inventory, rollout state, reports and desired documents
    (kept in memory by the ``WorkingSet``), stepping only the rollouts new input touched."""
    if p.spec is None or p.revision is None:
        return
    stale_before = meta.STALE_NODES.read(parts.store)
    p.replan = parts.working.plan(p.spec, p.revision, p.now, stale_before)
    p.plan = p.replan.plan
    p.desired_before = parts.working.desired()


def write_changes(parts: Parts, p: Pass) -> None:
    """Only what changed: rollout state, desired documents, audit records, then the applied
    revision, all in one transaction: a crash (or a deposed leader's refused write) leaves
    the pass wholly done or not at all, so no audit event is lost or told twice. Waking
    long-polls, logging and notifications follow the commit."""
    after: list[Callable[[], None]] = []
    with parts.store.atomic():
        _write_all(parts, p, after)
    for action in after:
        action()


def _write_all(parts: Parts, p: Pass, after: list[Callable[[], None]]) -> None:
    if p.plan is not None and p.revision is not None:
        _write_plan(parts, p, p.plan, p.revision, after)
    if p.new_applied is not None:
        p.pending_audit.append(
            AuditEvent(
                time=p.now,
                kind="applied",
                message=f"applied revision {p.new_applied.sha}",
                revision=p.new_applied.sha,
                details={"approval": dict(p.new_applied.approval)},
            )
        )
    store = parts.store
    for event in p.pending_audit:
        store.append_audit(event)
        after.append(partial(log_event, event))
        p.audit.append(event)
        p.writes += 1
    if p.seen_changed:
        meta.AUDIT_SEEN.put(store, p.seen)
        p.writes += 1
    if p.new_applied is not None:
        store.set_applied_revision(p.new_applied)
        p.writes += 1
        after.append(partial(_adopt, parts, p, p.new_applied))
    if meta.TIP_STATUS.write(store, p.tip_rows):
        p.writes += 1


def _adopt(parts: Parts, p: Pass, applied: AppliedRevision) -> None:
    parts.spec, parts.spec_sha = p.spec, applied.sha
    p.applied = applied


def _write_plan(
    parts: Parts,
    p: Pass,
    plan: Plan,
    revision: AppliedRevision,
    after: list[Callable[[], None]],
) -> None:
    store = parts.store
    for name in sorted(plan.changed_rollouts):
        store.put_rollout(name, plan.rollouts[name])
        p.writes += 1
    touched = p.replan.touched if p.replan is not None else None
    docs = {
        node: doc
        for node, doc in sorted(plan.desired.items())
        if (touched is None or node in touched)
        and not _same_document(p.desired_before.get(node), doc)
    }
    stored: list[tuple[DesiredRecord, bool]] = []
    if docs:  # one transaction for all of them (a batch of 1,000 nodes: one fsync)
        stored = store.put_desired_many(docs)
        p.writes += len(docs)
        fresh = [rec for rec, changed in stored if changed]
        p.changed_nodes.extend(rec.node for rec in fresh)
        after.append(partial(_publish, parts, fresh))
    p.pending_audit.extend(_events(plan.events, p.now, revision))
    if meta.STALE_NODES.write(store, plan.stale):
        p.writes += 1
    if p.replan is not None:
        after.append(partial(_remember, parts, p.replan, [rec for rec, _ in stored], p.now))


def _publish(parts: Parts, fresh: list[DesiredRecord]) -> None:
    if parts.publish is not None:
        parts.publish(fresh)
    else:
        for rec in fresh:
            parts.notify(rec.node)


def _remember(parts: Parts, replan: Replan, stored: list[DesiredRecord], now: float) -> None:
    parts.working.written(replan, stored)
    # an awaited node that reported after the pass's snapshot: plan again at once
    if parts.reports is not None and parts.reports.watch(replan.awaiting, now):
        parts.wake()


def _same_document(a: Mapping[str, JSON] | None, b: Mapping[str, JSON]) -> bool:
    if a is None:
        return False
    return {k: v for k, v in a.items() if k != "generation"} == dict(b)


def _events(events: Sequence[PlanEvent], now: float, applied: AppliedRevision) -> list[AuditEvent]:
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


STEPS: tuple[Step, ...] = (
    fetch_source,
    evaluate_approval,
    load_target,
    plan_rollouts,
    write_changes,
)


def run_steps(parts: Parts, p: Pass, steps: Sequence[Step] = STEPS) -> str | None:
    """Run ``steps`` in order; stop at the first error and return what it said."""
    for step in steps:
        try:
            step(parts, p)
        except FleetkeeperError as exc:
            p.stalled.append((exc.reason, str(exc)))
            log.warning("reconcile pass stopped: %s", exc)
            return str(exc)
        except Exception as exc:  # a bug: keep the loop alive, say so in the status
            error = f"{type(exc).__name__}: {exc}"
            p.stalled.append(("InternalError", error))
            log.exception("reconcile pass failed")
            return error
    return None
