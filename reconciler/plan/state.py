"""Rollout state of one release or model, as values, and its JSON form for the store.

The store keeps this state as opaque JSON per workload name (``Store.put_rollout``);
only this module reads and writes that JSON. Pure: no I/O.

A rollout is identified by its ``fingerprint`` (version + the content of the release
file): a new approved version, or a changed file, starts a new rollout and the old one
moves into ``history``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Literal

from fleetkeeper_common.canonical import canonical_json
from reconciler.spec import JSON, Deployable, WorkloadKind

Phase = Literal["Pending", "Progressing", "Soaking", "Halted", "Succeeded", "Superseded"]
PHASES: tuple[Phase, ...] = (
    "Pending",
    "Progressing",
    "Soaking",
    "Halted",
    "Succeeded",
    "Superseded",
)
STATE_VERSION = 1
HISTORY_LIMIT = 5


@dataclass(frozen=True)
class Batch:
    """Nodes that receive the new version together; times are unix seconds."""

    nodes: tuple[str, ...]
    started_at: float | None = None
    done_at: float | None = None
    promoted: bool = False  # ``rollout promote``: done once its nodes run healthy, no soak


@dataclass(frozen=True)
class NodeProgress:
    """When a node was given the target, and since when it has run it healthy."""

    started_at: float
    healthy_since: float | None = None
    retry: int = 0  # the rollout's retry count when it was given the target again (0: never)
    # after a retry, a Failed report counts only from a document newer than the one the
    # node had acted on when it was retried (its last report repeats the old failure)
    failed_generation: int = 0


@dataclass(frozen=True)
class Halt:
    node: str
    reason: str
    at: float


@dataclass(frozen=True)
class Wait:
    """Why a rollout is not moving although nothing failed: a closed maintenance window
    (``until`` its opening, ``label`` such as ``Tue 02:00 Europe/Berlin``) or backpressure
    (``nodes`` unavailable, ``label`` the limit)."""

    kind: Literal["window", "backpressure"]
    label: str
    until: float | None = None
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pause:
    """``fleetkeeper rollout pause``: who paused the workload's rollouts, why, and when."""

    by: str
    reason: str
    at: float


@dataclass(frozen=True)
class PastRollout:
    """A rollout replaced by a newer one (kept briefly so status can show it)."""

    version: str
    fingerprint: str
    phase: Phase
    reason: str | None
    at: float


@dataclass(frozen=True)
class RolloutState:
    name: str
    kind: WorkloadKind
    version: str
    fingerprint: str
    started_at: float
    batches: tuple[Batch, ...]
    phase: Phase = "Pending"
    soak_seconds: int = 0  # copied from the release so status needs no spec
    timeout_seconds: int = 0
    on_failure: str = "halt"
    spread_seconds: int = 0  # the notBefore spread, copied so node_workload needs no spec
    nodes: Mapping[str, NodeProgress] = field(default_factory=dict)
    # the node's workload document before this rollout (None: it had none); what a node
    # not yet in a started batch keeps, and what `onFailure: rollback` gives back
    previous: Mapping[str, Mapping[str, JSON] | None] = field(default_factory=dict)
    halt: Halt | None = None
    rolled_back: tuple[str, ...] = ()
    history: tuple[PastRollout, ...] = ()
    wait: Wait | None = None
    held: tuple[str, ...] = ()  # targeted nodes on hold (``hold:`` in their node file)
    # operator controls folded in (``plan.controls``): the pause in force, the newest
    # record applied, how often a halt was retried, the nodes left behind
    paused: Pause | None = None
    control_seq: int = 0
    retries: int = 0
    skipped: tuple[str, ...] = ()
    # the release's config digest (issue 17): status shows the same version with a new one
    config_digest: str | None = None

    def started_nodes(self) -> list[str]:
        """Nodes of every batch that has started, in batch order."""
        return [n for b in self.batches if b.started_at is not None for n in b.nodes]

    def active_batch(self) -> int | None:
        """Index of the first batch not done (None when all are done)."""
        for i, b in enumerate(self.batches):
            if b.done_at is None:
                return i
        return None


_CONTROL_DEFAULTS: dict[str, object] = {
    "windows": None,
    "max_unavailable": None,
    "spread_seconds": 0,
}


def fingerprint(d: Deployable) -> str:
    """A digest of everything in a release/model file: any change starts a new rollout."""
    doc = asdict(d)
    # Rollout controls left at their defaults are not part of the digest, so a release file
    # that does not use them keeps the fingerprint it had before they existed (upgrading
    # the reconciler must not restart every rollout).
    rollout = doc["rollout"]
    for key, unset in _CONTROL_DEFAULTS.items():
        if rollout.get(key) == unset:
            del rollout[key]
    if not doc.get("drain"):  # likewise a file without drain
        doc.pop("drain", None)
    # Issue 17's blocks: absent ones are left out (old fingerprints stay); a config file
    # counts by its digest, not its bytes (they can be 1 MiB and this runs every pass).
    for key in ("config", "data"):
        if doc.get(key) is None:
            doc.pop(key, None)
    if "config" in doc:
        for f in doc["config"]["files"]:
            del f["data"]
    # secrets: none, the digest they had before; a re-encrypted one is a new rollout
    if not doc.get("secrets"):
        doc.pop("secrets", None)
    else:
        for sec in doc["secrets"]:
            sec["ciphertext"] = hashlib.sha256(sec["ciphertext"].encode()).hexdigest()
    text = canonical_json(doc, default=dict)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# --- JSON codec -------------------------------------------------------------------------


def _num(value: JSON | None) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _str(value: JSON | None, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _opt_str(value: JSON | None) -> str | None:
    return value if isinstance(value, str) else None


def _obj(value: JSON | None) -> dict[str, JSON]:
    return value if isinstance(value, dict) else {}


def _list(value: JSON | None) -> list[JSON]:
    return value if isinstance(value, list) else []


def _phase(value: JSON | None) -> Phase:
    return value if value in PHASES else "Pending"


def _json_doc(doc: Mapping[str, JSON] | None) -> JSON:
    if doc is None or isinstance(doc, dict):
        return doc
    return dict(doc)


def state_to_json(s: RolloutState) -> dict[str, JSON]:
    """The store form; deterministic (sorted keys where order carries no meaning)."""
    out: dict[str, JSON] = {
        "stateVersion": STATE_VERSION,
        "name": s.name,
        "kind": s.kind,
        "version": s.version,
        "fingerprint": s.fingerprint,
        "startedAt": s.started_at,
        "phase": s.phase,
        "soakSeconds": s.soak_seconds,
        "timeoutSeconds": s.timeout_seconds,
        "onFailure": s.on_failure,
        "batches": [_batch_json(b) for b in s.batches],
        "nodes": {n: _progress_json(p) for n, p in sorted(s.nodes.items())},
        # the documents are shared, not copied (never mutated; 10,000 copies per pass cost)
        "previous": {n: _json_doc(doc) for n, doc in sorted(s.previous.items())},
        "halt": (
            {"node": s.halt.node, "reason": s.halt.reason, "at": s.halt.at} if s.halt else None
        ),
        "rolledBack": list(s.rolled_back),
        "history": [
            {
                "version": h.version,
                "fingerprint": h.fingerprint,
                "phase": h.phase,
                "reason": h.reason,
                "at": h.at,
            }
            for h in s.history
        ],
    }
    # only when set, so a state written before these existed reads back unchanged
    if s.wait is not None:
        out["wait"] = {
            "kind": s.wait.kind,
            "label": s.wait.label,
            "until": s.wait.until,
            "nodes": list(s.wait.nodes),
        }
    if s.held:
        out["held"] = list(s.held)
    if s.spread_seconds:
        out["spreadSeconds"] = s.spread_seconds
    if s.paused is not None:
        out["paused"] = {"by": s.paused.by, "reason": s.paused.reason, "at": s.paused.at}
    if s.control_seq:
        out["controlSeq"] = s.control_seq
    if s.retries:
        out["retries"] = s.retries
    if s.skipped:
        out["skipped"] = list(s.skipped)
    if s.config_digest is not None:
        out["configDigest"] = s.config_digest
    return out


def _batch_json(b: Batch) -> dict[str, JSON]:
    out: dict[str, JSON] = {"nodes": list(b.nodes), "startedAt": b.started_at, "doneAt": b.done_at}
    if b.promoted:
        out["promoted"] = True
    return out


def _progress_json(p: NodeProgress) -> dict[str, JSON]:
    out: dict[str, JSON] = {"startedAt": p.started_at, "healthySince": p.healthy_since}
    if p.retry:
        out["retry"] = p.retry
    if p.failed_generation:
        out["failedGeneration"] = p.failed_generation
    return out


def state_from_json(doc: Mapping[str, JSON]) -> RolloutState | None:
    """Parse the store form; None when it is not a rollout state this version understands."""
    if doc.get("stateVersion") != STATE_VERSION or not isinstance(doc.get("name"), str):
        return None
    batches = []
    for b in _list(doc.get("batches")):
        bo = _obj(b)
        batches.append(
            Batch(
                nodes=tuple(_str(n) for n in _list(bo.get("nodes"))),
                started_at=_num(bo.get("startedAt")),
                done_at=_num(bo.get("doneAt")),
                promoted=bo.get("promoted") is True,
            )
        )
    nodes = {}
    for n, p in _obj(doc.get("nodes")).items():
        po = _obj(p)
        nodes[n] = NodeProgress(
            started_at=_num(po.get("startedAt")) or 0.0,
            healthy_since=_num(po.get("healthySince")),
            retry=int(_num(po.get("retry")) or 0),
            failed_generation=int(_num(po.get("failedGeneration")) or 0),
        )
    previous: dict[str, Mapping[str, JSON] | None] = {
        n: (v if isinstance(v, dict) else None) for n, v in _obj(doc.get("previous")).items()
    }
    halt_doc = doc.get("halt")
    halt = None
    if isinstance(halt_doc, dict):
        halt = Halt(
            node=_str(halt_doc.get("node")),
            reason=_str(halt_doc.get("reason")),
            at=_num(halt_doc.get("at")) or 0.0,
        )
    wait_doc = doc.get("wait")
    wait = None
    if isinstance(wait_doc, dict):
        wait = Wait(
            kind="backpressure" if wait_doc.get("kind") == "backpressure" else "window",
            label=_str(wait_doc.get("label")),
            until=_num(wait_doc.get("until")),
            nodes=tuple(_str(n) for n in _list(wait_doc.get("nodes"))),
        )
    paused_doc = doc.get("paused")
    paused = None
    if isinstance(paused_doc, dict):
        paused = Pause(
            by=_str(paused_doc.get("by")),
            reason=_str(paused_doc.get("reason")),
            at=_num(paused_doc.get("at")) or 0.0,
        )
    history = tuple(
        PastRollout(
            version=_str(_obj(h).get("version")),
            fingerprint=_str(_obj(h).get("fingerprint")),
            phase=_phase(_obj(h).get("phase")),
            reason=_opt_str(_obj(h).get("reason")),
            at=_num(_obj(h).get("at")) or 0.0,
        )
        for h in _list(doc.get("history"))
    )
    return RolloutState(
        name=_str(doc.get("name")),
        kind="model" if doc.get("kind") == "model" else "process",
        version=_str(doc.get("version")),
        fingerprint=_str(doc.get("fingerprint")),
        started_at=_num(doc.get("startedAt")) or 0.0,
        batches=tuple(batches),
        phase=_phase(doc.get("phase")),
        soak_seconds=int(_num(doc.get("soakSeconds")) or 0),
        timeout_seconds=int(_num(doc.get("timeoutSeconds")) or 0),
        on_failure=_str(doc.get("onFailure"), "halt"),
        spread_seconds=int(_num(doc.get("spreadSeconds")) or 0),
        nodes=nodes,
        previous=previous,
        halt=halt,
        rolled_back=tuple(_str(n) for n in _list(doc.get("rolledBack"))),
        history=history,
        wait=wait,
        held=tuple(_str(n) for n in _list(doc.get("held"))),
        paused=paused,
        control_seq=int(_num(doc.get("controlSeq")) or 0),
        retries=int(_num(doc.get("retries")) or 0),
        skipped=tuple(_str(n) for n in _list(doc.get("skipped"))),
        config_digest=_opt_str(doc.get("configDigest")),
    )
