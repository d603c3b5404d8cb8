"""Which tree entries may stand where fleet files live (reconciler.validate.entries)."""

from __future__ import annotations

import pytest

from reconciler.validate.entries import entry_violation, entry_violations

# (path, git mode, expected start of the message or None when allowed)
CASES: list[tuple[str, str, str | None]] = [
    ("releases/app/1.0.0.yaml", "100644", None),
    ("releases/app/1.0.0.yaml", "100755", "releases/app/1.0.0.yaml is an executable file"),
    ("releases/app/1.0.0.yaml", "120000", "releases/app/1.0.0.yaml is a symbolic link"),
    ("releases/app/notes.md", "100755", None),  # not a fleet file: any regular mode
    ("releases/app/notes.md", "120000", "releases/app/notes.md is a symbolic link"),
    ("releases/app", "120000", "releases/app is a symbolic link"),
    ("releases/vendored", "160000", "releases/vendored is a submodule (gitlink, mode 160000)"),
    (
        "releases",
        "120000",
        "releases is a symbolic link (mode 120000); fleet paths must be a folder",
    ),
    ("releases", "040000", None),
    ("nodes/gpu-1.yml", "100755", "nodes/gpu-1.yml is an executable file"),
    ("fleet.yaml", "120000", "fleet.yaml is a symbolic link"),
    ("fleet.yaml", "100644", None),
    ("README.md", "120000", None),  # outside the fleet area
    ("docs/x.yaml", "160000", None),
]


@pytest.mark.parametrize(("path", "mode", "want"), CASES, ids=[f"{p} {m}" for p, m, _ in CASES])
def test_entry_violation(path: str, mode: str, want: str | None) -> None:
    got = entry_violation(path, mode)
    if want is None:
        assert got is None
    else:
        assert got is not None and got.message.startswith(want)
        assert (got.path, got.line, got.column, got.severity) == (path, 1, 1, "error")


def test_entry_violations_sorted_by_path() -> None:
    found = entry_violations([("releases/b/1.yaml", "120000"), ("nodes/a.yaml", "100755")])
    assert [v.path for v in found] == ["nodes/a.yaml", "releases/b/1.yaml"]
