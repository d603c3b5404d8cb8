"""The project's ``.pre-commit-hooks.yaml`` under the real pre-commit framework, in a real repo.

pre-commit clones this tree's sources (a local git repo, as from a tag), builds the hook
environment with pip offline (the base dependencies repacked from the test venv) and runs
the hook on ``git commit``. The hook must judge the index, with the cross-file rules over the
fleet as it will be after the commit: untracked or unstaged files never block a commit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.git import commit_all, fleet_repo_from_example, git, head
from tests.helpers.wheels import OfflineIndex, build_tools_dir, pip_env, prepare

BROKEN_NODE = "apiVersion: fleetkeeper/v1\nkind: Node\nname: broken\nplatform: plan9/mips\n"


@dataclass(frozen=True)
class Hooked:
    fleet: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> OfflineIndex:
    return prepare(tmp_path_factory.mktemp("precommit-src"))


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")  # shared: one hook env for the module


@pytest.fixture
def hooked(offline: OfflineIndex, pre_commit_home: Path, tmp_path: Path) -> Iterator[Hooked]:
    fleet = fleet_repo_from_example(tmp_path / "fleet")
    (fleet / ".pre-commit-config.yaml").write_text(
        "repos:\n"
        f"  - repo: {offline.source}\n"
        f"    rev: {head(offline.source)}\n"
        "    hooks:\n"
        "      - id: fleetkeeper-validate\n"
    )
    commit_all(fleet, "use the fleetkeeper hook")
    env = pip_env(offline.wheels, build_tools_dir())
    env["PRE_COMMIT_HOME"] = str(pre_commit_home)
    env["VIRTUALENV_OVERRIDE_APP_DATA"] = str(pre_commit_home / "virtualenv")
    proc = subprocess.run(
        [sys.executable, "-m", "pre_commit", "install"],
        cwd=fleet,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    yield Hooked(fleet, env)


def commit(h: Hooked, message: str) -> subprocess.CompletedProcess[str]:
    """``git commit`` through the installed pre-commit hook (nothing skipped); git sends
    the hook's output to stderr."""
    return subprocess.run(
        ["git", "commit", "-q", "-m", message],
        cwd=h.fleet,
        env=h.env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def edit_readme(h: Hooked) -> None:
    with (h.fleet / "README.md").open("a") as f:
        f.write("\nAn unrelated change.\n")
    git(h.fleet, "add", "README.md")


def test_hook_environment_has_no_web_server(hooked: Hooked, pre_commit_home: Path) -> None:
    edit_readme(hooked)
    done = commit(hooked, "warm up the hook env")
    assert done.returncode == 0, done.stdout + done.stderr
    envs = list(pre_commit_home.glob("repo*/py_env-*"))
    assert envs, f"no hook environment under {pre_commit_home}"
    site = list(envs[0].glob("lib/python*/site-packages"))[0]
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert "fleetkeeper" in installed
    assert installed.isdisjoint({"starlette", "uvicorn", "uvloop", "watchfiles", "httptools"})


def test_untracked_invalid_file_does_not_block_unrelated_commit(hooked: Hooked) -> None:
    (hooked.fleet / "nodes" / "broken.yaml").write_text(BROKEN_NODE)
    edit_readme(hooked)
    done = commit(hooked, "docs only")
    assert done.returncode == 0, done.stdout + done.stderr
    assert git(hooked.fleet, "status", "--porcelain").stdout.strip() == "?? nodes/broken.yaml"


def test_staged_invalid_file_blocks_even_when_fixed_on_disk(hooked: Hooked) -> None:
    (hooked.fleet / "nodes" / "broken.yaml").write_text(BROKEN_NODE)
    git(hooked.fleet, "add", "nodes/broken.yaml")
    os.remove(hooked.fleet / "nodes" / "broken.yaml")  # unstaged deletion: the index still has it
    before = head(hooked.fleet)
    done = commit(hooked, "add a broken node")
    assert done.returncode != 0
    assert "nodes/broken.yaml:" in done.stderr
    assert head(hooked.fleet) == before


def test_deleted_node_that_a_release_targets_is_blocked(hooked: Hooked) -> None:
    # Removed from the index only: the file stays on disk (untracked), where a working-tree
    # check would still find it; the commit would delete it from the fleet.
    git(hooked.fleet, "rm", "-q", "--cached", "nodes/vps-1.yaml")
    before = head(hooked.fleet)
    done = commit(hooked, "retire vps-1")
    assert done.returncode != 0
    assert "releases/coding-agent/1.3.0.yaml:" in done.stderr
    assert "vps-1" in done.stderr
    assert head(hooked.fleet) == before


def test_rename_is_judged_as_committed(hooked: Hooked) -> None:
    fleet = hooked.fleet
    # A rename whose new name is staged but whose old file stays on disk: the release's
    # canary still names vps-1, which the commit no longer has.
    text = (fleet / "nodes" / "vps-1.yaml").read_text().replace("name: vps-1", "name: vps-2")
    (fleet / "nodes" / "vps-2.yaml").write_text(text)
    git(fleet, "add", "nodes/vps-2.yaml")
    git(fleet, "rm", "-q", "--cached", "nodes/vps-1.yaml")
    blocked = commit(hooked, "rename vps-1 to vps-2")
    assert blocked.returncode != 0
    assert "vps-1" in blocked.stderr
    # Finish the rename (the release follows it): the same commit now passes, the stale
    # file on disk is untracked and does not matter.
    for release in (fleet / "releases" / "coding-agent").glob("*.yaml"):
        release.write_text(release.read_text().replace("canary: [vps-1]", "canary: [vps-2]"))
    git(fleet, "add", "releases")
    done = commit(hooked, "rename vps-1 to vps-2")
    assert done.returncode == 0, done.stdout + done.stderr
    tracked = git(fleet, "ls-files", "nodes").stdout.split()
    assert "nodes/vps-2.yaml" in tracked and "nodes/vps-1.yaml" not in tracked
