"""Which received desired-state documents the agent accepts (pure: no clock, file or network).

``check`` runs, in order, the checks TUF asks of a client (``docs/security.md``):

1. a signature by a trusted key over the canonical bytes, or over the root of the batch
   they were signed in, through their inclusion proof (``fleetkeeper_common.signing``);
2. ``node`` is this node (a document for another node is refused: mix-and-match);
3. ``expiresAt`` has not passed (freeze: an old document replayed forever);
4. ``generation`` never below the last accepted one, and at the same generation only the
   same state with a later ``issuedAt`` (a re-signed refresh) (rollback);
5. the local policy (``agent.policy``).

A refusal is a message for the log and the report; it never quotes the document's secrets
or a local file's digest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.policy import LocalPolicy, document_violations
from fleetkeeper_common.canonical import canonical_json
from fleetkeeper_common.signing import SignatureRefused, parse_envelope, verify

STAMPS = ("issuedAt", "expiresAt")


@dataclass(frozen=True)
class Accepted:
    document: dict[str, Any]  # the signed document (with issuedAt and expiresAt)
    keyid: str
    refresh: bool  # the same state re-signed (nothing to converge)


@dataclass(frozen=True)
class Refused:
    reason: str


def parse_stamp(text: object) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC stamp (None: missing or malformed)."""
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def state_of(document: Mapping[str, Any]) -> str:
    """The document without its signing stamps: what a refresh must leave unchanged."""
    return canonical_json({k: v for k, v in document.items() if k not in STAMPS})


def expired(document: Mapping[str, Any] | None, now: float) -> bool:
    if document is None:
        return False
    expires = parse_stamp(document.get("expiresAt"))
    return expires is not None and now >= expires


def check(
    raw: object,
    *,
    node: str,
    trusted: Mapping[str, Ed25519PublicKey],
    last: Mapping[str, Any] | None,
    policy: LocalPolicy,
    now: float,
) -> Accepted | Refused:
    """Accept ``raw`` (the envelope as parsed JSON) or say why not; ``last`` is the last
    accepted document (persisted in the state directory, so this holds across restarts)."""
    try:
        envelope = parse_envelope(raw)
        keyid = verify(envelope, trusted)
    except SignatureRefused as exc:
        return Refused(exc.reason)
    doc = dict(envelope.signed)
    if doc.get("node") != node:
        return Refused(f"document for node {str(doc.get('node'))[:64]!r}, not {node!r}")
    issued, expires = parse_stamp(doc.get("issuedAt")), parse_stamp(doc.get("expiresAt"))
    if issued is None or expires is None:
        return Refused("document has no valid issuedAt/expiresAt")
    if now >= expires:
        return Refused(f"document expired at {doc['expiresAt']}")
    generation = doc.get("generation")
    if not isinstance(generation, int):
        return Refused("document has no integer generation")
    refresh = False
    if last is not None:
        last_gen = int(last.get("generation", 0))
        last_issued = parse_stamp(last.get("issuedAt")) or 0.0
        if generation < last_gen:
            return Refused(f"generation {generation} is older than accepted {last_gen} (rollback)")
        if generation == last_gen:
            if state_of(doc) != state_of(last):
                return Refused(f"generation {generation} already accepted with other content")
            if issued < last_issued:
                return Refused(f"generation {generation} signed before the accepted one (replay)")
            refresh = True
    problems = document_violations(doc, policy)
    if problems:
        return Refused("local policy: " + "; ".join(problems))
    return Accepted(doc, keyid, refresh)
