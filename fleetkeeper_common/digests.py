"""The rollout target's digest, computed the same way by the reconciler and the agent.

A rollout's target is (version, digest): the digest changes when a config file or a
secret's ciphertext does, so a re-encrypted secret rolls out in batches like a config
change. The reconciler computes it from the release (``Deployable.target_digest``); the
agent reports it from what the running process was started with (``configDigest``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def config_digest(on_change: str, files: Iterable[tuple[str, bool, str]]) -> str:
    """Over ``onChange`` and (to, template, sha256 of the committed bytes) of each config
    file: what status shows beside the version."""
    parts = [on_change] + [f"{to}\0{int(template)}\0{sha}" for to, template, sha in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def secrets_digest(entries: Iterable[tuple[str, str, str, str]]) -> str | None:
    """Over (name, as, from, ciphertext) of a workload's secrets; None: it has none."""
    h = hashlib.sha256()
    n = 0
    for name, as_, source, ciphertext in entries:
        h.update(f"{name}\0{as_}\0{source}\0".encode())
        h.update(hashlib.sha256(ciphertext.encode()).digest())
        n += 1
    return h.hexdigest()[:16] if n else None


def target_digest(config: str | None, secrets: str | None) -> str | None:
    """The config digest alone when there are no secrets (what it was before secrets)."""
    if secrets is None:
        return config
    return hashlib.sha256(f"{config or ''}\0{secrets}".encode()).hexdigest()[:16]
