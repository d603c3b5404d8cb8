"""Prometheus metrics on the reconciler's own registry (``GET /metrics``).

``MeteredStore`` wraps the store to count applied and refused revisions from the
audit events the loop appends, so the loop needs no metrics code of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from reconciler.garbage import GcPauses
from reconciler.plan.controls import Control
from reconciler.plan.state import PHASES
from reconciler.spec import JSON
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    ClaimRefusal,
    DesiredRecord,
    JoinToken,
    NodeClaim,
    NodeRecord,
    ReportRecord,
    Store,
)
from reconciler.views.fleet_status import FleetGauges

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REFUSED_KINDS = frozenset({"refused", "unapproved", "invalid", "rejected", "rollback"})
# The rollout phases plus the two a revision gets before any rollout starts.
RELEASE_PHASES = (*PHASES, "Unapproved", "Invalid")
HEALTH_STATES = ("Healthy", "Unhealthy", "Stale")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_seconds = Histogram(
            "fleetkeeper_reconcile_duration_seconds",
            "Duration of one reconcile pass",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.revisions_applied = Counter(
            "fleetkeeper_revisions_applied", "Approved revisions applied", registry=r
        )
        self.revisions_refused = Counter(
            "fleetkeeper_revisions_refused",
            "Revisions refused (unapproved, invalid, history moved backwards)",
            registry=r,
        )
        self.nodes = Gauge("fleetkeeper_nodes", "Nodes by health state", ["state"], registry=r)
        self.rollout_phase = Gauge(
            "fleetkeeper_rollout_phase",
            "1 for the current phase of each release's rollout, 0 for the others",
            ["release", "phase"],
            registry=r,
        )
        self.desired_polls = Counter(
            "fleetkeeper_desired_polls", "GET desired answers by result", ["result"], registry=r
        )
        self.reports = Counter(
            "fleetkeeper_reports",
            "Status reports by result (accepted, or rejected: bad token, body or node)",
            ["result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "fleetkeeper_webhook_deliveries",
            "Webhook deliveries by provider and result "
            "(triggered, ignored, replay, unauthorized, bad-request, disabled)",
            ["provider", "result"],
            registry=r,
        )
        self.fetch_seconds = Histogram(
            "fleetkeeper_fetch_duration_seconds",
            "Duration of fetches of the fleet repo's mirror (failed ones included)",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.fetch_failures = Counter(
            "fleetkeeper_fetch_failures", "Fetches of the fleet repo that failed", registry=r
        )
        self.notifications = Counter(
            "fleetkeeper_notifications",
            "Notification deliveries by receiver and result (delivered, retried, failed, dropped)",
            ["receiver", "result"],
            registry=r,
        )
        self.long_polls = Gauge(
            "fleetkeeper_long_polls", "GET desired requests waiting for a change now", registry=r
        )
        self.registrations = Counter(
            "fleetkeeper_registrations",
            "Node registrations (including re-registrations)",
            registry=r,
        )
        self.registrations_refused = Counter(
            "fleetkeeper_registrations_refused",
            "Registrations refused (name taken, token spent or out of scope): each is audited",
            registry=r,
        )
        self.leader = Gauge(
            "fleetkeeper_leader",
            "1 when this replica runs the reconcile loop (always on SQLite), 0 on a follower",
            registry=r,
        )
        # collected at scrape time; serve installs its gc.callbacks hook
        self.gc_pauses = GcPauses()
        r.register(self.gc_pauses)
        for result in ("200", "304"):
            self.desired_polls.labels(result=result)
        for state in HEALTH_STATES:
            self.nodes.labels(state=state)
        # Hot-path counters bound once (labels() costs a lookup per call).
        self.poll_200 = self.desired_polls.labels(result="200")
        self.poll_304 = self.desired_polls.labels(result="304")
        self.reports_accepted = self.reports.labels(result="accepted")
        self.reports_rejected = self.reports.labels(result="rejected")

    def count_notification(self, receiver: str, result: str) -> None:
        self.notifications.labels(receiver=receiver, result=result).inc()

    def observe_gauges(self, gauges: FleetGauges) -> None:
        counts = dict.fromkeys(HEALTH_STATES, 0)
        counts.update(gauges.health)
        for state, count in counts.items():
            self.nodes.labels(state=state).set(count)
        self.rollout_phase.clear()
        for name, current in gauges.releases:
            for phase in RELEASE_PHASES:
                self.rollout_phase.labels(release=name, phase=phase).set(
                    1 if current == phase else 0
                )

    def observe_audit(self, event: AuditEvent) -> None:
        if event.kind == "applied":
            self.revisions_applied.inc()
        elif event.kind in REFUSED_KINDS:
            self.revisions_refused.inc()
        elif event.kind == "registration-refused":
            self.registrations_refused.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Deferred(threading.local):
    later: list[Callable[[], None]] | None = None  # inside atomic(): run after the commit


class MeteredStore:
    """A Store that feeds audit events to the metrics and to ``listeners`` (notifications);
    everything else passes through."""

    def __init__(
        self,
        inner: Store,
        metrics: Metrics,
        listeners: Sequence[Callable[[AuditEvent], None]] = (),
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.listeners = tuple(listeners)
        self._unit = _Deferred()

    def close(self) -> None:
        self.inner.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        if self._unit.later is not None:
            yield
            return
        later: list[Callable[[], None]] = []
        self._unit.later = later
        try:
            with self.inner.atomic():
                yield
        finally:
            self._unit.later = None
        for action in later:  # committed: now others may hear of it
            action()

    def _after_commit(self, action: Callable[[], None]) -> None:
        if self._unit.later is None:
            action()
        else:
            self._unit.later.append(action)

    def ping(self) -> None:
        self.inner.ping()

    def schema_version(self) -> int:
        return self.inner.schema_version()

    def applied_revision(self) -> AppliedRevision | None:
        return self.inner.applied_revision()

    def set_applied_revision(self, rev: AppliedRevision) -> None:
        self.inner.set_applied_revision(rev)

    def append_audit(self, event: AuditEvent) -> int:
        event_id = self.inner.append_audit(event)
        self._told(event)
        return event_id

    def _told(self, event: AuditEvent) -> None:
        self._after_commit(lambda: self._tell(event))

    def _tell(self, event: AuditEvent) -> None:
        self.metrics.observe_audit(event)
        for listener in self.listeners:
            listener(event)  # only after the event is stored: never tell what was not kept

    def audit(self, since: float | None = None, limit: int = 1000) -> Sequence[AuditEvent]:
        return self.inner.audit(since, limit)

    def upsert_node(self, node: NodeRecord) -> None:
        self.inner.upsert_node(node)

    def node(self, name: str) -> NodeRecord | None:
        return self.inner.node(name)

    def nodes(self) -> Sequence[NodeRecord]:
        return self.inner.nodes()

    def delete_node(self, name: str) -> bool:
        return self.inner.delete_node(name)

    def claim_node(
        self, node: NodeRecord, *, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None:
        return self.inner.claim_node(node, replaces=replaces, join_token=join_token)

    def claim_nodes(self, claims: Sequence[NodeClaim]) -> list[ClaimRefusal | None]:
        results = self.inner.claim_nodes(claims)
        for claim, lost in zip(claims, results, strict=True):
            if lost is None:
                self._told(claim.audit)
        return results

    def create_join_token(self, token: JoinToken) -> None:
        self.inner.create_join_token(token)

    def join_tokens(self) -> Sequence[JoinToken]:
        return self.inner.join_tokens()

    def join_token_by_hash(self, token_hash: str) -> JoinToken | None:
        return self.inner.join_token_by_hash(token_hash)

    def revoke_join_token(self, token_id: str, now: float) -> JoinToken | None:
        return self.inner.revoke_join_token(token_id, now)

    def desired(self, node: str) -> DesiredRecord | None:
        return self.inner.desired(node)

    def all_desired(self) -> Sequence[DesiredRecord]:
        return self.inner.all_desired()

    def put_desired(self, node: str, document: Mapping[str, JSON]) -> tuple[DesiredRecord, bool]:
        return self.inner.put_desired(node, document)

    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]:
        return self.inner.put_desired_many(documents)

    def put_report(self, report: ReportRecord) -> None:
        self.inner.put_report(report)

    def put_reports(self, reports: Sequence[ReportRecord]) -> None:
        self.inner.put_reports(reports)

    def touch_reports(self, seen: Mapping[str, float]) -> None:
        self.inner.touch_reports(seen)

    def reports(self) -> Sequence[ReportRecord]:
        return self.inner.reports()

    def rollouts(self) -> Mapping[str, Mapping[str, JSON]]:
        return self.inner.rollouts()

    def put_rollout(self, name: str, state: Mapping[str, JSON]) -> None:
        self.inner.put_rollout(name, state)

    def add_control(self, control: Control, audit: AuditEvent) -> int:
        return self.inner.add_control(control, audit)

    def controls(self, after: int = 0) -> Sequence[Control]:
        return self.inner.controls(after)

    def observe(self, shas: Sequence[str], now: float) -> Mapping[str, float]:
        return self.inner.observe(shas, now)

    def get_meta(self, key: str) -> str | None:
        return self.inner.get_meta(key)

    def set_meta(self, key: str, value: str) -> None:
        self.inner.set_meta(key, value)
