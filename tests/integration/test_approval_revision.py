"""load_revision: fleet files read from a commit's tree, validated like validate_files."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest

from reconciler.revision import fleet_listing, load_revision, read_fleet_files, validate_listing
from reconciler.spec import build_spec
from reconciler.validate import validate_files
from tests.helpers.fleetfiles import basic_fleet, node, release, write_tree
from tests.helpers.git import EXAMPLE_FLEET, commit_all, copy_tree, git, init_repo

CASES = {
    "valid": basic_fleet(),
    "schema error and a misplaced file": {
        **basic_fleet(),
        "releases/infer/1.1.0.yaml": release(version="1.1.0", sha256="nothex"),
        "releases/loose.yaml": "a: 1\n",
        "nodes/gpu-2.yaml": node("gpu-3"),
    },
    "duplicate keys, tabs and no nodes": {
        "fleet.yaml": "apiVersion: fleetkeeper/v1\nkind: Fleet\nname: a\nname: b\n",
        "releases/infer/1.0.0.yaml": release().replace("  roles", "\troles"),
    },
}


@pytest.mark.parametrize("files", list(CASES.values()), ids=list(CASES))
def test_cached_validation_equals_validate_files(tmp_path: Path, files: dict[str, str]) -> None:
    path = init_repo(tmp_path / "r")
    write_tree(path, {**files, "README.md": "not a fleet file\n"})
    sha = commit_all(path, "files")
    repo = pygit2.Repository(str(path))
    listing = fleet_listing(repo, sha)
    assert "README.md" not in dict(listing)
    expected = validate_files(read_fleet_files(repo, sha))
    for _ in range(2):  # cold, then from the per-file cache
        got = validate_listing(repo, listing)
        assert got.violations == expected.violations
        assert dict(got.documents) == dict(expected.documents)
        assert got.checked == expected.checked
    loaded = load_revision(repo, sha)
    assert loaded.ok == expected.ok
    if expected.ok:
        assert loaded.spec == build_spec(dict(expected.documents))


def test_example_repo_loads_and_one_change_reuses_the_rest(tmp_path: Path) -> None:
    path = init_repo(tmp_path / "r")
    copy_tree(EXAMPLE_FLEET, path)
    first = commit_all(path, "example")
    repo = pygit2.Repository(str(path))
    loaded = load_revision(repo, first)
    assert loaded.ok and loaded.spec is not None
    assert {"gpu-1", "vps-1"} <= set(loaded.spec.nodes)
    release_file = next(p for p, _ in fleet_listing(repo, first) if p.startswith("releases/"))
    (path / release_file).write_text("apiVersion: fleetkeeper/v1\nkind: Release\n")
    broken = commit_all(path, "break one release")
    bad = load_revision(repo, broken)
    assert bad.spec is None and any(v.path == release_file for v in bad.violations)
    git(path, "revert", "--no-edit", "HEAD")
    fixed = load_revision(repo, git(path, "rev-parse", "HEAD").stdout.strip())
    assert fixed.spec == loaded.spec  # same files, same spec (from the result cache)


def test_symlinks_are_not_fleet_files(tmp_path: Path) -> None:
    path = init_repo(tmp_path / "r")
    write_tree(path, basic_fleet())
    (path / "nodes" / "alias.yaml").symlink_to("gpu-1.yaml")
    sha = commit_all(path, "with a symlink")
    listing = dict(fleet_listing(pygit2.Repository(str(path)), sha))
    assert "nodes/gpu-1.yaml" in listing and "nodes/alias.yaml" not in listing
