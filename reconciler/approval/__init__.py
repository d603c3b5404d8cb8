"""Approval: which revision of the fleet repo is approved (the trust anchor).

    values      facts and results as frozen dataclasses
    decide      PURE decisions: the merged-pr fold, signed-tag selection, rollback refusal
    signatures  ssh-keygen / gpg verification against the reconciler's pinned keys
    history     facts from Git with pygit2 (first-parent chain, changes, tags, ancestry)
    engine      wiring: ``evaluate`` (called by the reconcile loop and ``fleetkeeper plan``)

Rules: docs/approval.md.
"""

from __future__ import annotations

from reconciler.approval.engine import evaluate
from reconciler.approval.values import ApprovalResult, AuditRecord, Refusal

__all__ = ["ApprovalResult", "AuditRecord", "Refusal", "evaluate"]
