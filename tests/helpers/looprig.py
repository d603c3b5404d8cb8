"""``LoopRig``: the real loop on a real repo and a real SQLite store, with an injected clock."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.plan.state import RolloutState, state_from_json
from tests.helpers.fleetdocs import Doc
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.reports import converged_report, desired_versions, failed_report, report_doc

if TYPE_CHECKING:  # the server side is imported when a rig starts, not with the helpers
    from reconciler.config import Config
    from reconciler.loop.reconciler import PassResult, Reconciler
    from reconciler.store.base import DesiredRecord, Store


class Clock:
    """A settable clock for ``Reconciler(clock=...)``."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class LoopRig:
    """``Reconciler`` + ``SqliteStore`` + ``GitSource`` on a ``FleetRepo``; agents simulated
    by writing ``ReportRecord``s into the store, as the API does when an agent reports."""

    repo: FleetRepo
    state_dir: Path
    ttl: int = 90
    clock: Clock = field(default_factory=Clock)
    notified: list[str] = field(default_factory=list)
    reconciler: Reconciler | None = None
    store: Store | None = None

    @classmethod
    def create(cls, tmp: Path, files: Mapping[str, Doc], **kw: Any) -> LoopRig:
        rig = cls(FleetRepo.create(tmp / "fleet", files), tmp / "state", **kw)
        rig.start()
        return rig

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    def config(self) -> Config:
        from reconciler.config import Config

        return Config(
            repo=str(self.repo.path),
            state_dir=self.state_dir,
            database=f"sqlite:///{self.db_path}",
            heartbeat_ttl=self.ttl,
            poll_interval=5.0,
        )

    def start(self) -> None:
        """(Re)open the store and build a fresh Reconciler, as after a process restart."""
        from reconciler.loop.reconciler import Reconciler
        from reconciler.source import GitSource
        from reconciler.store import open_store

        cfg = self.config()
        self.store = open_store(cfg.database_url)
        source = GitSource(cfg.repo, cfg.state_dir, cfg.branch)
        self.reconciler = Reconciler(cfg, self.store, source, self.notified.append, self.clock)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def once(self, at: float | None = None) -> PassResult:
        if at is not None:
            self.clock.t = at
        return self.reconciler.reconcile_once()

    def desired(self, node: str) -> DesiredRecord | None:
        return self.store.desired(node)

    def versions(self, workload: str) -> dict[str, str | None]:
        return {
            d.node: desired_versions(d.document).get(workload) for d in self.store.all_desired()
        }

    def generations(self) -> dict[str, int]:
        return {d.node: d.generation for d in self.store.all_desired()}

    def put_report(self, doc: Doc, at: float | None = None) -> None:
        from reconciler.store.base import ReportRecord

        self.store.put_report(
            ReportRecord(node=str(doc["node"]), report=doc, received_at=at or self.clock.t)
        )

    def converge(self, *nodes: str) -> None:
        """Those agents report their desired document as running and healthy, now."""
        for n in nodes:
            rec = self.store.desired(n)
            self.put_report(converged_report(rec.document) if rec else report_doc(n, []))

    def fail(self, node: str, workload: str, running: str | None, why: str = "boom") -> None:
        rec = self.store.desired(node)
        self.put_report(failed_report(rec.document, workload, running, why))

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the SQLite file (to prove a pass wrote nothing)."""
        import sqlite3

        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            tables = [
                r[0]
                for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not str(r[0]).startswith("sqlite_")
            ]
            return {
                t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables
            }
        finally:
            con.close()

    def phase(self, name: str) -> str:
        st = state_from_json(self.store.rollouts()[name])
        assert st is not None
        return st.phase

    def state(self, name: str) -> RolloutState | None:
        return state_from_json(self.store.rollouts()[name])

    def audit_kinds(self) -> list[str]:
        return [e.kind for e in self.store.audit(limit=10000)]
