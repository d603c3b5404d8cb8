"""Signature attacks (issue 10, points 2-4) with real ssh-keygen/gpg keys on real git repos.

- a tag object signed as one name and placed under another ref name approves nothing;
- a retired key cannot approve by backdating: keys are judged when the reconciler first
  observed the object (kept in the store), never at the date the object claims;
- ``approval.baseline``: old history signed by a since-expired forge key does not block,
  what comes after the baseline is judged at observation time, and a branch that lost the
  baseline is a rollback attack.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

import schema
from reconciler.approval import ApprovalResult, evaluate
from reconciler.cli import main
from reconciler.config import ApprovalSettings
from reconciler.loop.steps import StoreObservations
from reconciler.source import GitSource
from reconciler.store import Store, open_store
from tests.helpers.fleet import LoopRig, fleet_files, nodes_named, release_doc
from tests.helpers.fleetfiles import basic_fleet, node, release
from tests.helpers.git import git
from tests.helpers.keys import Keys, SignedRepo, signed_tag
from tests.helpers.keys import _git_signed as git_signed

BACKDATED = "@1500000000 +0000"  # 2017: inside the retired key's validity window
DAY = 86_400


@pytest.fixture
def repo(tmp_path: Path, keys: Keys) -> SignedRepo:
    return SignedRepo(tmp_path / "fleet", keys)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'state' / 'state.db'}")
    yield s
    s.close()


def judge(
    repo: Path,
    s: ApprovalSettings,
    store: Store,
    last: str | None = None,
    *,
    now: float | None = None,
) -> ApprovalResult:
    state = repo.parent / "state"
    seen = StoreObservations(store, time.time() if now is None else now)
    return evaluate(GitSource(str(repo), state, "main"), s, last, state, seen)


def ssh_settings(keys: Keys, **kw: object) -> ApprovalSettings:
    base = ApprovalSettings(allowed_signers=keys.allowed_signers, gpg_keyring=keys.gpg_keyring)
    return replace(base, **kw)  # type: ignore[arg-type]


# -- point 2: the name inside the tag object ------------------------------------------------


def test_tag_signed_under_another_name_is_a_mismatch(
    repo: SignedRepo, keys: Keys, store: Store
) -> None:
    repo.merge(basic_fleet())
    s = ssh_settings(keys, mode="signed-tag")
    obj = signed_tag(repo.path, keys, "alice", "test/experiment")  # "do not deploy"
    git(repo.path, "update-ref", "refs/tags/deploy/exp", obj)
    git(repo.path, "update-ref", "-d", "refs/tags/test/experiment")
    result = judge(repo.path, s, store)
    assert result.revision is None and result.approval is None
    [mismatch] = [a for a in result.audit if a.kind == "mismatch"]
    assert mismatch.message == (
        "Ignored: tag deploy/exp holds a tag object signed as 'test/experiment' "
        "(the name inside a signed tag must equal its ref name)"
    )
    assert mismatch.details["taggedAs"] == "test/experiment"
    # the same signer tagging under the right name is approved
    signed_tag(repo.path, keys, "alice", "deploy/1")
    assert judge(repo.path, s, store).revision == repo.head()


# -- point 3: backdating ---------------------------------------------------------------------


def test_retired_ssh_key_cannot_approve_a_backdated_commit(
    repo: SignedRepo, keys: Keys, store: Store
) -> None:
    base = repo.merge(basic_fleet())
    (repo.path / "releases/infer/1.1.0.yaml").write_text(release(version="1.1.0"))
    git(repo.path, "add", "-A")
    # "expired" is allowed only before 2020 (valid-before); the commit claims 2017
    git_signed(
        repo.path, keys, "expired", "commit", "-q", "--no-verify", "-S", "-m", "1.1.0",
        date=BACKDATED,
    )  # fmt: skip
    backdated = repo.head()
    result = judge(repo.path, ssh_settings(keys), store)
    assert result.revision == base
    assert [r.revision for r in result.refused] == [backdated]
    assert "not in allowed_signers (or not valid then)" in result.refused[0].reason
    # the store holds when it was first seen (now), not 2017
    assert store.observe([backdated], 0.0)[backdated] > time.time() - 600


def test_retired_ssh_key_cannot_approve_a_backdated_tag(
    repo: SignedRepo, keys: Keys, store: Store
) -> None:
    repo.merge(basic_fleet())
    target = repo.head()
    obj = signed_tag(repo.path, keys, "expired", "deploy/2017", date=BACKDATED)
    s = ssh_settings(keys, mode="signed-tag")
    result = judge(repo.path, s, store)
    assert result.revision is None
    assert "not in allowed_signers (or not valid then)" in result.refused[0].reason
    # a reconciler that really saw this tag in 2017 (its store says so) still honours it
    then = open_store(f"sqlite:///{repo.path.parent / 'then.db'}")
    try:
        then.observe([obj], 1_500_000_100.0)
        old = judge(repo.path, s, then)
    finally:
        then.close()
    assert old.revision == target
    assert old.approval is not None and old.approval["signers"] == ["expired@fleet.test"]


# -- point 4 (with point 3): a forge key that expired, and the baseline --------------------


@dataclass(frozen=True)
class ExpiredForge:
    """An OpenPGP key made ten days ago that expired after one day (like GitHub's web-flow
    key 4AEE18F83AFDEB23), and a gpg.program that signs at a moment of its validity."""

    home: Path
    keyring: Path  # the public key, as the operator pins it
    program: Path  # gpg with its clock set to while the key was valid
    made: int

    def sign_args(self) -> list[str]:
        return [
            "-c",
            "gpg.format=openpgp",
            "-c",
            f"gpg.program={self.program}",
            "-c",
            "user.signingkey=forge-gpg@fleet.test",
        ]


@pytest.fixture
def forge(tmp_path: Path) -> Iterator[ExpiredForge]:
    home = tmp_path / "forge-gnupg"
    home.mkdir(mode=0o700)
    made = int(time.time()) - 10 * DAY
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--passphrase", ""]
    subprocess.run(
        [*gpg, "--faked-system-time", f"{made}!", "--quick-gen-key",
         "Forge <forge-gpg@fleet.test>", "ed25519", "sign", "1d"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    keyring = tmp_path / "forge.asc"
    keyring.write_bytes(
        subprocess.run(
            ["gpg", "--batch", "--armor", "--export", "forge-gpg@fleet.test"],
            env=env, check=True, capture_output=True,
        ).stdout
    )  # fmt: skip
    program = tmp_path / "gpg-then"
    program.write_text(
        f'#!/bin/sh\nexec gpg --faked-system-time {made + 3600}! --homedir "{home}" "$@"\n'
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    yield ExpiredForge(home, keyring, program, made)
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def forge_commit(repo: SignedRepo, forge: ExpiredForge, files: dict[str, str], msg: str) -> str:
    """A squash merge signed by the forge while its key was valid (commit dated then)."""
    for rel, text in files.items():
        (repo.path / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo.path / rel).write_text(text)
    git(repo.path, "add", "-A")
    env = {
        **os.environ,
        "GNUPGHOME": str(forge.home),
        "GIT_COMMITTER_DATE": f"@{forge.made + 3600} +0000",
        "GIT_AUTHOR_DATE": f"@{forge.made + 3600} +0000",
    }
    proc = subprocess.run(
        ["git", *forge.sign_args(), "commit", "-q", "--no-verify", "-S", "-m", msg],
        cwd=repo.path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return repo.head()


def gpg_settings(forge: ExpiredForge, **kw: object) -> ApprovalSettings:
    return replace(ApprovalSettings(gpg_keyring=forge.keyring), **kw)  # type: ignore[arg-type]


def test_expired_forge_key_before_the_baseline_does_not_block(
    repo: SignedRepo, forge: ExpiredForge, store: Store
) -> None:
    old = forge_commit(repo, forge, basic_fleet(), "Squash merge #1 (2024)")
    # without a baseline, the whole history is judged now: EXPKEYSIG, nothing approved
    blocked = judge(repo.path, gpg_settings(forge), store)
    assert blocked.revision is None
    assert "OpenPGP signature not valid (EXPKEYSIG)" in blocked.refused[0].reason
    baseline = repo.merge({"nodes/gpu-2.yaml": node("gpu-2")}, "add gpu-2")
    s = gpg_settings(forge, baseline=baseline)
    pinned = judge(repo.path, s, store)
    assert pinned.revision == baseline and pinned.refused == ()
    assert pinned.approval == {"kind": "baseline", "ref": baseline, "signers": []}
    assert old in git(repo.path, "rev-list", baseline).stdout  # trusted as it is
    # after the baseline the forge key is judged when the commit is first observed: now,
    # when it has expired (the commit's own 10-day-old date does not matter)
    after = forge_commit(repo, forge, {"releases/infer/1.1.0.yaml": release(version="1.1.0")}, "#2")
    later = judge(repo.path, s, store)
    assert later.revision == baseline
    assert [r.revision for r in later.refused] == [after]
    assert "EXPKEYSIG" in later.refused[0].reason
    # a reconciler that observed it while the key was valid (its store says so) approves it
    then = open_store(f"sqlite:///{repo.path.parent / 'then.db'}")
    try:
        then.observe([after], float(forge.made + 7200))
        seen_then = judge(repo.path, s, then, baseline)
    finally:
        then.close()
    assert seen_then.revision == after
    assert seen_then.approval is not None and seen_then.approval["kind"] == "signed-commit"


def test_branch_without_the_baseline_is_a_rollback(
    repo: SignedRepo, keys: Keys, store: Store
) -> None:
    first = repo.merge(basic_fleet())
    baseline = repo.merge({"nodes/gpu-2.yaml": node("gpu-2")}, "add gpu-2")
    s = ssh_settings(keys, baseline=baseline)
    assert judge(repo.path, s, store).revision == baseline
    git(repo.path, "reset", "-q", "--hard", first)  # force-push to before the baseline
    repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")}, "rewritten history")
    result = judge(repo.path, s, store, baseline)
    assert result.revision == baseline and result.approval is None
    assert result.audit[0].kind == "rollback"
    assert f"does not contain the baseline {baseline}" in result.refused[0].reason


def test_signed_tag_mode_starts_at_the_baseline(repo: SignedRepo, keys: Keys, store: Store) -> None:
    first = repo.merge(basic_fleet())
    signed_tag(repo.path, keys, "alice", "deploy/old", first, date="@1700000000 +0000")
    baseline = repo.merge({"nodes/gpu-2.yaml": node("gpu-2")}, "add gpu-2")
    s = ssh_settings(keys, mode="signed-tag", baseline=baseline)
    result = judge(repo.path, s, store)
    assert result.revision == baseline  # the older tag is behind the baseline
    assert result.approval is not None and result.approval["kind"] == "baseline"
    assert any("possible rollback attack" in r.reason for r in result.refused)
    newer = repo.merge({"releases/infer/1.1.0.yaml": release(version="1.1.0")})
    signed_tag(repo.path, keys, "alice", "deploy/new", newer, date="@1800000000 +0000")
    assert judge(repo.path, s, store, baseline).revision == newer


def test_plan_shows_the_baseline(
    repo: SignedRepo, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    repo.merge(basic_fleet())
    baseline = repo.merge({"nodes/gpu-2.yaml": node("gpu-2")}, "add gpu-2")
    cfg = repo.path.parent / "reconciler.yaml"
    cfg.write_text(
        f"repo: {repo.path}\napproval:\n  baseline: {baseline}\n"
        f"  allowedSigners: {keys.allowed_signers}\n"
    )
    assert main(["plan", "--config", str(cfg), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["baseline"] == baseline and doc["revision"] == baseline
    assert doc["approval"] == {"kind": "baseline", "ref": baseline, "signers": []}
    assert main(["plan", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"Baseline {baseline}" in out
    assert "approval.baseline" in out


def test_baseline_must_be_a_full_sha(tmp_path: Path) -> None:
    from reconciler.config import parse_config
    from reconciler.errors import ConfigError

    with pytest.raises(ConfigError, match="baseline"):
        parse_config({"repo": ".", "approval": {"baseline": "HEAD~3"}}, base=tmp_path, env={})


# -- the real loop: first observations live in the store, across restarts -------------------


@dataclass
class SignedLoopRig(LoopRig):
    approval: ApprovalSettings = field(default_factory=ApprovalSettings)

    def config(self) -> Any:
        return replace(super().config(), approval=self.approval)


def test_loop_judges_each_tag_when_it_first_saw_it(tmp_path: Path, keys: Keys) -> None:
    files = fleet_files(nodes_named("n1"), [release_doc("app", "1.0.0")])
    rig = SignedLoopRig.create(tmp_path, files)
    t0 = rig.clock.t  # 2027-01-15
    retire = time.strftime("%Y%m%d", time.gmtime(t0 + 30 * DAY))
    signers = tmp_path / "allowed_signers"
    signers.write_text(
        f'alice@fleet.test namespaces="git",valid-before="{retire}" {keys.ssh["alice"].public}\n'
        f'bob@fleet.test namespaces="git" {keys.ssh["bob"].public}\n'
    )
    rig.approval = ApprovalSettings(mode="signed-tag", threshold=2, allowed_signers=signers)
    rig.close()
    rig.start()
    try:
        target = rig.repo.head()
        alice_tag = signed_tag(rig.repo.path, keys, "alice", "deploy/a", target)
        rig.once()  # seen while alice's key is valid; one signer of two: nothing yet
        assert rig.store.applied_revision() is None
        rig.close()
        rig.start()  # a restart: what was seen, and when, is in the store
        rig.clock.t = t0 + 60 * DAY  # alice's key has been retired for a month
        signed_tag(rig.repo.path, keys, "bob", "deploy/b", target)
        rig.once()
        applied = rig.store.applied_revision()
        assert applied is not None and applied.sha == target
        assert applied.approval["signers"] == ["alice@fleet.test", "bob@fleet.test"]
        assert rig.store.observe([alice_tag], 0.0)[alice_tag] == t0
        # a new tag by the retired key, backdated into its validity, counts for nothing
        newer = rig.repo.change(fleet_files(releases=[release_doc("app", "1.1.0")]), "1.1.0")
        signed_tag(rig.repo.path, keys, "alice", "deploy/c", newer, date="@1500000000 +0000")
        signed_tag(rig.repo.path, keys, "bob", "deploy/c-bob", newer)
        rig.clock.t = t0 + 61 * DAY
        rig.once()
        assert rig.store.applied_revision().sha == target
        refused = [e.message for e in rig.store.audit(limit=100) if e.revision == newer]
        assert any("1 of 2 required distinct signers (bob@fleet.test)" in m for m in refused)
    finally:
        rig.close()


def test_revoked_openpgp_key_voids_what_it_signed(
    repo: SignedRepo, tmp_path: Path, store: Store
) -> None:
    home = tmp_path / "dana-gnupg"
    home.mkdir(mode=0o700)
    env = {**os.environ, "GNUPGHOME": str(home)}
    email = "dana@fleet.test"

    def gpg(*args: str, stdin: str | None = None) -> bytes:
        return subprocess.run(
            ["gpg", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", "", *args],
            env=env, input=stdin.encode() if stdin else None, check=True, capture_output=True,
        ).stdout  # fmt: skip

    try:
        gpg("--batch", "--quick-gen-key", f"Dana <{email}>", "ed25519", "sign", "never")
        keyring = tmp_path / "dana.asc"
        keyring.write_bytes(gpg("--batch", "--armor", "--export", email))
        for rel, text in basic_fleet().items():
            (repo.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo.path / rel).write_text(text)
        git(repo.path, "add", "-A")
        proc = subprocess.run(
            ["git", "-c", "gpg.format=openpgp", "-c", f"user.signingkey={email}",
             "commit", "-q", "--no-verify", "-S", "-m", "squash"],
            cwd=repo.path, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        signed = repo.head()
        s = ApprovalSettings(gpg_keyring=keyring)
        assert judge(repo.path, s, store).revision == signed  # observed now, key valid
        # the key is revoked (compromised): its signatures count for nothing, also those the
        # reconciler saw before the revocation
        gpg("--command-fd", "0", "--armor", "-o", str(tmp_path / "rev.asc"), "--gen-revoke", email,
            stdin="y\n1\n\ny\n")  # fmt: skip
        gpg("--batch", "--import", str(tmp_path / "rev.asc"))
        keyring.write_bytes(gpg("--batch", "--armor", "--export", email))
        result = judge(repo.path, s, store)
        assert result.revision is None
        assert "OpenPGP signature not valid (REVKEYSIG)" in result.refused[0].reason
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)


def test_loop_applies_the_baseline_of_a_repo_without_approvable_history(tmp_path: Path) -> None:
    rig = SignedLoopRig.create(tmp_path, {})
    try:
        # the fleet arrived in a direct commit (an import, a forge key long expired)
        files = fleet_files(nodes_named("n1"), [release_doc("app", "1.0.0")])
        imported = rig.repo.direct_commit(files, "import")
        rig.once()
        assert rig.store.applied_revision() is None  # nothing approvable without a baseline
        rig.approval = ApprovalSettings(baseline=imported)
        rig.close()
        rig.start()
        result = rig.once()
        assert result.revision == imported
        applied = rig.store.applied_revision()
        assert applied.approval == {"kind": "baseline", "ref": imported, "signers": []}
        served = rig.store.all_desired()
        assert [rec.node for rec in served] == ["n1"]
        for rec in served:  # agents accept what they are served
            assert schema.errors("desired-state", rec.document) == []
            assert rec.document["approval"]["kind"] == "baseline"
        assert rig.once().writes == 0  # and a second pass writes nothing
    finally:
        rig.close()
