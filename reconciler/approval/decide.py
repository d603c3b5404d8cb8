"""Which revision is approved: pure decisions over commit and tag facts.

No I/O: ``history`` gathers the facts (pygit2), ``signatures`` verifies them (ssh-keygen,
gpg), and these functions decide. The rules are documented in docs/approval.md.

merged-pr is a fold over the protected branch's first-parent chain, oldest first
(``advance``), so a re-evaluation continues from the state at the last evaluated tip.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from reconciler.approval.settings import ApprovalSettings
from reconciler.approval.values import (
    ApprovalResult,
    AuditRecord,
    Change,
    CommitFacts,
    Refusal,
    Relation,
    TagFacts,
)
from reconciler.spec import JSON

_SHOWN_PATHS = 3


def _empty() -> Mapping[str, tuple[str | None, str | None]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ChainState:
    """Where the merged-pr fold stands after some commit of the first-parent chain.

    ``taint`` maps each fleet file changed by a refused commit to (the content it had when
    last approved, its content now); a path leaves ``taint`` when the two are equal again
    (a revert). While anything is tainted, no later commit is approved.
    """

    approved: str | None = None
    approval: Mapping[str, JSON] | None = None
    taint: Mapping[str, tuple[str | None, str | None]] = field(default_factory=_empty)
    blocker: str | None = None  # the first refused commit whose changes are still in effect
    refused: tuple[Refusal, ...] = ()
    audit: tuple[AuditRecord, ...] = ()  # refusals; an approval is recorded once, at the end
    approved_record: AuditRecord | None = None


def _json_list(items: Iterable[str]) -> list[JSON]:
    return [*items]


def describe_paths(paths: Sequence[str]) -> str:
    shown = ", ".join(paths[:_SHOWN_PATHS])
    more = len(paths) - _SHOWN_PATHS
    return f"{shown} and {more} more" if more > 0 else shown


def needs_signature(commit: CommitFacts, settings: ApprovalSettings) -> bool:
    """Whether deciding on ``commit`` needs its signature verified (merged-pr mode)."""
    if not commit.changes:
        return False
    return not commit.is_merge or settings.require_signed_merges or settings.threshold > 1


def in_pattern(tag_name: str, settings: ApprovalSettings) -> bool:
    return fnmatch.fnmatchcase(tag_name, settings.tag_pattern)


def _signers_needed(commit: CommitFacts, settings: ApprovalSettings) -> int:
    if not commit.is_merge or settings.require_signed_merges or settings.threshold > 1:
        return settings.threshold
    return 0  # an unsigned merge is the approval: the forge's branch protection is trusted


def _judge(
    commit: CommitFacts, tag_signers: frozenset[str], settings: ApprovalSettings
) -> tuple[bool, frozenset[str], str]:
    """(approved, signers, reason when not) for a commit that changes fleet files."""
    sig = commit.signature
    own = frozenset([sig.signer]) if sig is not None and sig.valid and sig.signer else frozenset()
    signers = own | tag_signers
    paths = describe_paths([c.path for c in commit.changes])
    why_sig = f" ({sig.detail})" if sig is not None and not sig.valid and sig.detail else ""
    if not commit.is_merge and not own:
        what = "the root commit adds" if not commit.parents else "changes"
        return (
            False,
            signers,
            f"Unapproved: {commit.sha} {what} {paths} without a merge"
            f" and without an allowed merge signer's signature{why_sig}",
        )
    if commit.is_merge and settings.require_signed_merges and not own:
        return (
            False,
            signers,
            f"Unapproved: merge {commit.sha} changes {paths} without a valid allowed signature"
            f" (requireSignedMerges){why_sig}",
        )
    needed = _signers_needed(commit, settings)
    if len(signers) < needed:
        return (
            False,
            signers,
            f"Unapproved: {commit.sha} changes {paths} with {len(signers)} of {needed} required"
            f" distinct signers ({', '.join(sorted(signers)) or 'none'})",
        )
    return True, signers, ""


def _update_taint(
    taint: Mapping[str, tuple[str | None, str | None]],
    changes: Iterable[Change],
    *,
    refused: bool,
) -> dict[str, tuple[str | None, str | None]]:
    out = dict(taint)
    for ch in changes:
        if ch.path in out:
            out[ch.path] = (out[ch.path][0], ch.new)
        elif refused:
            out[ch.path] = (ch.old, ch.new)
    return {p: (req, cur) for p, (req, cur) in out.items() if req != cur}


def advance(
    state: ChainState,
    commit: CommitFacts,
    settings: ApprovalSettings,
    tag_signers: frozenset[str] = frozenset(),
) -> ChainState:
    """The state after ``commit``, the next commit of the first-parent chain (merged-pr)."""
    if not commit.changes:
        return state  # touches no fleet file: neither approves nor refuses
    ok, signers, reason = _judge(commit, tag_signers, settings)
    paths = [c.path for c in commit.changes]
    if not ok:
        taint = _update_taint(state.taint, commit.changes, refused=True)
        details: dict[str, JSON] = {
            "paths": _json_list(paths),
            "summary": commit.summary,
            "signers": _json_list(sorted(signers)),
        }
        blocker = (state.blocker or commit.sha) if taint else None
        return _refused(replace(state, blocker=blocker), commit.sha, reason, taint, details)
    taint = _update_taint(state.taint, commit.changes, refused=False)
    if taint:
        blocker = state.blocker or "an unapproved commit"
        reason = (
            f"Not approved: {commit.sha} builds on unapproved {blocker}, whose changes to "
            f"{describe_paths(sorted(taint))} are still in effect; revert them through a "
            "merged pull request"
        )
        details = {"paths": _json_list(paths), "blocker": blocker}
        return _refused(state, commit.sha, reason, taint, details)
    return _approved(state, commit, signers, paths)


def _refused(
    state: ChainState,
    sha: str,
    reason: str,
    taint: dict[str, tuple[str | None, str | None]],
    details: dict[str, JSON],
) -> ChainState:
    return replace(
        state,
        taint=MappingProxyType(taint),
        refused=(*state.refused, Refusal(sha, reason)),
        audit=(*state.audit, AuditRecord("refused", reason, sha, details)),
    )


def _approved(
    state: ChainState, commit: CommitFacts, signers: frozenset[str], paths: list[str]
) -> ChainState:
    kind = "merge" if commit.is_merge else "signed-commit"
    approval: dict[str, JSON] = {
        "kind": kind,
        "ref": commit.sha,
        "signers": _json_list(sorted(signers)),
    }
    message = (
        f"Approved: {kind} {commit.sha} ({commit.summary}) changes {describe_paths(paths)}"
        + (f"; signed by {', '.join(sorted(signers))}" if signers else "")
    )
    return replace(
        state,
        approved=commit.sha,
        approval=approval,
        approved_record=AuditRecord(
            "approved",
            message,
            commit.sha,
            {**approval, "paths": _json_list(paths), "summary": commit.summary},
        ),
        taint=MappingProxyType({}),
        blocker=None,
    )


def chain_result(state: ChainState, last_applied: str | None) -> ApprovalResult:
    """The newest approved commit; earlier approvals it supersedes are not audited again."""
    if state.approved is None or state.approved_record is None:
        return ApprovalResult(last_applied, None, state.refused, state.audit)
    audit = (*state.audit, state.approved_record)
    return ApprovalResult(state.approved, state.approval, state.refused, audit)


def rollback_refusal(branch: str, tip: str | None, last_applied: str) -> ApprovalResult:
    """The branch no longer contains the applied revision: keep it, report an attack."""
    where = f"{branch} at {tip}" if tip else f"{branch} (missing)"
    reason = (
        f"Refused: {where} does not contain the applied revision {last_applied}; history "
        "moved backwards (possible rollback attack). The applied revision stays in force; "
        "a real rollback is a new, approved commit."
    )
    rev = tip or last_applied
    return ApprovalResult(
        last_applied,
        None,
        (Refusal(rev, reason),),
        (AuditRecord("rollback", reason, rev, {"branch": branch, "applied": last_applied}),),
    )


def _baseline_approval(baseline: str) -> tuple[dict[str, JSON], AuditRecord]:
    approval: dict[str, JSON] = {"kind": "baseline", "ref": baseline, "signers": []}
    record = AuditRecord(
        "approved",
        f"Approved: baseline {baseline} (approval.baseline in the reconciler config: it and "
        "its ancestors are trusted as they are)",
        baseline,
        dict(approval),
    )
    return approval, record


def baseline_state(baseline: str) -> ChainState:
    """The merged-pr fold before the first commit after the operator-pinned baseline."""
    approval, record = _baseline_approval(baseline)
    return ChainState(approved=baseline, approval=approval, approved_record=record)


def baseline_result(baseline: str, tags: ApprovalResult) -> ApprovalResult:
    """signed-tag mode with no approving tag after the baseline: the baseline itself."""
    approval, record = _baseline_approval(baseline)
    return ApprovalResult(baseline, approval, tags.refused, (*tags.audit, record))


def baseline_refusal(
    branch: str, tip: str | None, baseline: str, last_applied: str | None
) -> ApprovalResult:
    """The protected branch does not contain the pinned baseline: nothing new is approved."""
    where = f"{branch} at {tip}" if tip else f"{branch} (missing)"
    reason = (
        f"Refused: {where} does not contain the baseline {baseline} (approval.baseline); "
        "history moved backwards or was rewritten (possible rollback attack). Nothing new is "
        "approved until the branch contains it again or the operator pins another baseline."
    )
    rev = tip or baseline
    return ApprovalResult(
        last_applied,
        None,
        (Refusal(rev, reason),),
        (AuditRecord("rollback", reason, rev, {"branch": branch, "baseline": baseline}),),
    )


@dataclass(frozen=True)
class TagGroup:
    """The valid approving tags on one commit."""

    target: str
    tags: tuple[str, ...]
    signers: frozenset[str]
    time: int


def group_tags(
    tags: Sequence[TagFacts], settings: ApprovalSettings
) -> tuple[dict[str, TagGroup], list[Refusal], list[AuditRecord]]:
    """Valid in-pattern tags grouped by commit; every other tag is ignored and reported."""
    groups: dict[str, TagGroup] = {}
    refused: list[Refusal] = []
    audit: list[AuditRecord] = []
    for tag in sorted(tags, key=lambda t: t.name):
        if not in_pattern(tag.name, settings):
            audit.append(
                AuditRecord(
                    "ignored",
                    f"tag {tag.name} is outside the pattern {settings.tag_pattern!r}",
                    tag.target,
                    {"tag": tag.name},
                )
            )
            continue
        if tag.annotated and tag.tagged_as != tag.name:
            # The signature covers the name inside the object, not the ref: a tag signed
            # as "test/experiment" placed at refs/tags/deploy/exp approves nothing.
            reason = (
                f"Ignored: tag {tag.name} holds a tag object signed as {tag.tagged_as!r}"
                " (the name inside a signed tag must equal its ref name)"
            )
            refused.append(Refusal(tag.target or tag.tag_sha or tag.name, reason))
            audit.append(
                AuditRecord(
                    "mismatch",
                    reason,
                    tag.target,
                    {"tag": tag.name, "taggedAs": tag.tagged_as, "object": tag.tag_sha},
                )
            )
            continue
        why = ""
        if not tag.annotated:
            why = "is a lightweight tag (an annotated, signed tag is needed)"
        elif tag.target is None:
            why = "does not point at a commit"
        elif tag.signature is None or tag.signature.format == "none":
            why = "is not signed"
        elif not tag.signature.valid:
            why = f"has no valid allowed signature ({tag.signature.detail})"
        if why:
            reason = f"Ignored: tag {tag.name} {why}"
            refused.append(Refusal(tag.target or tag.tag_sha or tag.name, reason))
            audit.append(AuditRecord("ignored", reason, tag.target, {"tag": tag.name}))
            continue
        assert tag.target is not None and tag.signature is not None
        signer = tag.signature.signer or tag.signature.key or "unknown"
        cur = groups.get(tag.target)
        groups[tag.target] = TagGroup(
            target=tag.target,
            tags=(*(cur.tags if cur else ()), tag.name),
            signers=(cur.signers if cur else frozenset()) | {signer},
            time=max(cur.time if cur else 0, tag.time or 0),
        )
    return groups, refused, audit


def newest_first(groups: Mapping[str, TagGroup]) -> list[str]:
    """Tagged commits by their newest tag's tagger time, newest first (then by tag name)."""
    return sorted(groups, key=lambda t: (groups[t].time, groups[t].tags), reverse=True)


def enough_signers(
    group: TagGroup, commit_signers: frozenset[str], settings: ApprovalSettings
) -> bool:
    return len(group.signers | commit_signers) >= settings.threshold


def decide_tags(
    groups: Mapping[str, TagGroup],
    relations: Mapping[str, Relation],
    commit_signers: Mapping[str, frozenset[str]],
    settings: ApprovalSettings,
    last_applied: str | None,
) -> tuple[str | None, Mapping[str, JSON] | None, list[Refusal], list[AuditRecord]]:
    """The newest (by tagger time) tagged commit with enough signers that does not go back.

    ``relations[target]`` says how a tagged commit relates to ``last_applied``;
    ``commit_signers`` holds the valid signers of the tagged commits themselves (a signed
    merge plus a signed tag count as two).

    Long because it is one fold over the tag groups, newest first, with its refusals;
    splitting it would pass the same five accumulators around.
    """
    refused: list[Refusal] = []
    audit: list[AuditRecord] = []
    candidates: list[TagGroup] = []
    for target in sorted(groups, key=lambda t: (groups[t].time, groups[t].tags)):
        g = groups[target]
        signers = g.signers | commit_signers.get(target, frozenset())
        names = ", ".join(g.tags)
        if len(signers) < settings.threshold:
            reason = (
                f"Unapproved: {target} (tag {names}) has {len(signers)} of "
                f"{settings.threshold} required distinct signers ({', '.join(sorted(signers))})"
            )
            refused.append(Refusal(target, reason))
            audit.append(AuditRecord("refused", reason, target, {"tags": _json_list(g.tags)}))
            continue
        rel = relations.get(target, "unknown")
        if last_applied is not None and rel in ("ancestor", "diverged", "unknown"):
            what = "an ancestor of" if rel == "ancestor" else "a commit that does not contain"
            reason = (
                f"Refused: tag {names} points at {target}, {what} the applied revision "
                f"{last_applied}; history moved backwards (possible rollback attack)"
            )
            refused.append(Refusal(target, reason))
            audit.append(
                AuditRecord(
                    "rollback",
                    reason,
                    target,
                    {"tags": _json_list(g.tags), "applied": last_applied},
                )
            )
            continue
        candidates.append(replace(g, signers=signers))
    if not candidates:
        return last_applied, None, refused, audit
    best = candidates[-1]  # sorted by tagger time, then name
    approval: dict[str, JSON] = {
        "kind": "tag",
        "ref": f"refs/tags/{best.tags[-1]}",
        "signers": _json_list(sorted(best.signers)),
    }
    audit.append(
        AuditRecord(
            "approved",
            f"Approved: {best.target} by tag {', '.join(best.tags)}; signed by "
            f"{', '.join(sorted(best.signers))}",
            best.target,
            {**approval, "tags": _json_list(best.tags)},
        )
    )
    return best.target, approval, refused, audit
