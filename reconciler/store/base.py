"""The store interface: what the reconcile loop and the API persist.

Every method is synchronous and transactional on its own: when it returns, the
write is durable (a crash afterwards loses nothing that was acknowledged); inside
``atomic()`` the writes of one thread commit together when the block ends.
Documents (desired state, reports, rollout state, approval evidence, audit details)
are JSON values; the store does not interpret them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from reconciler.plan.controls import Control
from reconciler.spec import JSON


@dataclass(frozen=True)
class AppliedRevision:
    sha: str
    approval: Mapping[str, JSON]  # {"kind", "ref", "signers"}
    applied_at: float  # unix time


@dataclass(frozen=True)
class AuditEvent:
    time: float
    kind: str  # applied | refused | invalid | rollout-step | halted | succeeded | stale | ...
    message: str
    revision: str | None = None
    release: str | None = None
    node: str | None = None
    details: Mapping[str, JSON] = field(default_factory=dict)
    id: int | None = None  # assigned by the store


@dataclass(frozen=True)
class NodeRecord:
    name: str
    facts: Mapping[str, JSON]  # the register document (platform, accelerator, roles, ...)
    token_hash: str  # sha256 hex of the node token
    registered_at: float
    # how the credential was obtained: {"via": "bootstrap" | "join-token" | "node-credential",
    # "tokenId", "scope": {"node"} | {"roles", "labels"}}; {} for nodes registered before it
    admission: Mapping[str, JSON] = field(default_factory=dict)


JoinTokenState = Literal["active", "expired", "used-up", "revoked"]
ClaimRefusal = Literal["taken", "token-spent"]


@dataclass(frozen=True)
class NodeClaim:
    """One registration for ``claim_nodes``: ``node`` is stored (and ``audit`` appended)
    only if the stored credential of that name is still ``replaces`` and, with
    ``join_token``, a use of that token can be consumed (see ``claim_node``)."""

    node: NodeRecord
    replaces: str | None
    join_token: str | None
    audit: AuditEvent  # the "registered" event, kept in the same transaction


@dataclass(frozen=True)
class JoinToken:
    """A join token as stored: the secret's sha256 only, its scope, its uses and expiry.

    Scope: ``node`` (exactly that name), or ``roles``/``labels`` (the registering node's
    roles and labels must lie within them), or neither (names declared in nodes/ only).
    """

    id: str
    token_hash: str
    created_at: float
    expires_at: float
    uses: int  # how many registrations it allows
    used: int = 0
    node: str | None = None
    roles: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    revoked_at: float | None = None

    def state(self, now: float) -> JoinTokenState:
        if self.revoked_at is not None:
            return "revoked"
        if self.used >= self.uses:
            return "used-up"
        return "expired" if now >= self.expires_at else "active"


@dataclass(frozen=True)
class DesiredRecord:
    node: str
    generation: int
    etag: str  # quoted strong ETag, e.g. "\"3-ab12\""
    document: Mapping[str, JSON]


@dataclass(frozen=True)
class ReportRecord:
    node: str
    report: Mapping[str, JSON]  # the status-report document as received
    received_at: float


class Store(Protocol):
    def close(self) -> None: ...
    def atomic(self) -> AbstractContextManager[None]:
        """Every write this thread makes inside the block commits together, or none does
        (a reconcile pass: rollout state, documents, audit, applied revision)."""
        ...

    # health and schema: ping raises when the database cannot be reached;
    # schema_version is the highest applied migration
    def ping(self) -> None: ...
    def schema_version(self) -> int: ...

    # revisions
    def applied_revision(self) -> AppliedRevision | None: ...
    def set_applied_revision(self, rev: AppliedRevision) -> None: ...

    # audit (append-only)
    def append_audit(self, event: AuditEvent) -> int: ...
    def audit(self, since: float | None = None, limit: int = 1000) -> Sequence[AuditEvent]: ...

    # nodes and tokens
    def upsert_node(self, node: NodeRecord) -> None: ...
    def node(self, name: str) -> NodeRecord | None: ...
    def nodes(self) -> Sequence[NodeRecord]: ...
    def delete_node(self, name: str) -> bool: ...  # False: no such node

    # claim_node stores ``node`` only if the stored credential of that name is still
    # ``replaces`` (None: no node of that name yet) and, with ``join_token``, consumes one
    # use of that token (still active at ``node.registered_at``) in the same transaction.
    # Returns None when stored, else why not; nothing is written on a refusal.
    def claim_node(
        self, node: NodeRecord, *, replaces: str | None, join_token: str | None
    ) -> ClaimRefusal | None: ...

    # claim_nodes judges each claim as claim_node would, in order (a later claim sees what
    # an earlier one stored), and appends the audit event of each claim that was stored,
    # all in one transaction: several registrations per commit (group commit). One result
    # per claim, in order; a refused claim writes nothing.
    def claim_nodes(self, claims: Sequence[NodeClaim]) -> list[ClaimRefusal | None]: ...

    # join tokens (secrets never stored, only their sha256)
    def create_join_token(self, token: JoinToken) -> None: ...
    def join_tokens(self) -> Sequence[JoinToken]: ...
    def join_token_by_hash(self, token_hash: str) -> JoinToken | None: ...
    def revoke_join_token(self, token_id: str, now: float) -> JoinToken | None: ...

    # desired state: put_desired bumps the generation and ETag only when the
    # workloads/revision differ from the stored document; returns the stored record
    # and whether anything changed
    def desired(self, node: str) -> DesiredRecord | None: ...
    def all_desired(self) -> Sequence[DesiredRecord]: ...
    def put_desired(
        self, node: str, document: Mapping[str, JSON]
    ) -> tuple[DesiredRecord, bool]: ...

    # many documents in one transaction (a rollout batch, a new revision); the same
    # answer per node as put_desired, in the order given
    def put_desired_many(
        self, documents: Mapping[str, Mapping[str, JSON]]
    ) -> list[tuple[DesiredRecord, bool]]: ...

    # reports (last one per node); put_reports writes many in one transaction (group
    # commit); touch_reports moves received_at forward only (a batched lastSeen flush
    # never undoes a newer report)
    def put_report(self, report: ReportRecord) -> None: ...
    def put_reports(self, reports: Sequence[ReportRecord]) -> None: ...
    def touch_reports(self, seen: Mapping[str, float]) -> None: ...
    def reports(self) -> Sequence[ReportRecord]: ...

    # rollout state per release name (opaque JSON owned by reconciler.plan.rollout)
    def rollouts(self) -> Mapping[str, Mapping[str, JSON]]: ...
    def put_rollout(self, name: str, state: Mapping[str, JSON]) -> None: ...

    # operator rollout controls (append-only): add_control stores ``control`` (its seq
    # ignored, the store assigns the next) and ``audit`` in one transaction and returns
    # the seq; controls(after) lists those with a seq greater than ``after``, by seq
    def add_control(self, control: Control, audit: AuditEvent) -> int: ...
    def controls(self, after: int = 0) -> Sequence[Control]: ...

    # first observations of git objects (commits, tags) whose signatures are judged:
    # records ``now`` for every sha never seen before and returns the first-seen time of
    # each sha asked for; a recorded time never changes
    def observe(self, shas: Sequence[str], now: float) -> Mapping[str, float]: ...

    # key/value for small bits of loop state (e.g. the last refused tip)
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
