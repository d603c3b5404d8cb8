"""signed-tag approval: real annotated tags signed with ssh-keygen and gpg keys."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from reconciler.approval import ApprovalResult, evaluate
from reconciler.config import ApprovalSettings
from reconciler.source import GitSource
from tests.helpers.fleetfiles import basic_fleet, release
from tests.helpers.git import git
from tests.helpers.keys import Keys, SignedRepo, signed_tag

T0 = 1_760_000_000


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> SignedRepo:
    r = SignedRepo(tmp_path / "fleet", keys)
    r.merge(basic_fleet())
    return r


def tags_mode(keys: Keys, threshold: int = 1) -> ApprovalSettings:
    return ApprovalSettings(
        mode="signed-tag",
        threshold=threshold,
        allowed_signers=keys.allowed_signers,
        gpg_keyring=keys.gpg_keyring,
    )


def judge(repo: SignedRepo, s: ApprovalSettings, last: str | None = None) -> ApprovalResult:
    state = repo.path.parent / "state"
    return evaluate(GitSource(str(repo.path), state, "main"), s, last, state)


def at(offset: int) -> str:
    return f"@{T0 + offset} +0000"


@pytest.mark.parametrize("who", ["alice", "carol"])
def test_tag_signed_by_allowed_key_approves(repo: SignedRepo, keys: Keys, who: str) -> None:
    target = repo.head()
    signed_tag(repo.path, keys, who, "deploy/1")
    result = judge(repo, tags_mode(keys))
    assert result.revision == target
    assert result.approval == {
        "kind": "tag",
        "ref": "refs/tags/deploy/1",
        "signers": [f"{who}@fleet.test"],
    }


@pytest.mark.parametrize(
    ("who", "why"),
    [
        ("mallory", "not in allowed_signers"),
        ("expired", "not in allowed_signers (or not valid then)"),
        ("eve", "NO_PUBKEY"),
    ],
)
def test_tag_signed_by_other_key_refused(repo: SignedRepo, keys: Keys, who: str, why: str) -> None:
    signed_tag(repo.path, keys, who, "deploy/1")
    result = judge(repo, tags_mode(keys))
    assert result.revision is None and result.approval is None
    assert len(result.refused) == 1
    assert result.refused[0].reason.startswith(
        "Ignored: tag deploy/1 has no valid allowed signature"
    )
    assert why in result.refused[0].reason


@pytest.mark.parametrize(("who", "why"), [("alice", "does not verify"), ("carol", "BADSIG")])
def test_altered_tag_payload_refused(repo: SignedRepo, keys: Keys, who: str, why: str) -> None:
    signed_tag(repo.path, keys, who, "deploy/1")
    other = repo.direct({"releases/infer/9.9.9.yaml": release(version="9.9.9")})
    raw = git(repo.path, "cat-file", "tag", "deploy/1").stdout
    forged = raw.replace(raw.split("\n", 1)[0], f"object {other}", 1)  # retarget, keep the sig
    oid = subprocess.run(
        ["git", "hash-object", "-t", "tag", "-w", "--stdin"],
        cwd=repo.path,
        input=forged,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git(repo.path, "update-ref", "refs/tags/deploy/1", oid)
    result = judge(repo, tags_mode(keys))
    assert result.revision is None
    assert "has no valid allowed signature" in result.refused[0].reason
    assert why in result.refused[0].reason


def test_lightweight_and_out_of_pattern_tags_ignored(repo: SignedRepo, keys: Keys) -> None:
    git(repo.path, "tag", "deploy/light")
    signed_tag(repo.path, keys, "alice", "release/1")
    result = judge(repo, tags_mode(keys))
    assert result.revision is None
    assert [r.reason for r in result.refused] == [
        "Ignored: tag deploy/light is a lightweight tag (an annotated, signed tag is needed)"
    ]
    ignored = [a.message for a in result.audit if a.kind == "ignored"]
    assert "tag release/1 is outside the pattern 'deploy/*'" in ignored


def test_newest_tag_by_tagger_time_wins(repo: SignedRepo, keys: Keys) -> None:
    first = repo.head()
    second = repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    signed_tag(repo.path, keys, "alice", "deploy/b", second, date=at(10))
    signed_tag(repo.path, keys, "bob", "deploy/a", first, date=at(20))
    assert judge(repo, tags_mode(keys)).revision == first  # newer tag time, older commit
    signed_tag(repo.path, keys, "alice", "deploy/c", second, date=at(30))
    result = judge(repo, tags_mode(keys))
    assert result.revision == second
    assert result.approval is not None and result.approval["ref"] == "refs/tags/deploy/c"


def test_threshold_two(repo: SignedRepo, keys: Keys) -> None:
    target = repo.head()
    s = tags_mode(keys, threshold=2)
    signed_tag(repo.path, keys, "alice", "deploy/1")
    one = judge(repo, s)
    assert one.revision is None and "1 of 2 required" in one.refused[0].reason
    signed_tag(repo.path, keys, "alice", "deploy/1-again")
    assert judge(repo, s).revision is None  # the same signer twice
    signed_tag(repo.path, keys, "carol", "deploy/1-carol")
    two = judge(repo, s)
    assert two.revision == target
    assert two.approval is not None
    assert two.approval["signers"] == ["alice@fleet.test", "carol@fleet.test"]


def test_tag_on_older_commit_is_a_rollback(repo: SignedRepo, keys: Keys) -> None:
    old = repo.head()
    new = repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    signed_tag(repo.path, keys, "alice", "deploy/new", new, date=at(10))
    assert judge(repo, tags_mode(keys), old).revision == new
    signed_tag(repo.path, keys, "bob", "deploy/old-again", old, date=at(20))
    result = judge(repo, tags_mode(keys), new)
    assert result.revision == new
    rollback = [r for r in result.refused if r.revision == old]
    assert rollback and "possible rollback attack" in rollback[0].reason
    assert any(a.kind == "rollback" for a in result.audit)


def test_validity_window_is_judged_at_observation_not_tagger_time(
    repo: SignedRepo, keys: Keys
) -> None:
    # the "expired" key is allowed only before 2020: a tag claiming 2017 is judged now
    # (more in test_trust_signatures.py, with a store that saw it in 2017)
    signed_tag(repo.path, keys, "expired", "deploy/2017", date="@1500000000 +0000")
    result = judge(repo, tags_mode(keys))
    assert result.revision is None
    assert "not in allowed_signers (or not valid then)" in result.refused[0].reason
