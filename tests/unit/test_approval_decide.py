"""The pure approval decisions, table-driven over commit and tag facts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reconciler.approval.decide import (
    ChainState,
    advance,
    baseline_refusal,
    baseline_state,
    chain_result,
    decide_tags,
    group_tags,
    needs_signature,
    rollback_refusal,
)
from reconciler.approval.signatures import signature_format, split_tag
from reconciler.approval.values import Change, CommitFacts, Relation, Signature, TagFacts
from reconciler.config import ApprovalSettings

MERGE_PR = ApprovalSettings()
SIGNED_MERGES = ApprovalSettings(require_signed_merges=True)
TWO = ApprovalSettings(threshold=2)
TAGS = ApprovalSettings(mode="signed-tag")
TAGS2 = ApprovalSettings(mode="signed-tag", threshold=2)
GOOD = Signature("ssh", True, signer="forge@x")
BAD = Signature("ssh", False, detail="signing key is not in allowed_signers")


def c(
    sha: str,
    *,
    merge: bool = False,
    changes: dict[str, tuple[str | None, str | None]] | None = None,
    sig: Signature | None = None,
) -> CommitFacts:
    parents = ("p1", "p2") if merge else ("p1",)
    ch = tuple(Change(p, o, n) for p, (o, n) in sorted((changes or {}).items()))
    return CommitFacts(sha, parents, 0, sha, ch, sig)


REL = {"releases/a/1.0.0.yaml": (None, "b1")}
REL2 = {"releases/a/2.0.0.yaml": (None, "b2")}
UNDO_REL2 = {"releases/a/2.0.0.yaml": ("b2", None)}
README: dict[str, tuple[str | None, str | None]] = {}

# (name, settings, commits, expected approved sha, expected refused shas)
CHAINS = [
    ("merge approves", MERGE_PR, [c("m1", merge=True, changes=REL)], "m1", []),
    ("direct push refused", MERGE_PR, [c("d1", changes=REL)], None, ["d1"]),
    ("readme-only is neutral", MERGE_PR, [c("m1", merge=True, changes=REL), c("r1")], "m1", []),
    (
        "squash signed by merge signer",
        MERGE_PR,
        [c("s1", changes=REL, sig=GOOD)],
        "s1",
        [],
    ),
    ("squash signed by unknown key", MERGE_PR, [c("s1", changes=REL, sig=BAD)], None, ["s1"]),
    (
        "merge after a direct push is blocked",
        MERGE_PR,
        [c("m1", merge=True, changes=REL), c("d1", changes=REL2), c("m2", merge=True, changes=REL)],
        "m1",
        ["d1", "m2"],
    ),
    (
        "a merged revert recovers",
        MERGE_PR,
        [
            c("m1", merge=True, changes=REL),
            c("d1", changes=REL2),
            c("m2", merge=True, changes=UNDO_REL2),
        ],
        "m2",
        ["d1"],
    ),
    (
        "a direct revert is still refused, the next merge approves",
        MERGE_PR,
        [
            c("m1", merge=True, changes=REL),
            c("d1", changes=REL2),
            c("d2", changes=UNDO_REL2),
            c("m3", merge=True, changes={"nodes/n.yaml": (None, "n1")}),
        ],
        "m3",
        ["d1", "d2"],
    ),
    (
        "unsigned merge, signed merges required",
        SIGNED_MERGES,
        [c("m1", merge=True, changes=REL)],
        None,
        ["m1"],
    ),
    (
        "signed merge, signed merges required",
        SIGNED_MERGES,
        [c("m1", merge=True, changes=REL, sig=GOOD)],
        "m1",
        [],
    ),
    ("threshold 2, one signature", TWO, [c("m1", merge=True, changes=REL, sig=GOOD)], None, ["m1"]),
]


@pytest.mark.parametrize(
    ("settings", "commits", "approved", "refused"),
    [case[1:] for case in CHAINS],
    ids=[case[0] for case in CHAINS],
)
def test_merged_pr_fold(
    settings: ApprovalSettings,
    commits: list[CommitFacts],
    approved: str | None,
    refused: list[str],
) -> None:
    state = ChainState()
    for commit in commits:
        state = advance(state, commit, settings)
    result = chain_result(state, None)
    assert result.revision == approved
    assert [r.revision for r in result.refused] == refused
    assert (result.approval is not None) == (approved is not None)


def test_threshold_counts_tag_signers_once_per_signer() -> None:
    merge = c("m1", merge=True, changes=REL, sig=GOOD)
    same = advance(ChainState(), merge, TWO, frozenset({"forge@x"}))
    assert chain_result(same, None).revision is None
    two = advance(ChainState(), merge, TWO, frozenset({"alice@x"}))
    result = chain_result(two, None)
    assert result.revision == "m1"
    assert result.approval == {"kind": "merge", "ref": "m1", "signers": ["alice@x", "forge@x"]}


def test_unapproved_message_names_sha_and_paths() -> None:
    state = advance(ChainState(), c("d1", changes=REL), MERGE_PR)
    assert state.refused[0].reason.startswith(
        "Unapproved: d1 changes releases/a/1.0.0.yaml without a merge"
    )


@pytest.mark.parametrize(
    ("commit", "settings", "needed"),
    [
        (c("m", merge=True, changes=REL), MERGE_PR, False),
        (c("m", merge=True, changes=REL), SIGNED_MERGES, True),
        (c("m", merge=True, changes=REL), TWO, True),
        (c("d", changes=REL), MERGE_PR, True),
        (c("r"), MERGE_PR, False),
    ],
)
def test_needs_signature(commit: CommitFacts, settings: ApprovalSettings, needed: bool) -> None:
    assert needs_signature(commit, settings) is needed


def test_rollback_refusal_keeps_applied() -> None:
    result = rollback_refusal("main", "old", "applied")
    assert result.revision == "applied" and result.approval is None
    assert "possible rollback attack" in result.refused[0].reason
    assert result.audit[0].kind == "rollback"


def tag(
    name: str, target: str, *, time: int = 0, sig: Signature | None = GOOD, annotated: bool = True
) -> TagFacts:
    return TagFacts(name, target, annotated, time, sig if annotated else None, f"t-{name}", name)


ALICE = Signature("ssh", True, signer="alice@x")
CAROL = Signature("openpgp", True, signer="carol@x", key="FPR")

# (name, settings, tags, relations, last applied, expected revision, refused count)
TAG_CASES: list[
    tuple[str, ApprovalSettings, list[TagFacts], dict[str, Relation], str | None, str | None, int]
] = [
    ("one valid tag", TAGS, [tag("deploy/1", "c1")], {}, None, "c1", 0),
    ("unsigned tag", TAGS, [tag("deploy/1", "c1", sig=Signature.unsigned())], {}, None, None, 1),
    ("bad signature", TAGS, [tag("deploy/1", "c1", sig=BAD)], {}, None, None, 1),
    ("lightweight", TAGS, [tag("deploy/1", "c1", annotated=False)], {}, None, None, 1),
    ("outside pattern", TAGS, [tag("v1", "c1")], {}, None, None, 0),
    (
        "signed as another name (mismatch)",
        TAGS,
        [replace(tag("deploy/exp", "c1"), tagged_as="test/experiment")],
        {},
        None,
        None,
        1,
    ),
    (
        "newest by tagger time",
        TAGS,
        [tag("deploy/a", "c1", time=5), tag("deploy/b", "c2", time=3)],
        {},
        None,
        "c1",
        0,
    ),
    (
        "ancestor of applied is a rollback",
        TAGS,
        [tag("deploy/a", "old", time=9), tag("deploy/b", "cur", time=3)],
        {"old": "ancestor", "cur": "same"},
        "cur",
        "cur",
        1,
    ),
    ("threshold 2, one signer", TAGS2, [tag("deploy/a", "c1")], {}, None, None, 1),
    (
        "threshold 2, same signer twice",
        TAGS2,
        [tag("deploy/a", "c1"), tag("deploy/b", "c1")],
        {},
        None,
        None,
        1,
    ),
    (
        "threshold 2, two signers",
        TAGS2,
        [tag("deploy/a", "c1"), tag("deploy/b", "c1", sig=CAROL)],
        {},
        None,
        "c1",
        0,
    ),
]


@pytest.mark.parametrize(
    ("settings", "tags", "relations", "last", "revision", "n_refused"),
    [case[1:] for case in TAG_CASES],
    ids=[case[0] for case in TAG_CASES],
)
def test_signed_tag_decision(
    settings: ApprovalSettings,
    tags: list[TagFacts],
    relations: dict[str, Relation],
    last: str | None,
    revision: str | None,
    n_refused: int,
) -> None:
    groups, refused, _ = group_tags(tags, settings)
    rels: dict[str, Relation] = {t: relations.get(t, "descendant") for t in groups}
    rev, approval, more, _ = decide_tags(groups, rels, {}, settings, last)
    assert rev == revision
    assert len(refused) + len(more) == n_refused
    if revision is not None and revision != last:
        assert approval is not None and approval["kind"] == "tag"


def test_signed_merge_plus_signed_tag_meet_threshold() -> None:
    groups, _, _ = group_tags([tag("deploy/a", "c1", sig=ALICE)], TAGS2)
    rev, approval, _, _ = decide_tags(
        groups, {"c1": "descendant"}, {"c1": frozenset({"forge@x"})}, TAGS2, None
    )
    assert rev == "c1" and approval is not None
    assert approval["signers"] == ["alice@x", "forge@x"]


SIGNED_TAG = (
    b"object 1234\ntype commit\ntag deploy/1\ntagger A <a@x> 1 +0000\n\nmsg\n"
    b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
)


@pytest.mark.parametrize(
    ("raw", "payload_end"),
    [
        (SIGNED_TAG, b"msg\n"),
        (
            b"object 1\n\n-----BEGIN quoted in text\nmsg\n-----BEGIN PGP SIGNATURE-----\nx\n",
            b"msg\n",
        ),
    ],
)
def test_split_tag_at_last_begin_line(raw: bytes, payload_end: bytes) -> None:
    parts = split_tag(raw)
    assert parts is not None
    payload, signature = parts
    assert payload.endswith(payload_end) and payload + signature == raw
    assert signature.startswith(b"-----BEGIN ")


def test_split_unsigned_tag_and_formats() -> None:
    assert split_tag(b"object 1\ntype commit\n\nno signature\n") is None
    assert signature_format(b"-----BEGIN SSH SIGNATURE-----") == "ssh"
    assert signature_format(b"-----BEGIN PGP SIGNATURE-----") == "openpgp"
    assert signature_format(b"-----BEGIN X509-----") == "unknown"


def test_neutral_commit_does_not_change_state() -> None:
    state = advance(ChainState(), c("m1", merge=True, changes=REL), MERGE_PR)
    assert advance(state, c("r1"), MERGE_PR) is state


def test_baseline_state_approves_the_baseline_until_a_later_commit() -> None:
    state = baseline_state("base")
    result = chain_result(state, None)
    assert result.revision == "base"
    assert result.approval == {"kind": "baseline", "ref": "base", "signers": []}
    assert [a.kind for a in result.audit] == ["approved"]
    later = CommitFacts("m1", ("base", "topic"), 1, "merge", (Change("nodes/a.yaml", None, "x"),))
    after = chain_result(advance(state, later, ApprovalSettings()), None)
    assert after.revision == "m1" and after.approval is not None
    assert after.approval["kind"] == "merge"


def test_branch_without_the_baseline_refuses_everything_new() -> None:
    result = baseline_refusal("main", "tip", "base", "applied")
    assert result.revision == "applied" and result.approval is None
    assert result.audit[0].kind == "rollback"
    assert "does not contain the baseline base" in result.refused[0].reason
