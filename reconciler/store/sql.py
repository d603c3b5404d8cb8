"""The Store methods whose SQL is the same on SQLite and PostgreSQL, written once.

Both backends have the same tables and columns (``records``); what differs is the
plumbing (a lock around one SQLite connection, a pool of PostgreSQL ones), how a
generated key comes back, how writes serialise across replicas, and the batched writes
PostgreSQL does as one statement over arrays. Those stay in ``sqlite.py`` and
``postgres.py``; everything else is here, written with ``?`` placeholders, which
``_q`` turns into the driver's own (``%s`` for psycopg).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import reconciler.store.records as records
from reconciler.plan.controls import Control
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
)


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...


class Db(Protocol):
    """What the shared methods need of a connection: sqlite3's and psycopg's both have it."""

    def execute(self, query: str, params: Sequence[Any], /) -> Cursor: ...


UPSERT_NODE = (
    f"INSERT INTO nodes ({records.NODES.columns}) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (name) DO UPDATE SET facts = excluded.facts, "
    "token_hash = excluded.token_hash, registered_at = excluded.registered_at, "
    "admission = excluded.admission"
)


class SqlStore(ABC):
    """The shared half of a SQL backend; a subclass supplies the plumbing below."""

    @staticmethod
    def _q(query: str) -> str:
        """``query`` with the driver's placeholders (written here with ``?``)."""
        return query

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Db]:
        """One transaction (or the caller's, inside ``atomic()``)."""

    @abstractmethod
    def _read(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """The rows of one query, in the driver's placeholders."""

    @abstractmethod
    def _insert_audit(self, db: Db, event: AuditEvent) -> int:
        """Append ``event`` inside the caller's transaction; its id."""

    @abstractmethod
    def _lock_names(self, db: Db, names: Sequence[str]) -> None:
        """Serialise claims of these node names until the commit."""

    def _select(self, query: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        return self._read(self._q(query), params)

    # the protocol

    def schema_version(self) -> int:
        rows = self._select("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(rows[0][0])

    def applied_revision(self) -> AppliedRevision | None:
        rows = self._select(
            f"SELECT {records.APPLIED.columns} FROM applied_revisions ORDER BY id DESC LIMIT 1"
        )
        return records.APPLIED.record(rows[0]) if rows else None

    def set_applied_revision(self, rev: AppliedRevision) -> None:
        with self._tx() as db:
            db.execute(
                self._q(
                    f"INSERT INTO applied_revisions ({records.APPLIED.columns}) VALUES (?, ?, ?)"
                ),
                (rev.sha, records.dumps(rev.approval), rev.applied_at),
            )

    def append_audit(self, event: AuditEvent) -> int:
        with self._tx() as db:
            return self._insert_audit(db, event)

    def audit(self, since: float | None = None, limit: int = 1000) -> Sequence[AuditEvent]:
        query = f"SELECT id, {records.AUDIT.columns} FROM audit "
        params: list[object] = []
        if since is not None:
            query += "WHERE time >= ? "
            params.append(since)
        rows = self._select(query + "ORDER BY id LIMIT ?", [*params, max(0, limit)])
        return [records.AUDIT.record(r) for r in rows]

    def upsert_node(self, node: NodeRecord) -> None:
        with self._tx() as db:
            db.execute(self._q(UPSERT_NODE), records.NODES.row(node))

    def node(self, name: str) -> NodeRecord | None:
        rows = self._select(f"SELECT {records.NODES.columns} FROM nodes WHERE name = ?", (name,))
        return records.NODES.record(rows[0]) if rows else None

    def nodes(self) -> Sequence[NodeRecord]:
        rows = self._select(f"SELECT {records.NODES.columns} FROM nodes ORDER BY name")
        return [records.NODES.record(r) for r in rows]

    def delete_node(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute(self._q("DELETE FROM nodes WHERE name = ?"), (name,)).rowcount > 0

    def claim_node(
        self, node: NodeRecord, *, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None:
        with self._tx() as db:
            self._lock_names(db, [node.name])
            return self._claim(db, node, replaces, join_token)

    def claim_nodes(self, claims: Sequence[NodeClaim]) -> list[ClaimRefusal | None]:
        results: list[ClaimRefusal | None] = []
        if not claims:
            return results
        with self._tx() as db:
            self._lock_names(db, [c.node.name for c in claims])  # all first: no deadlock
            for c in claims:
                lost = self._claim(db, c.node, c.replaces, c.join_token)
                if lost is None:
                    self._insert_audit(db, c.audit)
                results.append(lost)
        return results

    def _claim(
        self, db: Db, node: NodeRecord, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None:
        """One claim inside the caller's transaction, its name locked; a refusal writes
        nothing."""
        row = db.execute(
            self._q("SELECT token_hash FROM nodes WHERE name = ?"), (node.name,)
        ).fetchone()
        if (None if row is None else str(row[0])) != replaces:
            return "taken"
        if join_token is not None:
            spent = db.execute(
                self._q(
                    "UPDATE join_tokens SET used = used + 1 WHERE id = ? "
                    "AND revoked_at IS NULL AND expires_at > ? AND used < uses"
                ),
                (join_token, node.registered_at),
            )
            if spent.rowcount != 1:
                return "token-spent"
        db.execute(self._q(UPSERT_NODE), records.NODES.row(node))
        return None

    def create_join_token(self, token: JoinToken) -> None:
        with self._tx() as db:
            db.execute(
                self._q(
                    f"INSERT INTO join_tokens ({records.JOIN_TOKENS.columns}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                records.JOIN_TOKENS.row(token),
            )

    def join_tokens(self) -> Sequence[JoinToken]:
        rows = self._select(
            f"SELECT {records.JOIN_TOKENS.columns} FROM join_tokens ORDER BY created_at, id"
        )
        return [records.JOIN_TOKENS.record(r) for r in rows]

    def join_token_by_hash(self, token_hash: str) -> JoinToken | None:
        rows = self._select(
            f"SELECT {records.JOIN_TOKENS.columns} FROM join_tokens WHERE token_hash = ?",
            (token_hash,),
        )
        return records.JOIN_TOKENS.record(rows[0]) if rows else None

    def revoke_join_token(self, token_id: str, now: float) -> JoinToken | None:
        with self._tx() as db:
            db.execute(
                self._q(
                    "UPDATE join_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
                ),
                (now, token_id),
            )
            row = db.execute(
                self._q(f"SELECT {records.JOIN_TOKENS.columns} FROM join_tokens WHERE id = ?"),
                (token_id,),
            ).fetchone()
            return None if row is None else records.JOIN_TOKENS.record(row)

    def desired(self, node: str) -> DesiredRecord | None:
        rows = self._select(
            f"SELECT {records.DESIRED.columns} FROM desired WHERE node = ?", (node,)
        )
        return records.DESIRED.record(rows[0]) if rows else None

    def all_desired(self) -> Sequence[DesiredRecord]:
        rows = self._select(f"SELECT {records.DESIRED.columns} FROM desired ORDER BY node")
        return [records.DESIRED.record(r) for r in rows]

    @abstractmethod
    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]: ...

    def put_desired(self, node: str, document: Mapping[str, JSON]) -> tuple[DesiredRecord, bool]:
        return self.put_desired_many({node: document})[0]

    @abstractmethod
    def put_reports(self, reports: Sequence[ReportRecord]) -> None: ...

    def put_report(self, report: ReportRecord) -> None:
        self.put_reports([report])

    def reports(self) -> Sequence[ReportRecord]:
        rows = self._select(f"SELECT {records.REPORTS.columns} FROM reports ORDER BY node")
        return [records.REPORTS.record(r) for r in rows]

    def rollouts(self) -> Mapping[str, Mapping[str, JSON]]:
        rows = self._select("SELECT name, state FROM rollouts ORDER BY name")
        return {r[0]: records.loads(r[1]) for r in rows}

    def put_rollout(self, name: str, state: Mapping[str, JSON]) -> None:
        with self._tx() as db:
            db.execute(
                self._q(
                    "INSERT INTO rollouts (name, state) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET state = excluded.state"
                ),
                (name, records.dumps(state)),
            )

    def controls(self, after: int = 0) -> Sequence[Control]:
        rows = self._select(
            f"SELECT seq, {records.CONTROLS.columns} "
            "FROM rollout_controls WHERE seq > ? ORDER BY seq",
            (after,),
        )
        return [records.CONTROLS.record(r) for r in rows]

    def get_meta(self, key: str) -> str | None:
        rows = self._select("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute(
                self._q(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                (key, value),
            )
