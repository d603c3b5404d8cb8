"""Rows <-> records, shared by every SQL backend (the same tables, the same columns).

JSON documents are stored as canonical text, so two backends (and a migrated copy)
hold byte-identical values and the same ETags.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from fleetkeeper_common.canonical import canonical_json
from reconciler.plan.controls import Control
from reconciler.spec import JSON
from reconciler.store.base import (
    AppliedRevision,
    AuditEvent,
    DesiredRecord,
    JoinToken,
    NodeRecord,
    ReportRecord,
)

dumps = canonical_json

NODE_COLUMNS = "name, facts, token_hash, registered_at, admission"
TOKEN_COLUMNS = (
    "id, token_hash, created_at, expires_at, uses, used, node, roles, labels, revoked_at"
)
DESIRED_COLUMNS = "node, generation, etag, document"
AUDIT_COLUMNS = "time, kind, message, revision, release, node, details"  # id: the store's
CONTROL_COLUMNS = "name, action, fingerprint, node, actor, reason, at"  # seq: the store's
REPORT_COLUMNS = "node, report, received_at"
APPLIED_COLUMNS = "sha, approval, applied_at"


def loads(text: str) -> Any:
    return json.loads(text)


def desired_etag(generation: int, document: Mapping[str, JSON]) -> str:
    """A strong, quoted ETag from the generation and the content (stable across restarts)."""
    digest = hashlib.sha256(dumps(document).encode()).hexdigest()[:16]
    return f'"{generation}-{digest}"'


def comparable(document: Mapping[str, JSON]) -> str:
    """The document without its generation: what decides whether a put changes anything."""
    return dumps({k: v for k, v in document.items() if k != "generation"})


def next_desired(
    node: str, old: DesiredRecord | None, document: Mapping[str, JSON]
) -> DesiredRecord | None:
    """The record to store for ``document`` (generation bumped), or None: nothing changed."""
    if old is not None and comparable(old.document) == comparable(document):
        return None
    generation = 1 if old is None else old.generation + 1
    doc: dict[str, JSON] = {**document, "generation": generation}
    return DesiredRecord(
        node=node, generation=generation, etag=desired_etag(generation, doc), document=doc
    )


def node_row(node: NodeRecord) -> tuple[object, ...]:
    return (
        node.name,
        dumps(node.facts),
        node.token_hash,
        node.registered_at,
        dumps(node.admission),
    )


def token_row(token: JoinToken) -> tuple[object, ...]:
    return (
        token.id,
        token.token_hash,
        token.created_at,
        token.expires_at,
        token.uses,
        token.used,
        token.node,
        None if token.roles is None else dumps(list(token.roles)),
        None if token.labels is None else dumps(dict(token.labels)),
        token.revoked_at,
    )


def node_record(row: tuple[Any, ...]) -> NodeRecord:
    return NodeRecord(
        name=row[0],
        facts=loads(row[1]),
        token_hash=row[2],
        registered_at=row[3],
        admission=loads(row[4]),
    )


def join_token_record(row: tuple[Any, ...]) -> JoinToken:
    roles, labels = row[7], row[8]
    return JoinToken(
        id=row[0],
        token_hash=row[1],
        created_at=row[2],
        expires_at=row[3],
        uses=row[4],
        used=row[5],
        node=row[6],
        roles=None if roles is None else tuple(loads(roles)),
        labels=None if labels is None else dict(loads(labels)),
        revoked_at=row[9],
    )


def desired_record(row: tuple[Any, ...]) -> DesiredRecord:
    return DesiredRecord(node=row[0], generation=row[1], etag=row[2], document=loads(row[3]))


def audit_row(event: AuditEvent) -> tuple[object, ...]:
    """The values of ``AUDIT_COLUMNS`` (the id is assigned by the insert)."""
    return (
        event.time,
        event.kind,
        event.message,
        event.revision,
        event.release,
        event.node,
        dumps(event.details),
    )


def audit_record(row: tuple[Any, ...]) -> AuditEvent:
    """A row of ``id, AUDIT_COLUMNS``."""
    return AuditEvent(
        id=row[0],
        time=row[1],
        kind=row[2],
        message=row[3],
        revision=row[4],
        release=row[5],
        node=row[6],
        details=loads(row[7]),
    )


def control_row(control: Control) -> tuple[object, ...]:
    """The values of ``CONTROL_COLUMNS`` (the seq is assigned by the insert)."""
    return (
        control.name,
        control.action,
        control.fingerprint,
        control.node,
        control.actor,
        control.reason,
        control.at,
    )


def control_record(row: tuple[Any, ...]) -> Control:
    """A row of ``seq, CONTROL_COLUMNS``."""
    return Control(
        seq=int(row[0]),
        name=row[1],
        action=row[2],
        fingerprint=row[3],
        node=row[4],
        actor=row[5],
        reason=row[6],
        at=row[7],
    )


def report_record(row: tuple[Any, ...]) -> ReportRecord:
    return ReportRecord(node=row[0], report=loads(row[1]), received_at=row[2])


def applied_record(row: tuple[Any, ...]) -> AppliedRevision:
    return AppliedRevision(sha=row[0], approval=loads(row[1]), applied_at=row[2])
