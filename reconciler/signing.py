"""The reconciler's signing key and the signed form of each desired-state document.

The key is an OpenSSH Ed25519 private key (``ssh-keygen -t ed25519 -N ''`` writes one);
without ``signingKeyFile`` one is generated on first start as ``<stateDir>/signing_key``
(mode 0600, its ``.pub`` beside it). Signing rules (what the agent checks) are in
``docs/security.md``; the byte form is ``fleetkeeper_common.signing``.

A refresh re-signs the same document (same ``generation``) with a later ``issuedAt`` and
``expiresAt``: the agent accepts it as the same state, never as a change or a rollback.
``issuedAt`` is the start of the node's current half-validity period, so a document always
has at least half its validity left when served.

``sign_many`` signs documents as one batch (``fleetkeeper_common.signing``: one Ed25519
signature over the Merkle root of the batch, each envelope with its inclusion proof); the
single-signature envelope an agent of an earlier release asks for is made from it on
demand (``single``). Each document keeps its own stamps: one batch may hold different
``issuedAt`` values (the per-node offsets).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper_common import signing
from reconciler.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "signing_key"
DEFAULT_VALIDITY_SECONDS = 24 * 3600


def load_or_create_key(path: Path | None, state_dir: Path) -> tuple[Ed25519PrivateKey, Path]:
    """The key at ``path``; with no path, ``<state_dir>/signing_key``, created when missing."""
    if path is None:
        path = state_dir / DEFAULT_KEY_NAME
        if not path.exists():
            _create(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"signingKeyFile {path}: cannot read: {exc.strerror}") from exc
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"signingKeyFile {path}: not an unencrypted OpenSSH private key: {exc}"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"signingKeyFile {path}: not an Ed25519 key (ssh-keygen -t ed25519)")
    if path.stat().st_mode & 0o077:
        log.warning("signingKeyFile %s is readable by others: chmod 600 it", path)
    return key, path


def _create(path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two starting processes never overwrite each other's key
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    path.with_name(path.name + ".pub").write_text(
        signing.public_line(key.public_key()) + " fleetkeeper-reconciler\n"
    )


def _stamp(t: float) -> str:
    # time.gmtime: a third of datetime's cost, twice per document on every fan-out
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


@dataclass(frozen=True)
class Signed:
    body: bytes  # the batch-form envelope as JSON
    issued_at: int
    refresh_at: float  # re-sign from here on (half the validity)
    at: int  # where the signed document's canonical bytes start in ``body``

    @property
    def document_bytes(self) -> bytes:
        """The canonical bytes of the signed document (the envelope ends with them + ``}``)."""
        return self.body[self.at : -1]


Evidence = Callable[[Mapping[str, object]], Mapping[str, object] | None]


class DocumentSigner:
    def __init__(
        self,
        key: Ed25519PrivateKey,
        validity: float = DEFAULT_VALIDITY_SECONDS,
        evidence: Evidence | None = None,
    ):
        self.key = key
        self.validity = validity
        # the approver's signed objects, for agents that check them (reconciler.evidence)
        self.evidence = evidence
        self.public_line = signing.public_line(key.public_key())
        self.keyid = signing.keyid(key.public_key())
        # (node, half validity) -> the node's refresh offset: one hash per node, not per sign
        self._offsets: dict[tuple[str, int], int] = {}

    def issued_at(self, node: str, now: float) -> int:
        """The signing time of ``node``'s document at ``now``: the start of its current
        half-validity period, offset per node. Deterministic, so a restarted reconciler
        signs the same bytes (Ed25519 is deterministic too) and ETags survive restarts;
        the offset spreads the fleet's refreshes over the period instead of one instant."""
        half = max(int(self.validity // 2), 1)
        offset = self._offsets.get((node, half))
        if offset is None:
            offset = int.from_bytes(hashlib.sha256(node.encode()).digest()[:4], "big") % half
            self._offsets[node, half] = offset
        return int((now - offset) // half) * half + offset

    def sign(self, document: Mapping[str, object], now: float) -> Signed:
        """One document: a batch of one (an empty inclusion path)."""
        return self.sign_many([document], now)[0]

    def sign_many(self, documents: Sequence[Mapping[str, object]], now: float) -> list[Signed]:
        """``documents`` signed as one batch, in order: one Ed25519 signature for them all."""
        if not documents:
            return []
        half = max(int(self.validity // 2), 1)
        issued = [self.issued_at(str(d.get("node", "")), now) for d in documents]
        bodies = [
            signing.canonical_bytes(self.stamped(d, t))
            for d, t in zip(documents, issued, strict=True)
        ]
        envelopes = signing.batch_envelopes(self.key, self.keyid, bodies)
        return [
            Signed(envelope, t, t + half, len(envelope) - len(body) - 1)
            for envelope, body, t in zip(envelopes, bodies, issued, strict=True)
        ]

    def stamped(self, document: Mapping[str, object], issued: int) -> dict[str, object]:
        """What is signed: the document with its stamps (and evidence, when configured)."""
        signed = {
            **document,
            "issuedAt": _stamp(issued),
            "expiresAt": _stamp(issued + self.validity),
        }
        proof = self.evidence(document) if self.evidence is not None else None
        if proof is not None:
            signed["evidence"] = dict(proof)
        return signed

    def single(self, signed: Signed) -> bytes:
        """The single-signature envelope of the same signed document (same stamps): what
        an agent that does not announce ``proofs=merkle`` verifies."""
        return signing.single_envelope(self.key, self.keyid, signed.document_bytes)
