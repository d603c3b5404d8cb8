"""`fleetkeeper validate` on real folders and real git repositories (index, revisions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli import main
from tests.helpers.fleetfiles import FLEET, basic_fleet, node, release, write_tree
from tests.helpers.git import EXAMPLE_FLEET, commit_all, git, init_repo

BAD_SHA = "releases/infer/1.0.0.yaml:8:13: artifacts[0].sha256: 'XYZ' is not a SHA-256 digest"


@pytest.fixture
def in_dir(tmp_path: Path) -> Iterator[Path]:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_example_fleet_repo_validates_clean(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = validate(capsys, "--repo", str(EXAMPLE_FLEET), "--format", "json")
    report = json.loads("\n".join(out))
    assert code == 0
    assert report["ok"] is True
    assert report["violations"] == []
    assert len(report["files"]) >= 10
    shown = {p.split("example-fleet-repo/", 1)[1] for p in report["files"]}
    assert {"fleet.yaml", "nodes/gpu-1.yaml", "models/qwen2.5-7b-instruct/1.0.0.yaml"} <= shown


def test_console_script_exit_codes(tmp_path: Path) -> None:
    """The real entry point in a subprocess: 0 valid, 1 invalid, 2 usage."""
    write_tree(tmp_path, {**basic_fleet(), "releases/infer/1.0.0.yaml": release(sha256="XYZ")})
    cmd = [sys.executable, "-m", "reconciler.cli", "validate"]
    bad = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stdout.startswith(BAD_SHA)
    assert "1 error in 3 fleet files" in bad.stderr
    missing = subprocess.run([*cmd, "nope.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 2
    assert "nope.yaml: no such file or folder" in missing.stderr
    with pytest.raises(SystemExit) as usage:  # argparse: --staged and --rev exclude each other
        main(["validate", "--staged", "--rev", "HEAD"])
    assert usage.value.code == 2
    write_tree(tmp_path, {"releases/infer/1.0.0.yaml": release()})
    good = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert (good.returncode, good.stdout) == (0, "")


def test_json_format_has_every_violation(in_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0.yaml"] = release(sha256="XYZ", tail="rollout: {batchSiz: 1}\n")
    write_tree(in_dir, files)
    code, out, _ = validate(capsys, "--format", "json")
    report = json.loads("\n".join(out))
    assert code == 1
    assert (report["ok"], report["errors"], report["warnings"]) == (False, 2, 0)
    assert [(v["path"], v["line"], v["column"], v["severity"]) for v in report["violations"]] == [
        ("releases/infer/1.0.0.yaml", 8, 13, "error"),
        ("releases/infer/1.0.0.yaml", 14, 11, "error"),
    ]
    assert report["violations"][1]["message"] == (
        "unknown field 'batchSiz' in rollout; did you mean 'batchSize'?"
    )


def test_named_files_narrow_the_report_but_keep_cross_file_context(
    in_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = basic_fleet()
    files["nodes/mac-1.yaml"] = node("mac-1", "darwin/arm64", "metal")  # no darwin artifact
    files["releases/other/1.0.0.yaml"] = release("other", sha256="XYZ")
    write_tree(in_dir, files)
    code, out, _ = validate(capsys, "releases/infer/1.0.0.yaml")
    assert code == 1
    assert out == [
        "releases/infer/1.0.0.yaml:5:1: no artifact for darwin/arm64, but the targets select "
        "mac-1; add a darwin/arm64 artifact or narrow the targets"
    ]
    # naming the node file shows the release error that involves it
    code, out, _ = validate(capsys, "nodes/mac-1.yaml")
    assert code == 1
    assert out == [
        "releases/infer/1.0.0.yaml:5:1: no artifact for darwin/arm64, but the targets select "
        "mac-1; add a darwin/arm64 artifact or narrow the targets"
    ]
    # a node file nothing else involves: clean
    code, out, _ = validate(capsys, "nodes/gpu-1.yaml")
    assert (code, out) == (0, [])
    # a folder: everything under it
    code, out, _ = validate(capsys, "releases/other")
    assert code == 1
    assert [line.split(": ")[0] for line in out] == [
        "releases/other/1.0.0.yaml:8:13",
    ]


def test_validate_from_a_subfolder_finds_the_fleet_root(
    in_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {**basic_fleet(), "releases/infer/1.0.0.yaml": release(sha256="XYZ")}
    write_tree(in_dir / "fleet", files)
    code, out, _ = validate(capsys, "fleet/releases/infer/1.0.0.yaml")
    assert code == 1
    assert out[0].startswith("fleet/" + BAD_SHA)
    # from inside the repo, paths are relative to where you stand (editors can open them)
    os.chdir(in_dir / "fleet/releases/infer")
    code, out, _ = validate(capsys)
    assert code == 1
    assert out[0].startswith("1.0.0.yaml:8:13: artifacts[0].sha256")


def test_named_non_fleet_file_is_a_warning_not_silence(
    in_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(in_dir, {**basic_fleet(), "README.md": "hi\n"})
    code, out, err = validate(capsys, "README.md")
    assert code == 0
    assert out == [
        "README.md:1:1: warning: ignored: not a fleet file (fleet.yaml, nodes/*.yaml, "
        "releases/*/*.yaml, models/*/*.yaml)"
    ]
    os.chdir(in_dir / "releases")  # no fleet files below, but the repo is found above
    assert validate(capsys)[:2] == (0, [])
    empty = in_dir.parent / f"{in_dir.name}-empty"
    empty.mkdir()
    os.chdir(empty)
    code, out, err = validate(capsys)
    assert (code, out) == (0, [])
    assert "no fleet files found" in err


def _repo(tmp_path: Path, files: dict[str, str]) -> Path:
    repo = init_repo(tmp_path / "fleet")
    write_tree(repo, files)
    commit_all(repo, "initial fleet")
    return repo


def test_staged_judges_the_index_not_the_working_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = _repo(tmp_path, basic_fleet())
    target = repo / "releases/infer/1.0.0.yaml"
    # working tree bad, index good
    target.write_text(release(sha256="XYZ"))
    assert validate(capsys, "--repo", str(repo), "--staged")[:2] == (0, [])
    code, out, _ = validate(capsys, "--repo", str(repo))
    assert code == 1
    # index bad, working tree good again
    git(repo, "add", "releases/infer/1.0.0.yaml")
    target.write_text(release())
    assert validate(capsys, "--repo", str(repo))[:2] == (0, [])
    code, out, _ = validate(capsys, "--repo", str(repo), "--staged")
    assert code == 1
    assert out[0].startswith(str(repo) + "/" + BAD_SHA)


def test_staged_sees_deleted_node_that_a_release_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {**basic_fleet(), "nodes/gpu-2.yaml": node("gpu-2")}
    files["releases/infer/1.0.0.yaml"] = release(tail="rollout: {canary: [gpu-2]}\n")
    repo = _repo(tmp_path, files)
    git(repo, "rm", "-q", "nodes/gpu-2.yaml")
    code, out, _ = validate(capsys, "--repo", str(repo), "--staged")
    assert code == 1
    assert out == [
        f"{repo}/releases/infer/1.0.0.yaml:14:20: rollout.canary names node 'gpu-2', which "
        "has no file nodes/gpu-2.yaml; did you mean 'gpu-1'?"
    ]


def test_rev_validates_a_commits_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _repo(tmp_path, basic_fleet())
    (repo / "releases/infer/1.0.0.yaml").write_text(release(sha256="XYZ"))
    commit_all(repo, "break it")
    (repo / "releases/infer/1.0.0.yaml").write_text(release())  # working tree fixed
    assert validate(capsys, "--repo", str(repo), "--rev", "HEAD~1")[:2] == (0, [])
    code, out, _ = validate(capsys, "--repo", str(repo), "--rev", "HEAD")
    assert code == 1
    assert out[0].startswith(str(repo) + "/" + BAD_SHA)
    code, _, err = validate(capsys, "--repo", str(repo), "--rev", "no-such-rev")
    assert code == 2
    assert "'no-such-rev' names no commit" in err


def test_fleet_in_a_subfolder_of_a_bigger_repo(
    tmp_path: Path, in_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = init_repo(in_dir / "mono")
    write_tree(repo, {"README.md": "monorepo\n", "deploy/fleet.yaml": FLEET})
    write_tree(repo / "deploy", {**basic_fleet(), "releases/infer/1.0.0.yaml": release()})
    commit_all(repo, "fleet in deploy/")
    (repo / "deploy/releases/infer/1.0.0.yaml").write_text(release(sha256="XYZ"))
    git(repo, "add", "-A")
    os.chdir(repo)
    code, out, _ = validate(capsys, "--repo", "deploy", "--staged")
    assert code == 1
    assert out[0].startswith("deploy/" + BAD_SHA)
    assert validate(capsys, "--repo", "deploy", "--rev", "HEAD")[:2] == (0, [])


def test_staged_outside_git_is_a_usage_error(
    in_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_tree(in_dir, basic_fleet())
    code, _, err = validate(capsys, "--staged")
    assert code == 2
    assert "is not in a git repository" in err
