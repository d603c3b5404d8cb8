"""load_revision on a real repo, commit after commit: the incremental validation (per-file
checks by blob oid, cross-file findings memoised while fleet.yaml and nodes/ are
unchanged) gives what validate_files gives on the same files from scratch."""

from __future__ import annotations

from pathlib import Path

import pygit2

from reconciler.revision import fleet_listing, load_revision, read_fleet_files, validate_listing
from reconciler.spec import build_spec
from reconciler.validate import Report, validate_files
from tests.helpers.fleetfiles import write_tree
from tests.helpers.git import commit_all, init_repo
from tests.unit.test_incremental_validate import STEPS, start


def full(report: Report) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(str(v), v.severity, v.related) for v in report.violations]


def check_commit(repo: pygit2.Repository, sha: str) -> Report:
    expected = validate_files(read_fleet_files(repo, sha))
    got = validate_listing(repo, fleet_listing(repo, sha))
    assert full(got) == full(expected)
    assert dict(got.documents) == dict(expected.documents)
    assert got.checked == expected.checked
    loaded = load_revision(repo, sha)
    assert loaded.violations == expected.violations
    assert loaded.spec == (build_spec(dict(expected.documents)) if expected.ok else None)
    return expected


def test_revision_after_revision_equals_validate_files(tmp_path: Path) -> None:
    path = init_repo(tmp_path / "fleet")
    files = start()
    write_tree(path, files)
    shas = [commit_all(path, "start")]
    repo = pygit2.Repository(str(path))
    outcomes = [check_commit(repo, shas[0]).ok]
    for name, change in STEPS:
        before = set(files)
        change(files)
        for gone in before - set(files):
            (path / gone).unlink()
        write_tree(path, files)
        shas.append(commit_all(path, name))
        outcomes.append(check_commit(repo, shas[-1]).ok)
    assert True in outcomes and False in outcomes  # valid and invalid revisions both seen
    for sha in reversed(shas):  # back through history: the scope changes the other way
        check_commit(repo, sha)
