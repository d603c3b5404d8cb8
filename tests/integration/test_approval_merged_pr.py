"""merged-pr approval on real git repos with real ssh-keygen/gpg signatures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.approval import ApprovalResult, evaluate
from reconciler.config import ApprovalSettings
from reconciler.revision import load_revision
from reconciler.source import GitSource
from tests.helpers.fleetfiles import basic_fleet, release
from tests.helpers.git import git
from tests.helpers.keys import Keys, SignedRepo, signed_tag


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> SignedRepo:
    return SignedRepo(tmp_path / "fleet", keys)


def settings(keys: Keys, **kw: object) -> ApprovalSettings:
    base = ApprovalSettings(allowed_signers=keys.allowed_signers, gpg_keyring=keys.gpg_keyring)
    return replace(base, **kw)  # type: ignore[arg-type]


def judge(
    repo: SignedRepo, s: ApprovalSettings, last: str | None = None, *, state: Path | None = None
) -> ApprovalResult:
    state_dir = state or repo.path.parent / "state"
    return evaluate(GitSource(str(repo.path), state_dir, "main"), s, last, state_dir)


def test_merge_approved_and_direct_push_refused(repo: SignedRepo, keys: Keys) -> None:
    merge = repo.merge(basic_fleet(), "fleet")
    direct = repo.direct({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    result = judge(repo, settings(keys))
    assert result.revision == merge
    assert result.approval == {"kind": "merge", "ref": merge, "signers": []}
    assert [r.revision for r in result.refused] == [direct]
    assert result.refused[0].reason.startswith(
        f"Unapproved: {direct} changes releases/infer/1.1.0.yaml without a merge"
    )
    assert {a.kind for a in result.audit} == {"approved", "refused"}


def test_readme_commit_neither_approves_nor_refuses(repo: SignedRepo, keys: Keys) -> None:
    merge = repo.merge(basic_fleet())
    repo.direct({"README.md": "more words\n"})
    result = judge(repo, settings(keys))
    assert result.revision == merge and result.refused == ()


def test_merge_after_direct_push_blocked_until_reverted(repo: SignedRepo, keys: Keys) -> None:
    first = repo.merge(basic_fleet())
    direct = repo.direct({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    later = repo.merge(
        {"nodes/gpu-2.yaml": basic_fleet()["nodes/gpu-1.yaml"].replace("gpu-1", "gpu-2")}
    )
    blocked = judge(repo, settings(keys))
    assert blocked.revision == first
    assert [r.revision for r in blocked.refused] == [direct, later]
    assert f"builds on unapproved {direct}" in blocked.refused[1].reason
    revert = repo.merge({}, "revert the direct push", remove=("releases/infer/1.1.0.yaml",))
    recovered = judge(repo, settings(keys))
    assert recovered.revision == revert
    assert recovered.approval is not None and recovered.approval["kind"] == "merge"


def test_squash_commit_approved_only_with_merge_signer(repo: SignedRepo, keys: Keys) -> None:
    base = repo.merge(basic_fleet())
    squash = repo.signed({"releases/infer/1.1.0.yaml": release(version="1.1.0")}, "forge")
    ok = judge(repo, settings(keys))
    assert ok.revision == squash
    assert ok.approval == {"kind": "signed-commit", "ref": squash, "signers": ["forge@fleet.test"]}
    bad = repo.signed({"releases/infer/1.2.0.yaml": release(version="1.2.0")}, "mallory")
    refused = judge(repo, settings(keys), base)
    assert refused.revision == squash
    assert [r.revision for r in refused.refused] == [bad]
    assert "not in allowed_signers" in refused.refused[0].reason


def test_openpgp_signed_squash_approved_and_unknown_key_refused(
    repo: SignedRepo, keys: Keys
) -> None:
    repo.merge(basic_fleet())
    good = repo.signed({"releases/infer/1.1.0.yaml": release(version="1.1.0")}, "carol")
    assert judge(repo, settings(keys)).approval == {
        "kind": "signed-commit",
        "ref": good,
        "signers": ["carol@fleet.test"],
    }
    bad = repo.signed({"releases/infer/1.2.0.yaml": release(version="1.2.0")}, "eve")
    result = judge(repo, settings(keys))
    assert result.revision == good and result.refused[0].revision == bad


def test_require_signed_merges(repo: SignedRepo, keys: Keys) -> None:
    unsigned = repo.merge(basic_fleet())
    s = settings(keys, require_signed_merges=True)
    first = judge(repo, s)
    assert first.revision is None
    assert (
        "requireSignedMerges" in first.refused[0].reason and first.refused[0].revision == unsigned
    )
    signed = repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")}, signer="forge")
    # the unsigned merge's files are still in effect: still blocked
    assert judge(repo, s).revision is None
    assert signed in [r.revision for r in judge(repo, s).refused]


def test_signed_merge_approved_with_require_signed_merges(repo: SignedRepo, keys: Keys) -> None:
    signed = repo.merge(basic_fleet(), signer="alice")
    result = judge(repo, settings(keys, require_signed_merges=True))
    assert result.approval == {"kind": "merge", "ref": signed, "signers": ["alice@fleet.test"]}


def test_root_commit_with_fleet_files_needs_a_signature(tmp_path: Path, keys: Keys) -> None:
    from tests.helpers.fleetfiles import write_tree
    from tests.helpers.keys import signed_commit

    for who, approved in ((None, False), ("forge", True)):
        path = tmp_path / f"root-{who}"
        git(tmp_path, "init", "-q", "--initial-branch=main", str(path))
        write_tree(path, basic_fleet())
        git(path, "add", "-A")
        if who is None:
            git(path, "commit", "-q", "-m", "import")
        else:
            signed_commit(path, keys, who, "import")
        sha = git(path, "rev-parse", "HEAD").stdout.strip()
        state = tmp_path / f"state-{who}"
        result = evaluate(GitSource(str(path), state, "main"), settings(keys), None, state)
        assert (result.revision == sha) is approved
        if not approved:
            assert "the root commit adds" in result.refused[0].reason


def test_force_push_rewind_refused_and_applied_kept(repo: SignedRepo, keys: Keys) -> None:
    first = repo.merge(basic_fleet())
    second = repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    assert judge(repo, settings(keys), first).revision == second
    git(repo.path, "reset", "-q", "--hard", first)  # the branch moves back
    result = judge(repo, settings(keys), second)
    assert result.revision == second and result.approval is None
    assert "possible rollback attack" in result.refused[0].reason
    assert result.audit[0].kind == "rollback"
    # a rewritten history that never contained the applied revision is refused the same way
    repo.merge({"releases/infer/2.0.0.yaml": release(version="2.0.0")})
    again = judge(repo, settings(keys), second)
    assert again.revision == second and "rollback" in again.refused[0].reason


def test_incremental_walk_from_applied_revision(repo: SignedRepo, keys: Keys) -> None:
    repo.merge(basic_fleet())
    direct = repo.direct({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    revert = repo.merge({}, "revert", remove=("releases/infer/1.1.0.yaml",))
    # the applied revision is after the refused commit: it is not judged again
    nxt = repo.merge({"releases/infer/1.2.0.yaml": release(version="1.2.0")})
    result = judge(repo, settings(keys), revert)
    assert result.revision == nxt and result.refused == ()
    assert direct not in {a.revision for a in result.audit}
    # nothing new: the applied revision stays, with no new approval
    same = judge(repo, settings(keys), nxt)
    assert same.revision == nxt and same.approval is None and same.refused == ()


def test_merged_but_invalid_revision_is_not_loadable(repo: SignedRepo, keys: Keys) -> None:
    good = repo.merge(basic_fleet())
    bad = repo.merge({"releases/infer/1.1.0.yaml": "apiVersion: fleetkeeper/v1\nkind: Release\n"})
    result = judge(repo, settings(keys))
    assert result.revision == bad  # approved ...
    source = GitSource(str(repo.path), repo.path.parent / "state", "main")
    loaded = load_revision(source.repository(), bad)
    assert loaded.spec is None and loaded.violations  # ... but invalid: the loop keeps `good`
    assert any(v.path == "releases/infer/1.1.0.yaml" for v in loaded.violations)
    kept = load_revision(source.repository(), good)
    assert kept.spec is not None and [d.version for d in kept.spec.deployables] == ["1.0.0"]


def test_threshold_two_needs_two_distinct_signers(repo: SignedRepo, keys: Keys) -> None:
    repo.merge(basic_fleet(), signer="forge")
    s = settings(keys, threshold=2)
    one = judge(repo, s)
    assert one.revision is None and "1 of 2 required" in one.refused[0].reason
    signed_tag(repo.path, keys, "forge", "deploy/same-signer")
    assert judge(repo, s).revision is None  # the same signer twice is one signer
    signed_tag(repo.path, keys, "alice", "deploy/second")
    two = judge(repo, s)
    assert two.revision == repo.head()
    assert two.approval is not None
    assert two.approval["signers"] == ["alice@fleet.test", "forge@fleet.test"]
