"""Tree entries where fleet files live must be regular files (mode 100644).

Pure: takes (path, octal mode) pairs as git records them and returns a Violation per entry
that is not allowed. A symlink's blob is a target path and a submodule (gitlink) has no
blob at all: readers that follow or skip them disagree about what the revision contains,
which is how a mode-only push once made a release vanish or appear (docs/security.md).
An executable fleet file is refused too, so that exactly one mode is ever judged.

Checked: ``fleet.yaml``/``fleet.yml`` at the top, the ``nodes``, ``releases`` and
``models`` entries themselves (folders), and every entry below them: symlinks and
gitlinks are refused whatever their name, YAML files unless they are 100644.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.validate.violations import Violation

REGULAR = "100644"
TREE = "40000"
_NAMES = {
    "100755": "an executable file (mode 100755)",
    "120000": "a symbolic link (mode 120000)",
    "160000": "a submodule (gitlink, mode 160000)",
    TREE: "a folder",
}
_HINT = {
    "100755": " (git update-index --chmod=-x PATH)",
    "120000": " (commit the file itself, not a link to it)",
    "160000": " (remove the submodule)",
}
_TOP_FILES = ("fleet.yaml", "fleet.yml")
_FLEET_DIRS = ("nodes", "releases", "models")
_YAML = (".yaml", ".yml")


def in_fleet_area(path: str) -> bool:
    """Whether ``path`` is a fleet folder, lies below one, or is the fleet settings file."""
    return path in _TOP_FILES or path.split("/", 1)[0] in _FLEET_DIRS


def describe_mode(mode: str) -> str:
    mode = mode.lstrip("0") or "0"
    return _NAMES.get(mode, f"an entry of mode {mode}")


def entry_violation(path: str, mode: str) -> Violation | None:
    """The violation of one tree entry (None when it is allowed)."""
    mode = mode.lstrip("0")
    if not in_fleet_area(path):
        return None
    top = "/" not in path
    if top and path in _FLEET_DIRS:
        allowed, expected = mode == TREE, "a folder"
    elif top or path.endswith(_YAML):
        allowed, expected = mode == REGULAR, "a regular file (mode 100644)"
    elif mode in ("120000", "160000"):
        allowed, expected = False, "regular files and folders"
    else:
        allowed, expected = True, ""
    if allowed:
        return None
    return Violation(
        path,
        1,
        1,
        f"{path} is {describe_mode(mode)}; fleet paths must be {expected}{_HINT.get(mode, '')}",
    )


def entry_violations(entries: Iterable[tuple[str, str]]) -> list[Violation]:
    """Every disallowed entry of ``entries`` ((repo-relative path, octal mode)), by path."""
    found = (entry_violation(path, mode) for path, mode in entries)
    return sorted((v for v in found if v is not None), key=lambda v: v.path)
