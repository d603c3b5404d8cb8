"""Rows <-> records, shared by every SQL backend (the same tables, the same columns).

Each table is one ``Shape``: its columns, in order, named like the fields of its record
type, and how a column that is not stored as it is (JSON text) is turned to and from a
value. JSON documents are stored as canonical text, so two backends (and a migrated
copy) hold byte-identical values and the same ETags.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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
R = TypeVar("R")


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


@dataclass(frozen=True)
class Codec:
    """How a field becomes a column value (``dump``) and back (``load``)."""

    dump: Callable[[Any], object]
    load: Callable[[Any], Any]


def _same(value: Any) -> Any:
    return value


AS_IS = Codec(_same, _same)
JSON_TEXT = Codec(dumps, loads)
TUPLE_OR_NULL = Codec(
    lambda v: None if v is None else dumps(list(v)),
    lambda t: None if t is None else tuple(loads(t)),
)
DICT_OR_NULL = Codec(
    lambda v: None if v is None else dumps(dict(v)),
    lambda t: None if t is None else dict(loads(t)),
)


class Shape(Generic[R]):
    """One table's columns and the record type they fill, field by field (same names).

    ``key``: a column the database assigns (an id, a seq): not written by ``row``, read
    as the first column, before ``columns``, by ``record``.
    """

    def __init__(
        self,
        make: Callable[..., R],
        columns: Sequence[str],
        *,
        key: str | None = None,
        **codecs: Codec,
    ) -> None:
        unknown = codecs.keys() - set(columns)
        if unknown:
            raise ValueError(f"codecs for columns the shape does not have: {sorted(unknown)}")
        self._make = make
        self._fields = tuple((c, codecs.get(c, AS_IS)) for c in columns)
        self._key = key
        self.columns = ", ".join(columns)  # for SELECT and INSERT lists

    def row(self, record: R) -> tuple[object, ...]:
        """The values of ``columns``, in order."""
        return tuple(c.dump(getattr(record, n)) for n, c in self._fields)

    def record(self, row: Sequence[Any]) -> R:
        """A row of ``columns`` (``key, columns`` when the shape has a key)."""
        values = row[1:] if self._key is not None else row
        fields = {n: c.load(v) for (n, c), v in zip(self._fields, values, strict=True)}
        if self._key is not None:
            fields[self._key] = int(row[0])
        return self._make(**fields)


NODES = Shape(
    NodeRecord,
    ("name", "facts", "token_hash", "registered_at", "admission"),
    facts=JSON_TEXT,
    admission=JSON_TEXT,
)
JOIN_TOKENS = Shape(
    JoinToken,
    (
        "id",
        "token_hash",
        "created_at",
        "expires_at",
        "uses",
        "used",
        "node",
        "roles",
        "labels",
        "revoked_at",
    ),
    roles=TUPLE_OR_NULL,
    labels=DICT_OR_NULL,
)
DESIRED = Shape(DesiredRecord, ("node", "generation", "etag", "document"), document=JSON_TEXT)
AUDIT = Shape(
    AuditEvent,
    ("time", "kind", "message", "revision", "release", "node", "details"),
    key="id",
    details=JSON_TEXT,
)
CONTROLS = Shape(
    Control, ("name", "action", "fingerprint", "node", "actor", "reason", "at"), key="seq"
)
REPORTS = Shape(ReportRecord, ("node", "report", "received_at"), report=JSON_TEXT)
APPLIED = Shape(AppliedRevision, ("sha", "approval", "applied_at"), approval=JSON_TEXT)
