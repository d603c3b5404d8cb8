"""The served store on PostgreSQL: each committed write that another replica caches
(desired documents, nodes and tokens, reports) or that the leader must act on (rollout
controls) is announced on the bus afterwards."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from reconciler.api.metrics import MeteredStore, Metrics
from reconciler.plan.controls import Control
from reconciler.replicas.bus import Bus, Kind
from reconciler.spec import JSON
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    ClaimRefusal,
    DesiredRecord,
    NodeClaim,
    NodeRecord,
    ReportRecord,
    Store,
)


class ReplicatedStore(MeteredStore):
    def __init__(
        self,
        inner: Store,
        metrics: Metrics,
        listeners: Sequence[Callable[[AuditEvent], None]],
        bus: Bus,
    ) -> None:
        super().__init__(inner, metrics, listeners)
        self.bus = bus

    def _announce(self, topic: Kind, names: Sequence[str]) -> None:
        # inside atomic(): after the commit, so a replica that reads on hearing it sees it
        self._after_commit(lambda: self.bus.send(topic, names))

    def put_desired(self, node: str, document: Mapping[str, JSON]) -> tuple[DesiredRecord, bool]:
        rec, changed = super().put_desired(node, document)
        if changed:
            self._announce("desired", [node])
        return rec, changed

    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]:
        out = super().put_desired_many(documents)
        changed = [rec.node for rec, did in out if did]
        if changed:
            self._announce("desired", changed)
        return out

    def set_applied_revision(self, rev: AppliedRevision) -> None:
        super().set_applied_revision(rev)
        self._announce("revision", [])

    def upsert_node(self, node: NodeRecord) -> None:
        super().upsert_node(node)
        self._announce("nodes", [node.name])

    def claim_node(
        self, node: NodeRecord, *, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None:
        refusal = super().claim_node(node, replaces=replaces, join_token=join_token)
        if refusal is None:
            self._announce("nodes", [node.name])
        return refusal

    def claim_nodes(self, claims: Sequence[NodeClaim]) -> list[ClaimRefusal | None]:
        results = super().claim_nodes(claims)
        stored = [c.node.name for c, lost in zip(claims, results, strict=True) if lost is None]
        if stored:
            self._announce("nodes", stored)
        return results

    def delete_node(self, name: str) -> bool:
        deleted = super().delete_node(name)
        if deleted:
            self._announce("nodes", [name])
        return deleted

    def add_control(self, control: Control, audit: AuditEvent) -> int:
        seq = super().add_control(control, audit)
        self._announce("controls", [])
        return seq

    def put_report(self, report: ReportRecord) -> None:
        super().put_report(report)
        self._announce("reports", [report.node])

    def put_reports(self, reports: Sequence[ReportRecord]) -> None:
        super().put_reports(reports)
        self._announce("reports", [r.node for r in reports])

    def touch_reports(self, seen: Mapping[str, float]) -> None:
        super().touch_reports(seen)
        self._announce("reports", list(seen))
