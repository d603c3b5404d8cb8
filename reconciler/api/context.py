"""What the API's handlers need, wired once by ``reconciler.service`` (or a test)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from reconciler.api.auth import NodeTokens
from reconciler.api.gauges import UnlistedVerdicts
from reconciler.api.hub import DesiredHub
from reconciler.api.metrics import Metrics
from reconciler.config import DEFAULT_HEARTBEAT_TTL, DEFAULT_MAX_BODY, Config
from reconciler.forges import DeliveryLog
from reconciler.groupcommit import GroupCommit
from reconciler.reportbook import ReportBook
from reconciler.signing import DocumentSigner
from reconciler.spec import JSON, FleetSpec
from reconciler.store.base import ClaimRefusal, JoinToken, NodeClaim, NodeRecord, Store

MAX_WAIT_SECONDS = 60
# A registration wakes the loop this much later, so that a fleet enrolling at once (a
# thousand nodes a second) costs a few passes a second, not one pass per registration:
# each such pass re-plans for a new inventory, which costs as much as the fleet is large.
REGISTRATION_WAKE_SECONDS = 1.0


def _nothing() -> None:
    return None


def _ignore(_: NodeRecord | None) -> None:
    return None


def _always() -> bool:
    return True


def _no_spec() -> FleetSpec | None:
    return None


def _no_replicas() -> list[dict[str, JSON]] | None:
    return None


@dataclass(frozen=True)
class ApiSettings:
    """The API's part of ``Config`` (the same names), so handlers see only what they use."""

    bootstrap_token: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    heartbeat_ttl: float = DEFAULT_HEARTBEAT_TTL
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_wait: float = MAX_WAIT_SECONDS

    @classmethod
    def from_config(cls, config: Config) -> ApiSettings:
        shared = {f.name for f in fields(cls)} & {f.name for f in fields(config)}
        return cls(**{name: getattr(config, name) for name in shared})


@dataclass
class ApiContext:
    store: Store
    settings: ApiSettings
    hub: DesiredHub
    tokens: NodeTokens
    metrics: Metrics
    reports: ReportBook  # last report per node; repeats only move lastSeen in memory
    wake: Callable[[], None] = _nothing  # a report or registration arrived: reconcile soon
    # a node registered (its record) or was reset (None): the planner's inventory changed
    registered: Callable[[NodeRecord | None], None] = _ignore
    trigger: Callable[[], None] = _nothing  # a valid webhook: fetch the fleet repo now
    ready: Callable[[], bool] = _always  # the first reconcile pass is done
    spec: Callable[[], FleetSpec | None] = _no_spec  # the applied revision's spec, if known
    # the replicas on the same PostgreSQL database (None: a single reconciler, SQLite)
    replicas: Callable[[], list[dict[str, JSON]] | None] = _no_replicas
    clock: Callable[[], float] = time.time
    # webhook deliveries accepted lately: a replay is answered without fetching
    deliveries: DeliveryLog = field(default_factory=DeliveryLog)
    # join tokens by the sha256 of their secret, as last read from the store. Only found
    # tokens are kept (a few: an operator creates them). Safe to be stale: the claim that
    # consumes a use re-checks uses, expiry and revocation in its transaction, and scope
    # never changes. Saves a store read per registration of an enrolling fleet.
    join_tokens: dict[str, JoinToken] = field(default_factory=dict)
    # the rollout states as the loop last wrote them (None: read the store), for /metrics
    rollouts: Callable[[], Mapping[str, Mapping[str, JSON]]] | None = None
    # which registered nodes are unlisted, kept per token and spec (/metrics)
    unlisted: UnlistedVerdicts = field(default_factory=UnlistedVerdicts)
    # registrations that arrive together are stored in one transaction (group commit)
    registrations: GroupCommit[NodeClaim, ClaimRefusal | None] = field(init=False)

    _wake_timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.registrations = GroupCommit(
            lambda claims: self.store.claim_nodes(claims), "registration(s)"
        )

    def wake_after_registration(self) -> None:
        """Wake the loop ``REGISTRATION_WAKE_SECONDS`` from the first registration not yet
        planned (event loop only): the registrations meanwhile share that pass."""
        if self._wake_timer is None:
            loop = asyncio.get_running_loop()
            self._wake_timer = loop.call_later(REGISTRATION_WAKE_SECONDS, self._registered_wake)

    def _registered_wake(self) -> None:
        self._wake_timer = None
        self.wake()

    @classmethod
    def load(
        cls,
        store: Store,
        settings: ApiSettings,
        metrics: Metrics | None = None,
        signer: DocumentSigner | None = None,
    ) -> ApiContext:
        """Fill the in-memory caches (tokens, desired documents) from the store."""
        return cls(
            store=store,
            settings=settings,
            hub=DesiredHub(store, store.all_desired(), signer),
            tokens=NodeTokens((n.name, n.token_hash) for n in store.nodes()),
            metrics=metrics or Metrics(),
            reports=ReportBook(store, store.reports(), settings.heartbeat_ttl),
        )
