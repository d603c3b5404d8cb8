"""Installed hooks in real repositories: git commit and git push run them, as users do."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from reconciler.cli import main
from reconciler.githooks import MARKER
from tests.helpers.git import commit_all, fleet_repo_from_example, git, head, init_repo

GOOD = "releases/inference-agent/0.8.4.yaml"
BAD = "releases/inference-agent/0.8.5.yaml"
BAD_LINE = (
    f"{BAD}:10:13: artifacts[0].sha256: 'not-a-digest' is not a SHA-256 digest: "
    "64 lowercase hex characters"
)


def bad_release(repo: Path) -> str:
    text = (repo / GOOD).read_text().replace("0.8.4", "0.8.5")
    lines = text.splitlines(keepends=True)
    assert lines[9].startswith("    sha256: ")  # line 10, value at column 13
    lines[9] = "    sha256: not-a-digest\n"
    return "".join(lines)


def run_git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git as a user runs it, with a PATH that does not hold fleetkeeper's venv."""
    env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, env=env)


def install(*args: str) -> None:
    assert main(["hooks", "install", *args]) == 0


def test_pre_commit_hook_blocks_an_invalid_release(tmp_path: Path) -> None:
    repo = fleet_repo_from_example(tmp_path / "fleet")
    install("--repo", str(repo))
    hook = repo / ".git/hooks/pre-commit"
    assert MARKER in hook.read_text() and os.access(hook, os.X_OK)
    before = head(repo)
    (repo / BAD).write_text(bad_release(repo))
    git(repo, "add", BAD)
    proc = run_git(repo, "commit", "-m", "release 0.8.5")
    assert proc.returncode != 0
    assert BAD_LINE in proc.stderr.splitlines()  # git shows hook output on stderr
    assert head(repo) == before
    # fixed: the same commit goes through
    (repo / BAD).write_text((repo / GOOD).read_text().replace("0.8.4", "0.8.5"))
    git(repo, "add", BAD)
    proc = run_git(repo, "commit", "-m", "release 0.8.5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert head(repo) != before


def test_pre_commit_hook_judges_what_commit_all_commits(tmp_path: Path) -> None:
    """`git commit -a` builds a temporary index; the hook must judge that one."""
    repo = fleet_repo_from_example(tmp_path / "fleet")
    install("--repo", str(repo))
    before = head(repo)
    (repo / GOOD).write_text((repo / GOOD).read_text().replace("targets:", "targetz:"))
    proc = run_git(repo, "commit", "-a", "-m", "typo")
    assert proc.returncode != 0
    assert f"{GOOD}:24:1: unknown field 'targetz'; did you mean 'targets'?" in proc.stderr
    assert head(repo) == before


def test_pre_commit_hook_for_a_fleet_in_a_subfolder(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "mono")
    fleet_repo_from_example(tmp_path / "scratch")
    git(repo, "clone", "-q", str(tmp_path / "scratch"), str(repo / "deploy"), check=False)
    subprocess.run(["rm", "-rf", str(repo / "deploy/.git")], check=True)
    commit_all(repo, "fleet under deploy/")
    install("--repo", str(repo / "deploy"))
    assert "--repo deploy" in (repo / ".git/hooks/pre-commit").read_text()
    (repo / "deploy" / BAD).write_text(bad_release(repo / "deploy"))
    git(repo, "add", "-A")
    proc = run_git(repo, "commit", "-m", "bad")
    assert proc.returncode != 0
    assert f"deploy/{BAD_LINE}" in proc.stderr.splitlines()
    # the server side, told where the fleet lives in the pushed trees
    bare = init_repo(tmp_path / "mono.git", bare=True)
    install("--repo", str(bare), "--pre-receive", "--fleet-dir", "deploy")
    git(repo, "commit", "-q", "--no-verify", "-m", "bad, hook skipped")
    proc = run_git(repo, "push", str(bare), "main")
    assert proc.returncode != 0
    assert f"remote: deploy/{BAD_LINE}" in [line.rstrip() for line in proc.stderr.splitlines()]


def test_install_keeps_a_foreign_hook_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = init_repo(tmp_path / "r")
    hook = repo / ".git/hooks/pre-commit"
    hook.write_text("#!/bin/sh\necho mine\n")
    assert main(["hooks", "install", "--repo", str(repo)]) == 1
    assert "was not written by fleetkeeper" in capsys.readouterr().err
    assert hook.read_text() == "#!/bin/sh\necho mine\n"
    install("--repo", str(repo), "--force")
    assert MARKER in hook.read_text()
    assert (repo / ".git/hooks/pre-commit.fleetkeeper-backup").read_text().endswith("mine\n")
    install("--repo", str(repo))  # reinstalling over our own hook needs no --force


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repo with the pre-receive hook, and a clone holding a valid first push."""
    bare = init_repo(tmp_path / "fleet.git", bare=True)
    install("--repo", str(bare), "--pre-receive")
    work = fleet_repo_from_example(tmp_path / "work")
    git(work, "remote", "add", "origin", str(bare))
    proc = run_git(work, "push", "origin", "main")
    assert proc.returncode == 0, proc.stderr
    return bare, work


def test_pre_receive_rejects_an_invalid_push_and_the_pusher_sees_why(
    server: tuple[Path, Path],
) -> None:
    bare, work = server
    accepted = head(bare, "main")
    (work / BAD).write_text(bad_release(work))
    commit_all(work, "release 0.8.5")
    proc = run_git(work, "push", "origin", "main")
    assert proc.returncode != 0
    remote = [line.rstrip() for line in proc.stderr.splitlines() if line.startswith("remote:")]
    assert f"remote: {BAD_LINE}" in remote
    assert any("refs/heads/main: push rejected" in line for line in remote)
    assert "pre-receive hook declined" in proc.stderr
    assert head(bare, "main") == accepted
    # the fix is accepted
    (work / BAD).write_text((work / GOOD).read_text().replace("0.8.4", "0.8.5"))
    commit_all(work, "fix 0.8.5")
    proc = run_git(work, "push", "origin", "main")
    assert proc.returncode == 0, proc.stderr
    assert head(bare, "main") == head(work)


def test_pre_receive_judges_new_branches_and_allows_deletions(
    server: tuple[Path, Path],
) -> None:
    bare, work = server
    git(work, "checkout", "-q", "-b", "feature")
    (work / BAD).write_text(bad_release(work))
    commit_all(work, "bad on a new branch")
    proc = run_git(work, "push", "origin", "feature")
    assert proc.returncode != 0
    assert f"remote: {BAD_LINE}" in [line.rstrip() for line in proc.stderr.splitlines()]
    assert git(bare, "rev-parse", "--verify", "-q", "feature", check=False).returncode != 0
    # a valid new branch is accepted, and deleting it is too
    git(work, "checkout", "-q", "-b", "good", "main")
    proc = run_git(work, "push", "origin", "good")
    assert proc.returncode == 0, proc.stderr
    proc = run_git(work, "push", "origin", ":good")
    assert proc.returncode == 0, proc.stderr
    assert git(bare, "rev-parse", "--verify", "-q", "good", check=False).returncode != 0
