"""Wiring: gather facts from the source, verify signatures, fold them through ``decide``.

An ``Approver`` (one per reconciler, built in ``reconciler.service``) keeps, per
(repository, branch, settings, pinned keys, last applied revision), the fold state at the
last evaluated tip, so a re-evaluation walks only the new commits; and the Git facts it
read (``history.FactCache``). ``evaluate`` is a one-off evaluation that keeps nothing.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import pygit2

from reconciler.approval import decide, history
from reconciler.approval.settings import ApprovalSettings
from reconciler.approval.signatures import Verifier
from reconciler.approval.values import ApprovalResult, Relation

log = logging.getLogger(__name__)

_MEMO_MAX = 64
_FORWARD_LIMIT = 1000  # commits followed back to the last evaluated tip before a full walk
MemoKey = tuple[object, ...]


class Source(Protocol):
    """What evaluation needs from ``reconciler.source.GitSource``."""

    @property
    def branch(self) -> str: ...

    def tip(self) -> str | None: ...

    def repository(self) -> pygit2.Repository: ...


class Approver:
    """Approval evaluation with what it keeps between calls (thread-safe)."""

    def __init__(self) -> None:
        self.facts = history.FactCache()
        self._memo: dict[MemoKey, tuple[str, decide.ChainState]] = {}
        self._lock = threading.Lock()

    def remembered(self, key: MemoKey) -> tuple[str, decide.ChainState] | None:
        with self._lock:
            return self._memo.get(key)

    def remember(self, key: MemoKey, tip: str, state: decide.ChainState) -> None:
        with self._lock:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = (tip, state)

    def evaluate(
        self, source: Source, settings: ApprovalSettings, last_applied: str | None, state_dir: Path
    ) -> ApprovalResult:
        """Which revision of the fleet repo is approved, with every decision as audit records."""
        repo = source.repository()
        ctx = _Context(repo, settings, verifier_for(settings, state_dir), self)
        if settings.mode == "signed-tag":
            return _evaluate_tags(ctx, last_applied)
        tip = source.tip()
        if tip is None:
            if last_applied is None:
                return ApprovalResult(None, None, (), ())
            return decide.rollback_refusal(source.branch, None, last_applied)
        if last_applied is not None and not _reaches(repo, tip, last_applied):
            return decide.rollback_refusal(source.branch, tip, last_applied)
        key = (repo.path, source.branch, settings, ctx.verifier.digest, last_applied)
        state = _fold(ctx, key, tip, last_applied)
        return decide.chain_result(state, last_applied)


@dataclass(frozen=True)
class _Context:
    repo: pygit2.Repository
    settings: ApprovalSettings
    verifier: Verifier
    approver: Approver

    @property
    def facts(self) -> history.FactCache:
        return self.approver.facts


def verifier_for(settings: ApprovalSettings, state_dir: Path) -> Verifier:
    return Verifier(settings.allowed_signers, settings.gpg_keyring, state_dir / "gnupg")


def evaluate(
    source: Source, settings: ApprovalSettings, last_applied: str | None, state_dir: Path
) -> ApprovalResult:
    """A one-off evaluation (``fleetkeeper plan``, tests): nothing is kept for the next."""
    return Approver().evaluate(source, settings, last_applied, state_dir)


def _reaches(repo: pygit2.Repository, tip: str, applied: str) -> bool:
    """``tip`` contains ``applied``: usually a few first parents away (cheap); else a graph
    query (a merge-base walk)."""
    if history.first_parents_until(repo, tip, applied, _FORWARD_LIMIT) is not None:
        return True
    return history.contains(repo, tip, applied)


def _tag_signers(ctx: _Context) -> dict[str, frozenset[str]]:
    """Signers of valid approving tags per commit (merged-pr with threshold > 1)."""
    if ctx.settings.threshold <= 1:
        return {}
    tags = history.tag_facts(ctx.repo, ctx.verifier, _wanted_tags(ctx), ctx.facts)
    groups, _, _ = decide.group_tags(tags, ctx.settings)
    return {t: g.signers for t, g in groups.items()}


def _wanted_tags(ctx: _Context) -> set[str]:
    return {
        r[len("refs/tags/") :]
        for r in ctx.repo.references
        if r.startswith("refs/tags/") and decide.in_pattern(r[len("refs/tags/") :], ctx.settings)
    }


def _fold(ctx: _Context, key: MemoKey, tip: str, last_applied: str | None) -> decide.ChainState:
    memo = ctx.approver.remembered(key)
    tag_signers = _tag_signers(ctx)
    state = decide.ChainState()
    new: list[str] | None = None
    if memo is not None and not tag_signers:
        memo_tip, memo_state = memo
        if memo_tip == tip:
            return memo_state
        chain = history.first_parents_until(ctx.repo, tip, memo_tip, _FORWARD_LIMIT)
        if chain is not None:
            new, state = chain, memo_state  # the branch moved forward: continue the fold
    if new is None and last_applied is not None:
        new = history.first_parents_until(ctx.repo, tip, last_applied, _FORWARD_LIMIT)
    if new is None:  # first start, or far behind: a revwalk (it marks all hidden history)
        new = list(history.first_parent_chain(ctx.repo, tip, last_applied))
    for sha in reversed(new):
        facts = history.commit_facts(ctx.repo, sha, ctx.facts)
        if decide.needs_signature(facts, ctx.settings):
            sig = history.commit_signature(ctx.repo, sha, ctx.verifier)
            facts = replace(facts, signature=sig)
        state = decide.advance(state, facts, ctx.settings, tag_signers.get(sha, frozenset()))
    ctx.approver.remember(key, tip, state)
    return state


def _evaluate_tags(ctx: _Context, last_applied: str | None) -> ApprovalResult:
    if last_applied is not None and not history.has_commit(ctx.repo, last_applied):
        log.warning("applied revision %s is not in the repository", last_applied)
    tags = history.tag_facts(ctx.repo, ctx.verifier, _wanted_tags(ctx), ctx.facts)
    groups, refused, audit = decide.group_tags(tags, ctx.settings)
    # Newest first, stopping at the first usable tagged commit: older tags are superseded,
    # and ancestry checks cost a history walk each (deploy tags pile up over the years).
    relations: dict[str, Relation] = {}
    commit_signers: dict[str, frozenset[str]] = {}
    considered: dict[str, decide.TagGroup] = {}
    for target in decide.newest_first(groups):
        considered[target] = groups[target]
        if ctx.settings.threshold > 1:
            sig = history.commit_signature(ctx.repo, target, ctx.verifier)
            if sig.valid and sig.signer:
                commit_signers[target] = frozenset([sig.signer])
        if not decide.enough_signers(
            groups[target], commit_signers.get(target, frozenset()), ctx.settings
        ):
            continue
        relations[target] = history.relation(ctx.repo, target, last_applied)
        if last_applied is None or relations[target] in ("same", "descendant"):
            break
    revision, approval, more_refused, more_audit = decide.decide_tags(
        considered, relations, commit_signers, ctx.settings, last_applied
    )
    return ApprovalResult(revision, approval, (*refused, *more_refused), (*audit, *more_audit))
