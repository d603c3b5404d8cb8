"""Approval: which revision of the fleet repo is approved (the trust anchor).

    values      facts and results as frozen dataclasses
    settings    how to judge (mode, tag pattern, threshold, keys): built by ``config``
    decide      PURE decisions: the merged-pr fold, signed-tag selection, rollback refusal
    signatures  ssh-keygen / gpg verification against the reconciler's pinned keys
    history     facts from Git with pygit2 (first-parent chain, changes, tags, ancestry)
    engine      wiring: ``evaluate`` (called by the reconcile loop and ``fleetkeeper plan``)

Rules: docs/approval.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.approval.values import ApprovalResult, AuditRecord, Refusal

if TYPE_CHECKING:
    from reconciler.approval.engine import evaluate

__all__ = ["ApprovalResult", "AuditRecord", "Refusal", "evaluate"]


def __getattr__(name: str) -> object:
    # ``evaluate`` pulls in pygit2 and the verifiers: imported on first use, so that
    # importing the pure ``decide`` (which runs this file first) stays free of I/O.
    if name == "evaluate":
        from reconciler.approval.engine import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
