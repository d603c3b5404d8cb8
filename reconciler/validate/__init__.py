"""Validate the files of a fleet repo: YAML pitfalls, JSON Schema, cross-file rules.

The same code runs in ``fleetkeeper validate``, in the git hooks and in the reconciler
before it applies a revision. Pure: ``validate_files`` takes the files' bytes and returns
every violation as a value (it never stops at the first one).

    entries       tree entries where fleet files live must be regular files (mode 100644)
    loader        bytes -> values + node marks; duplicate keys, tabs, aliases, ...
    schema_check  per-file JSON Schema, each error at its YAML node
    rules         cross-file rules (RULES); model_rules adds the model ones,
                  control_rules those of the rollout controls (windows, holds)
    violations    Violation, Report, text and JSON renderings

``validate_incremental`` gives exactly what ``validate_files`` gives, reusing the per-file
rules' findings of the last call (a ``RuleMemo`` value the caller keeps) for files whose
content id is unchanged while fleet.yaml and nodes/ are unchanged.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from reconciler.spec import (
    Deployable,
    FleetSpec,
    NodeSpec,
    parse_deployable,
    parse_fleet,
    parse_node,
)
from reconciler.validate import control_rules, model_rules, rules, secret_rules
from reconciler.validate.entries import entry_violations
from reconciler.validate.loader import LoadedFile, load_file
from reconciler.validate.rules import FileRule, Rule, RuleContext, Scope
from reconciler.validate.schema_check import check_schema, expected_kind
from reconciler.validate.violations import Report, Violation, render_json, render_text, sort_key

__all__ = [
    "ALL_RULES",
    "FLEET_FILE_PATTERNS",
    "Report",
    "Rule",
    "RuleContext",
    "Violation",
    "FileCheck",
    "RuleMemo",
    "check_file",
    "is_fleet_file",
    "render_json",
    "render_text",
    "validate_files",
    "validate_incremental",
]

FLEET_FILE_PATTERNS = ("fleet.yaml", "nodes/*.yaml", "releases/*/*.yaml", "models/*/*.yaml")
_FLEET_FILE = re.compile(r"^(fleet\.yaml|nodes/[^/]+\.yaml|(releases|models)/[^/]+/[^/]+\.yaml)$")
_FLEET_DIRS = ("nodes/", "releases/", "models/")

ALL_RULES: tuple[Rule, ...] = (
    *rules.RULES,
    *model_rules.RULES,
    *control_rules.RULES,
    *secret_rules.RULES,
)
# Rules of ALL_RULES that judge one file given only the Scope: memoised per file.
PER_FILE_RULES: Mapping[Rule, FileRule] = MappingProxyType(
    {**rules.PER_FILE, **model_rules.PER_FILE, **control_rules.PER_FILE}
)


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
    irregular: Iterable[tuple[str, str]] = (),
) -> Report:
    """Validate a set of fleet files (repo-relative path -> raw bytes) as one revision.

    Per-file checks (YAML pitfalls, schema: ``check``) run on each fleet file; cross-file
    rules run over the files that passed them. Files that are not fleet files are ignored
    (with a warning when one looks like a misplaced fleet file). ``irregular``: the
    (path, octal mode) of entries that are not regular files, judged by ``entries``.
    """
    with _gc_paused():
        return _validate(files, extra_rules, check, irregular)


def _validate(
    files: Mapping[str, bytes],
    extra_rules: Iterable[Rule],
    check: FileChecker,
    irregular: Iterable[tuple[str, str]] = (),
) -> Report:
    violations: list[Violation] = entry_violations(irregular)
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
    # secrets/ files are not fleet files but releases refer to them (issue 17)
    for rule in (*ALL_RULES, secret_rules.secret_files(files), *extra_rules):
        violations.extend(rule(ctx))
    documents: dict[str, dict[str, Any]] = {p: f.value for p, f in passed.items()}
    return Report(
        violations=tuple(sorted(violations, key=sort_key)),
        documents=MappingProxyType(documents),
        checked=tuple(checked),
    )


# (rule index in ALL_RULES, its violations) for the per-file rules that found something
Findings = tuple[tuple[int, tuple[Violation, ...]], ...]


@dataclass(frozen=True)
class _FileMemo:
    """One file of a listing as validated: what depends on its path and content alone,
    then what depends on the scope too (None until judged in one)."""

    path: str
    fleet_file: bool  # is_fleet_file(path)
    found: tuple[Violation, ...]  # its layout warning, or its per-file checks' violations
    loaded: LoadedFile | None  # when it passed the per-file checks
    scoped: bool  # part of the scope: fleet.yaml, nodes/*, or a Node document
    deployable: Deployable | None = None  # when it is a release or a model (and judged)
    findings: Findings | None = None  # per-file rules' findings in the memo's scope


def _no_files() -> Mapping[tuple[str, str], _FileMemo]:
    return MappingProxyType({})


@dataclass(frozen=True)
class RuleMemo:
    """What ``validate_incremental`` may reuse: per (path, content id) the per-file checks'
    outcome, and the file's Deployable and per-file rule findings, which hold while the
    scope files (fleet.yaml, nodes/, any Node document: ``scope_key``) are the same. A
    value: each call returns a new one holding only the files of that call."""

    scope_key: tuple[tuple[str, str], ...] | None = None
    fleet_key: tuple[tuple[str, str], ...] | None = None  # fleet.yaml: what Deployables need
    scope: Scope | None = None
    nodes: Mapping[str, NodeSpec] = field(default_factory=dict)
    files: Mapping[tuple[str, str], _FileMemo] = field(default_factory=_no_files)


def validate_incremental(
    listing: Sequence[tuple[str, str]],
    check: Callable[[str, str], FileCheck],
    memo: RuleMemo | None = None,
    *,
    extra_rules: Iterable[Rule] = (),
) -> tuple[Report, FleetSpec, RuleMemo]:
    """``validate_files`` over the files of ``listing`` (path, content id: equal ids mean
    equal bytes), reusing ``memo``; also the FleetSpec of the documents (what
    ``build_spec(report.documents)`` returns) and the memo for the next call.

    ``check(path, id)`` is the per-file half (``check_file`` of the file's bytes), called
    only for files new since ``memo``. Only unique_names, fleet_defaults and
    ``extra_rules`` look at every file on each call; the per-file rules run for the new
    files only, or for every file when the scope changed. tests/unit/
    test_incremental_validate.py holds the result equal to ``validate_files``.
    """
    with _gc_paused():
        return _validate_incremental(listing, check, memo or RuleMemo(), tuple(extra_rules))


def _validate_incremental(
    listing: Sequence[tuple[str, str]],
    check: Callable[[str, str], FileCheck],
    memo: RuleMemo,
    extra_rules: tuple[Rule, ...],
) -> tuple[Report, FleetSpec, RuleMemo]:
    keys = sorted(listing)
    known = memo.files
    entries = [known.get(key) or _examine(key, check) for key in keys]
    scope_key = tuple(key for key, e in zip(keys, entries, strict=True) if e.scoped)
    same_scope = memo.scope is not None and memo.scope_key == scope_key
    fleet_key = tuple(key for key in scope_key if key[0] == "fleet.yaml")
    same_fleet = memo.fleet_key == fleet_key  # a node changed: the Deployables still hold
    checked = [e.path for e in entries if e.fleet_file]
    passed = {e.path: e.loaded for e in entries if e.loaded is not None}
    if same_scope:
        assert memo.scope is not None
        scope, nodes = memo.scope, memo.nodes
    else:  # as build_spec and RuleContext.build make them
        fleet_file = passed.get("fleet.yaml")
        fleet = parse_fleet(fleet_file.value if fleet_file is not None else None)
        built: dict[str, NodeSpec] = {}
        for path, loaded in passed.items():
            if loaded.value.get("kind") == "Node":
                node = parse_node(path, loaded.value)
                built[node.name] = node
        nodes = built
        scope = Scope.build(fleet, Scope.facts(nodes), frozenset(checked), passed)
    per_file = [(i, PER_FILE_RULES.get(rule)) for i, rule in enumerate(ALL_RULES)]
    for n, e in enumerate(entries):
        if e.loaded is not None and (e.findings is None or not same_scope):
            keep = e.findings is not None and same_fleet
            entries[n] = _judge(e, e.loaded, scope, per_file, keep_deployable=keep)
    violations = [v for e in entries for v in e.found]
    found_by_rule: dict[int, list[Violation]] = {}
    for e in entries:
        for i, found in e.findings or ():
            found_by_rule.setdefault(i, []).extend(found)
    deployables = tuple(e.deployable for e in entries if e.deployable is not None)
    spec = FleetSpec(fleet=scope.fleet, nodes=nodes, deployables=deployables)
    ctx = RuleContext(
        files=passed, all_paths=frozenset(checked), spec=spec, nodes=scope.nodes, given_scope=scope
    )
    # in ALL_RULES order, each rule's findings in path order: as validate_files emits them
    for i, rule in enumerate(ALL_RULES):
        if rule in PER_FILE_RULES:
            violations.extend(found_by_rule.get(i, ()))
        else:
            violations.extend(rule(ctx))
    for rule in extra_rules:
        violations.extend(rule(ctx))
    report = Report(
        violations=tuple(sorted(violations, key=sort_key)),
        documents=MappingProxyType({p: f.value for p, f in passed.items()}),
        checked=tuple(checked),
    )
    files = MappingProxyType(dict(zip(keys, entries, strict=True)))
    return report, spec, RuleMemo(scope_key, fleet_key, scope, nodes, files)


def _examine(key: tuple[str, str], check: Callable[[str, str], FileCheck]) -> _FileMemo:
    """What a file is on its own: a layout warning, or the per-file checks' outcome."""
    path, file_id = key
    if not is_fleet_file(path):
        warning = _layout_warning(path)
        found = (warning,) if warning is not None else ()
        return _FileMemo(path, False, found, None, False)
    loaded, checks = check(path, file_id)
    if loaded is None or any(v.severity == "error" for v in checks):
        return _FileMemo(
            path, True, checks, None, path == "fleet.yaml" or path.startswith("nodes/")
        )
    scoped = path == "fleet.yaml" or path.startswith("nodes/") or loaded.value.get("kind") == "Node"
    return _FileMemo(path, True, checks, loaded, scoped)


def _judge(
    e: _FileMemo,
    loaded: LoadedFile,
    scope: Scope,
    per_file: Sequence[tuple[int, FileRule | None]],
    *,
    keep_deployable: bool,
) -> _FileMemo:
    """``e`` with its Deployable (kept when ``keep_deployable``: fleet.yaml is unchanged)
    and per-file rule findings in ``scope``."""
    kind = loaded.value.get("kind")
    if keep_deployable:
        d = e.deployable
    elif kind in ("Release", "Model"):
        d = parse_deployable(loaded.path, loaded.value, scope.fleet)
    else:
        d = None
    findings: list[tuple[int, tuple[Violation, ...]]] = []
    for i, rule in per_file:
        if rule is not None:
            found = tuple(rule(scope, loaded, d))
            if found:
                findings.append((i, found))
    return replace(e, deployable=d, findings=tuple(findings))
