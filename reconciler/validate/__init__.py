"""Validate the files of a fleet repo: YAML pitfalls, JSON Schema, cross-file rules.

The same code runs in ``fleetkeeper validate``, in the git hooks and in the reconciler
before it applies a revision. Pure: ``validate_files`` takes the files' bytes and returns
every violation as a value (it never stops at the first one).

    loader        bytes -> values + node marks; duplicate keys, tabs, aliases, ...
    schema_check  per-file JSON Schema, each error at its YAML node
    rules         cross-file rules (RULES); model_rules adds the model ones
    report        Violation, Report, text and JSON renderings
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from reconciler.validate import model_rules, rules
from reconciler.validate.loader import LoadedFile, load_file
from reconciler.validate.report import Report, Violation, render_json, render_text, sort_key
from reconciler.validate.rules import Rule, RuleContext
from reconciler.validate.schema_check import check_schema, expected_kind

__all__ = [
    "ALL_RULES",
    "FLEET_FILE_PATTERNS",
    "Report",
    "Rule",
    "RuleContext",
    "Violation",
    "FileCheck",
    "check_file",
    "is_fleet_file",
    "render_json",
    "render_text",
    "validate_files",
]

FLEET_FILE_PATTERNS = ("fleet.yaml", "nodes/*.yaml", "releases/*/*.yaml", "models/*/*.yaml")
_FLEET_FILE = re.compile(r"^(fleet\.yaml|nodes/[^/]+\.yaml|(releases|models)/[^/]+/[^/]+\.yaml)$")
_FLEET_DIRS = ("nodes/", "releases/", "models/")

ALL_RULES: tuple[Rule, ...] = (*rules.RULES, *model_rules.RULES)


def is_fleet_file(path: str) -> bool:
    """Whether ``path`` (repo-relative, '/'-separated) is a file the validator checks."""
    return _FLEET_FILE.match(path) is not None


def _layout_warning(path: str) -> Violation | None:
    """A YAML file where fleet files live but not where they must be: it would be ignored."""
    if not path.endswith((".yaml", ".yml")):
        return None
    if path == "fleet.yml":
        return Violation(path, 1, 1, "ignored: the fleet settings file is fleet.yaml", "warning")
    if not path.startswith(_FLEET_DIRS):
        return None
    layout = {
        "nodes/": "nodes/<node>.yaml",
        "releases/": "releases/<agent>/<version>.yaml",
        "models/": "models/<name>/<version>.yaml",
    }[path.split("/", 1)[0] + "/"]
    return Violation(path, 1, 1, f"ignored: not a fleet file (expected {layout})", "warning")


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Building thousands of small trees that all stay alive makes the cyclic GC rescan
    them again and again (~40% of the time); nothing here makes cycles, so pause it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


FileCheck = tuple[LoadedFile | None, tuple[Violation, ...]]
FileChecker = Callable[[str, bytes], FileCheck]


def check_file(path: str, data: bytes) -> FileCheck:
    """The per-file half of validation (YAML pitfalls, schema) of one fleet file.

    Depends only on ``path`` and ``data``, so a caller may cache it (by path and blob id)
    and hand the cached function to ``validate_files(check=...)``. The LoadedFile is None
    when no value could be built; the file passed when no violation is an error.
    """
    loaded, found = load_file(path, data)
    if loaded is not None:
        kind = expected_kind(path)
        assert kind is not None
        found.extend(check_schema(loaded, kind))
    return loaded, tuple(found)


def validate_files(
    files: Mapping[str, bytes],
    *,
    extra_rules: Iterable[Rule] = (),
    check: FileChecker = check_file,
) -> Report:
    """Validate a set of fleet files (repo-relative path -> raw bytes) as one revision.

    Per-file checks (YAML pitfalls, schema: ``check``) run on each fleet file; cross-file
    rules run over the files that passed them. Files that are not fleet files are ignored
    (with a warning when one looks like a misplaced fleet file).
    """
    with _gc_paused():
        return _validate(files, extra_rules, check)


def _validate(
    files: Mapping[str, bytes], extra_rules: Iterable[Rule], check: FileChecker
) -> Report:
    violations: list[Violation] = []
    passed: dict[str, LoadedFile] = {}
    checked: list[str] = []
    for path in sorted(files):
        if not is_fleet_file(path):
            warning = _layout_warning(path)
            if warning is not None:
                violations.append(warning)
            continue
        checked.append(path)
        loaded, found = check(path, files[path])
        violations.extend(found)
        if loaded is not None and not any(v.severity == "error" for v in found):
            passed[path] = loaded
    ctx = RuleContext.build(passed, checked)
    for rule in (*ALL_RULES, *extra_rules):
        violations.extend(rule(ctx))
    documents: dict[str, dict[str, Any]] = {p: f.value for p, f in passed.items()}
    return Report(
        violations=tuple(sorted(violations, key=sort_key)),
        documents=MappingProxyType(documents),
        checked=tuple(checked),
    )
