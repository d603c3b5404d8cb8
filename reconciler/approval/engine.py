"""Wiring: gather facts from the source, verify signatures, fold them through ``decide``.

An ``Approver`` (one per reconciler, built in ``reconciler.service``) keeps, per
(repository, branch, settings, pinned keys, where judging starts), the fold state at the
last evaluated tip, so a re-evaluation walks only the new commits; and the Git facts it
read (``history.FactCache``). ``evaluate`` is a one-off evaluation that keeps nothing.

Judging starts at the last applied revision, else at ``approval.baseline`` (the operator's
pinned commit: it and its ancestors are trusted as they are), else at the root commit.
Signatures are judged with the keys as they were when the reconciler first observed each
object (``Observations``, kept in the store by the reconcile loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import pygit2

from reconciler.approval import decide, history
from reconciler.approval.settings import ApprovalSettings
from reconciler.approval.signatures import Verifier
from reconciler.approval.values import ApprovalResult, Relation, TagFacts

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


class Observations(Protocol):
    """When the reconciler first observed git objects whose signatures it judges."""

    def first_seen(self, shas: Sequence[str]) -> Mapping[str, float]:
        """Each sha's first observation, recording ``now`` for those never seen before."""
        ...


@dataclass(frozen=True)
class SeenNow:
    """Observations that are not kept: every object is seen for the first time at ``now``
    (``fleetkeeper plan``, which writes nothing, judges as a first start would)."""

    now: float

    def first_seen(self, shas: Sequence[str]) -> Mapping[str, float]:
        return {sha: self.now for sha in shas}


class Approver:
    """Approval evaluation with what it keeps between calls (thread-safe)."""

    def __init__(self) -> None:
        self.facts = history.FactCache()
        self._memo: dict[MemoKey, tuple[str, decide.ChainState]] = {}
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    def remembered(self, key: MemoKey) -> tuple[str, decide.ChainState] | None:
        with self._lock:
            return self._memo.get(key)

    def remember(self, key: MemoKey, tip: str, state: decide.ChainState) -> None:
        with self._lock:
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[key] = (tip, state)

    def warn_once(self, message: str, *args: object) -> None:
        """A condition that holds on every pass is logged once, not on every pass."""
        text = message % args
        with self._lock:
            if text in self._warned:
                return
            self._warned.add(text)
        log.warning("%s", text)

    def evaluate(
        self,
        source: Source,
        settings: ApprovalSettings,
        last_applied: str | None,
        state_dir: Path,
        observations: Observations | None = None,
    ) -> ApprovalResult:
        """Which revision of the fleet repo is approved, with every decision as audit records.

        ``observations``: when each judged object was first seen (default: now, kept
        nowhere)."""
        repo = source.repository()
        seen = observations if observations is not None else SeenNow(time.time())
        ctx = _Context(repo, settings, verifier_for(settings, state_dir), self, seen)
        tip = source.tip()
        baseline = settings.baseline
        if baseline is not None and (tip is None or not _reaches(repo, tip, baseline)):
            return decide.baseline_refusal(source.branch, tip, baseline, last_applied)
        # judging starts at the applied revision once it contains the baseline
        from_baseline = baseline is not None and (
            last_applied is None or not _reaches(repo, last_applied, baseline)
        )
        start = baseline if from_baseline else last_applied
        if settings.mode == "signed-tag":
            result = _evaluate_tags(ctx, start)
            if result.approval is None and baseline is not None and from_baseline:
                return decide.baseline_result(baseline, result)
            return result
        if tip is None:
            if last_applied is None:
                return ApprovalResult(None, None, (), ())
            return decide.rollback_refusal(source.branch, None, last_applied)
        if last_applied is not None and not _reaches(repo, tip, last_applied):
            return decide.rollback_refusal(source.branch, tip, last_applied)
        key = (repo.path, source.branch, settings, ctx.verifier.digest, start, from_baseline)
        initial = decide.ChainState()
        if baseline is not None and from_baseline:
            initial = decide.baseline_state(baseline)
        state = _fold(ctx, key, tip, start, initial)
        return decide.chain_result(state, last_applied)


@dataclass(frozen=True)
class _Context:
    repo: pygit2.Repository
    settings: ApprovalSettings
    verifier: Verifier
    approver: Approver
    observations: Observations

    @property
    def facts(self) -> history.FactCache:
        return self.approver.facts


def verifier_for(settings: ApprovalSettings, state_dir: Path) -> Verifier:
    return Verifier(settings.allowed_signers, settings.gpg_keyring, state_dir / "gnupg")


def evaluate(
    source: Source,
    settings: ApprovalSettings,
    last_applied: str | None,
    state_dir: Path,
    observations: Observations | None = None,
) -> ApprovalResult:
    """A one-off evaluation (``fleetkeeper plan``, tests): nothing is kept for the next."""
    return Approver().evaluate(source, settings, last_applied, state_dir, observations)


def _reaches(repo: pygit2.Repository, tip: str, applied: str) -> bool:
    """``tip`` contains ``applied``: usually a few first parents away (cheap); else a graph
    query (a merge-base walk). False when either is not in the repository."""
    try:
        if history.first_parents_until(repo, tip, applied, _FORWARD_LIMIT) is not None:
            return True
    except (KeyError, ValueError):
        return False
    return history.contains(repo, tip, applied)


def _tag_signers(ctx: _Context) -> dict[str, frozenset[str]]:
    """Signers of valid approving tags per commit (merged-pr with threshold > 1)."""
    if ctx.settings.threshold <= 1:
        return {}
    tags = _tag_facts(ctx)
    groups, _, _ = decide.group_tags(tags, ctx.settings)
    return {t: g.signers for t, g in groups.items()}


def _tag_facts(ctx: _Context) -> list[TagFacts]:
    observe = ctx.observations.first_seen
    return history.tag_facts(ctx.repo, ctx.verifier, observe, _wanted_tags(ctx), ctx.facts)


def _wanted_tags(ctx: _Context) -> set[str]:
    return {
        r[len("refs/tags/") :]
        for r in ctx.repo.references
        if r.startswith("refs/tags/") and decide.in_pattern(r[len("refs/tags/") :], ctx.settings)
    }


def _fold(
    ctx: _Context, key: MemoKey, tip: str, start: str | None, initial: decide.ChainState
) -> decide.ChainState:
    memo = ctx.approver.remembered(key)
    tag_signers = _tag_signers(ctx)
    state = initial
    new: list[str] | None = None
    if memo is not None and not tag_signers:
        memo_tip, memo_state = memo
        if memo_tip == tip:
            return memo_state
        chain = history.first_parents_until(ctx.repo, tip, memo_tip, _FORWARD_LIMIT)
        if chain is not None:
            new, state = chain, memo_state  # the branch moved forward: continue the fold
    if new is None and start is not None:
        new = history.first_parents_until(ctx.repo, tip, start, _FORWARD_LIMIT)
    if new is None:  # first start, or far behind: a revwalk (it marks all hidden history)
        new = list(history.first_parent_chain(ctx.repo, tip, start))
    facts = [history.commit_facts(ctx.repo, sha, ctx.facts) for sha in reversed(new)]
    judged = [f.sha for f in facts if decide.needs_signature(f, ctx.settings)]
    # one store round trip for the whole walk; keys are judged at these moments
    seen = ctx.observations.first_seen(judged) if judged else {}
    for f in facts:
        if f.sha in seen:
            sig = history.commit_signature(ctx.repo, f.sha, ctx.verifier, seen[f.sha])
            f = replace(f, signature=sig)
        state = decide.advance(state, f, ctx.settings, tag_signers.get(f.sha, frozenset()))
    ctx.approver.remember(key, tip, state)
    return state


def _evaluate_tags(ctx: _Context, last_applied: str | None) -> ApprovalResult:
    if last_applied is not None and not history.has_commit(ctx.repo, last_applied):
        ctx.approver.warn_once("applied revision %s is not in the repository", last_applied)
    tags = _tag_facts(ctx)
    groups, refused, audit = decide.group_tags(tags, ctx.settings)
    # Newest first, stopping at the first usable tagged commit: older tags are superseded,
    # and ancestry checks cost a history walk each (deploy tags pile up over the years).
    relations: dict[str, Relation] = {}
    commit_signers: dict[str, frozenset[str]] = {}
    considered: dict[str, decide.TagGroup] = {}
    for target in decide.newest_first(groups):
        considered[target] = groups[target]
        if ctx.settings.threshold > 1:
            seen = ctx.observations.first_seen([target])
            sig = history.commit_signature(ctx.repo, target, ctx.verifier, seen[target])
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
