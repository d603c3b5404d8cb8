"""Mode-only attacks (issue 10, point 1), performed for real on git repos built with the CLI.

A tree entry is (path, mode, id): flipping a fleet file to a symlink (or back) with the
same blob is a change that approval sees, and a link, submodule or executable where fleet
files live is refused by every validator (CLI work tree / --staged / --rev, pre-receive,
the reconciler's load).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from reconciler.cli import main
from tests.helpers.fleet import LoopRig, fleet_files, nodes_named, release_doc
from tests.helpers.fleetfiles import basic_fleet, node, release, write_tree
from tests.helpers.git import commit_all, git, head, init_repo

NODES = ("n1", "n2")
V1, V2 = "1.0.0", "1.1.0"
NEW = f"releases/app/{V2}.yaml"


def blob_of(repo: Path, rel: str) -> str:
    return git(repo, "rev-parse", f"HEAD:{rel}").stdout.strip()


def flip(repo: Path, rel: str, mode: str, message: str) -> str:
    """A direct, single-parent commit that changes only ``rel``'s mode (same blob)."""
    git(repo, "update-index", "--cacheinfo", f"{mode},{blob_of(repo, rel)},{rel}")
    git(repo, "commit", "-q", "--no-verify", "-m", message)
    git(repo, "reset", "-q", "--hard")  # the work tree as committed (later commits keep it)
    return head(repo)


def merged_symlink(rig: LoopRig, rel: str, doc: object, message: str) -> str:
    """A topic branch that adds ``rel`` as a symlink whose blob is YAML, merged --no-ff."""
    repo = rig.repo.path
    git(repo, "checkout", "-q", "-b", "sneaky")
    blob = subprocess.run(
        ["git", "hash-object", "-w", "--stdin"],
        cwd=repo,
        input=yaml.safe_dump(doc, sort_keys=False),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    git(repo, "update-index", "--add", "--cacheinfo", f"120000,{blob},{rel}")
    git(repo, "commit", "-q", "--no-verify", "-m", message)
    git(repo, "checkout", "-q", "-f", "main")
    git(repo, "merge", "-q", "--no-ff", "--no-edit", "-m", f"Merge sneaky: {message}", "sneaky")
    return head(repo)


@pytest.fixture
def rig(tmp_path: Path) -> LoopRig:
    files = fleet_files(
        nodes_named(*NODES),
        [release_doc("app", V1, batch_size=2, soak=0), release_doc("app", V2, batch_size=2)],
    )
    r = LoopRig.create(tmp_path, files)
    yield r  # type: ignore[misc]
    r.close()


def test_flip_to_symlink_is_refused_and_a_later_merge_cannot_roll_back(rig: LoopRig) -> None:
    first = rig.once()
    assert first.error is None and rig.versions("app") == {"n1": V2, "n2": V2}
    flipped = flip(rig.repo.path, NEW, "120000", "chmod")  # same blob, mode 120000
    refused = rig.once()
    assert refused.revision == first.revision
    assert rig.versions("app") == {"n1": V2, "n2": V2}
    audit = [e for e in rig.store.audit(limit=100) if e.kind == "refused"]
    assert [e.revision for e in audit] == [flipped]
    assert audit[0].message.startswith(f"Unapproved: {flipped} changes {NEW} without a merge")
    # the next merged pull request does not launder the flip: nodes keep 1.1.0
    later = rig.repo.change(fleet_files(nodes_named("n1", "n2", "n3")), "add n3")
    rig.once()
    assert rig.store.applied_revision().sha == first.revision
    assert rig.versions("app") == {"n1": V2, "n2": V2}
    blocked = [e for e in rig.store.audit(limit=100) if e.revision == later]
    assert blocked and f"builds on unapproved {flipped}" in blocked[0].message
    conds = {c["type"]: c for c in rig.reconciler.conditions()}
    assert conds["Stalled"]["status"] == "True"


def test_merged_symlink_then_flip_to_regular_never_deploys(rig: LoopRig) -> None:
    rig.once()
    v3 = release_doc("app", "1.2.0", batch_size=2)
    link = "releases/app/1.2.0.yaml"
    merge = merged_symlink(rig, link, v3, "app 1.2.0 as a link")
    rig.once()
    # approved as a merge, but the revision is invalid: the link is named, nothing applied
    invalid = [e for e in rig.store.audit(limit=100) if e.kind == "invalid"]
    assert [e.revision for e in invalid] == [merge]
    assert f"{link} is a symbolic link (mode 120000)" in invalid[0].message
    assert rig.versions("app") == {"n1": V2, "n2": V2}
    flipped = flip(rig.repo.path, link, "100644", "make it a file")
    rig.once()
    later = rig.repo.change(fleet_files(nodes_named("n1", "n2", "n3")), "add n3")
    rig.once()
    assert rig.versions("app") == {"n1": V2, "n2": V2}  # 1.2.0 never reaches a node
    refused = {e.revision: e.message for e in rig.store.audit(limit=100) if e.kind == "refused"}
    assert refused[flipped].startswith(f"Unapproved: {flipped} changes {link} without a merge")
    assert f"builds on unapproved {flipped}" in refused[later]


# -- validators: CLI (work tree, --staged, --rev) and pre-receive ----------------------------


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["validate", *args])
    out, _ = capsys.readouterr()
    return code, out.splitlines()


def _fleet(tmp_path: Path) -> Path:
    repo = init_repo(tmp_path / "fleet")
    write_tree(repo, basic_fleet())
    commit_all(repo, "initial fleet")
    return repo


HINTS = {
    "120000": "a regular file (mode 100644) (commit the file itself, not a link to it)",
    "100755": "a regular file (mode 100644) (git update-index --chmod=-x PATH)",
}


@pytest.mark.parametrize(
    ("mode", "what"),
    [
        ("120000", "a symbolic link (mode 120000)"),
        ("100755", "an executable file (mode 100755)"),
    ],
)
def test_validate_staged_and_rev_name_a_non_regular_fleet_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, what: str
) -> None:
    repo = _fleet(tmp_path)
    rel = "releases/infer/1.0.0.yaml"
    blob = blob_of(repo, rel)
    git(repo, "update-index", "--cacheinfo", f"{mode},{blob},{rel}")
    code, out = validate(capsys, "--repo", str(repo), "--staged")
    assert code == 1
    assert out == [f"{repo}/{rel}:1:1: {rel} is {what}; fleet paths must be {HINTS[mode]}"]
    git(repo, "commit", "-q", "--no-verify", "-m", "flip")
    code, out = validate(capsys, "--repo", str(repo), "--rev", "HEAD")
    assert code == 1 and out[0].startswith(f"{repo}/{rel}:1:1: {rel} is {what}")
    assert validate(capsys, "--repo", str(repo), "--rev", "HEAD~1")[0] == 0


def test_validate_staged_refuses_a_submodule_in_a_fleet_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _fleet(tmp_path)
    gitlink = head(repo)  # any commit id: a gitlink entry names a commit of another repo
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{gitlink},releases/vendored")
    code, out = validate(capsys, "--repo", str(repo), "--staged")
    assert code == 1
    assert out[0].startswith(
        f"{repo}/releases/vendored:1:1: releases/vendored is a submodule (gitlink, mode 160000)"
    )


def test_validate_work_tree_refuses_a_symlinked_fleet_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _fleet(tmp_path)
    (repo / "elsewhere.yaml").write_text(release(version="1.1.0"))
    os.symlink("../../elsewhere.yaml", repo / "releases/infer/1.1.0.yaml")
    code, out = validate(capsys, "--repo", str(repo))
    assert code == 1
    assert out[0].startswith(
        f"{repo}/releases/infer/1.1.0.yaml:1:1: releases/infer/1.1.0.yaml is a symbolic link"
    )


def test_pre_receive_rejects_a_mode_flip(tmp_path: Path) -> None:
    bare = init_repo(tmp_path / "fleet.git", bare=True)
    assert main(["hooks", "install", "--repo", str(bare), "--pre-receive"]) == 0
    work = _fleet(tmp_path)
    write_tree(work, {"nodes/gpu-2.yaml": node("gpu-2")})
    commit_all(work, "gpu-2")
    git(work, "remote", "add", "origin", str(bare))
    env = {**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"}
    push = ["git", "push", "origin", "main"]
    ok = subprocess.run(push, cwd=work, capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    accepted = head(bare, "main")
    flip(work, "nodes/gpu-2.yaml", "120000", "link")
    proc = subprocess.run(push, cwd=work, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert "remote: nodes/gpu-2.yaml:1:1: nodes/gpu-2.yaml is a symbolic link" in proc.stderr
    assert head(bare, "main") == accepted


def test_gitattributes_change_needs_approval(rig: LoopRig) -> None:
    first = rig.once()
    repo = rig.repo.path
    # hides every release's diff in review (`-diff`): as much a fleet change as a release
    (repo / ".gitattributes").write_text("releases/** -diff linguist-generated\n")
    direct = commit_all(repo, "attributes")
    rig.once()
    refused = [e for e in rig.store.audit(limit=100) if e.kind == "refused"]
    assert [e.revision for e in refused] == [direct]
    assert "changes .gitattributes without a merge" in refused[0].message
    assert rig.store.applied_revision().sha == first.revision


# -- point 9 (part): a verdict is logged and audited once, and stays visible in status -----


def test_invalid_revision_is_logged_once_over_many_passes(
    rig: LoopRig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.once()
    bad = release_doc("app", "1.2.0", batch_size=2)
    bad["artifacts"][0]["sha256"] = "not-a-digest"
    invalid = rig.repo.change({"releases/app/1.2.0.yaml": bad}, "app 1.2.0 (broken)")
    direct = rig.repo.direct_commit({"releases/app/1.3.0.yaml": release_doc("app", "1.3.0")}, "x")
    caplog.set_level("DEBUG")
    t0 = rig.clock.t
    for i in range(6):
        rig.clock.t = t0 + 60 * i
        rig.converge(*NODES)
        rig.once()
        conds = {c["type"]: c for c in rig.reconciler.conditions()}
        assert conds["Stalled"]["status"] == "True" and conds["Stalled"]["reason"] == "Invalid"
        assert invalid in conds["Stalled"]["message"]
        rows = rig.reconciler.fleet_status()["releases"]
        assert any(r["phase"] == "Invalid" and r["version"] == "1.2.0" for r in rows)
    loud = [r for r in caplog.records if r.levelno >= 30]  # WARNING and above
    assert [r.getMessage()[:60] for r in loud if invalid in r.getMessage()] == [
        f"Invalid: {invalid} is not applied: releases/app/1.2.0.yaml"[:60]
    ]
    assert len([r for r in loud if direct in r.getMessage()]) == 1
    audited = [e.kind for e in rig.store.audit(limit=100) if e.revision == invalid]
    assert audited == ["approved", "invalid"]  # each decision once
