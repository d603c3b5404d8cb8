"""The loop's keys in store meta: the one reader and writer of their JSON shapes.

    conditions   [{type, status, reason, message, lastTransitionTime, observedRevision}]
    tip-status   release rows for an Unapproved or Invalid newest tip (``GET /v1/fleet``)
    audit-seen   "kind:sha" of decisions already audited (refusals repeat every pass)
    stale-nodes  nodes the last pass found Stale (a ``stale`` audit record on the change)

Each value is canonical JSON; a missing or unreadable value reads as empty, so a damaged
key costs one rewrite, never a stopped loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fleetkeeper_common.canonical import canonical_json
from reconciler.spec import JSON

T = TypeVar("T")

AUDIT_SEEN_LIMIT = 500


class MetaStore(Protocol):
    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...


def dumps(value: object) -> str:
    return canonical_json(value)


def _objects(doc: object) -> list[dict[str, JSON]]:
    if isinstance(doc, dict):  # an older shape: {"releases": [...]}
        doc = doc.get("releases", [])
    return [d for d in doc if isinstance(d, dict)] if isinstance(doc, list) else []


def _strings(doc: object) -> list[str]:
    return [str(k) for k in doc] if isinstance(doc, list) else []


def _string_set(doc: object) -> frozenset[str]:
    return frozenset(_strings(doc))


def _sorted(value: frozenset[str]) -> object:
    return sorted(value)


def _keep_last(value: list[str]) -> object:
    return value[-AUDIT_SEEN_LIMIT:]


def _same(value: object) -> object:
    return value


@dataclass(frozen=True)
class MetaKey(Generic[T]):
    name: str
    parse: Callable[[object], T]  # decoded JSON -> value; anything else -> empty
    shape: Callable[[T], object] = _same  # value -> what is stored

    def read(self, store: MetaStore) -> T:
        raw = store.get_meta(self.name)
        try:
            doc: object = json.loads(raw) if raw else []
        except ValueError:
            doc = []
        return self.parse(doc)

    def write(self, store: MetaStore, value: T) -> bool:
        """Store ``value`` when it differs from what is stored; True when it wrote."""
        text = dumps(self.shape(value))
        if text == (store.get_meta(self.name) or "[]"):
            return False
        store.set_meta(self.name, text)
        return True

    def put(self, store: MetaStore, value: T) -> None:
        store.set_meta(self.name, dumps(self.shape(value)))


CONDITIONS: MetaKey[list[dict[str, JSON]]] = MetaKey("conditions", _objects)
TIP_STATUS: MetaKey[list[dict[str, JSON]]] = MetaKey("tip-status", _objects)
AUDIT_SEEN: MetaKey[list[str]] = MetaKey("audit-seen", _strings, _keep_last)
STALE_NODES: MetaKey[frozenset[str]] = MetaKey("stale-nodes", _string_set, _sorted)
