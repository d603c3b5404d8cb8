"""Violations and reports as values, and their text and JSON renderings.

Pure: no I/O. The CLI and the hooks print what ``render_text`` / ``render_json`` return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Violation:
    """One problem at one place: ``path:line:column: message`` (1-based line and column)."""

    path: str
    line: int
    column: int
    message: str
    severity: Severity = "error"
    # Other files this violation involves (a release that targets a node, the node file).
    # Lets ``fleetkeeper validate FILE`` keep cross-file errors about FILE raised elsewhere.
    related: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.path}:{self.line}:{self.column}: {prefix}{self.message}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
        }
        if self.related:
            out["related"] = list(self.related)
        return out

    def involves(self, paths: Iterable[str]) -> bool:
        wanted = set(paths)
        return self.path in wanted or any(p in wanted for p in self.related)


def _empty_documents() -> Mapping[str, dict[str, Any]]:
    return MappingProxyType({})


@dataclass(frozen=True)
class Report:
    """Every violation found, and the parsed documents of files that passed per-file checks."""

    violations: tuple[Violation, ...] = ()
    documents: Mapping[str, dict[str, Any]] = field(default_factory=_empty_documents)
    checked: tuple[str, ...] = ()  # fleet files looked at, sorted

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def errors(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "error")

    @property
    def warnings(self) -> tuple[Violation, ...]:
        return tuple(v for v in self.violations if v.severity == "warning")

    def only(self, paths: Iterable[str]) -> Report:
        """The same report narrowed to violations that involve ``paths``."""
        wanted = set(paths)
        return Report(
            violations=tuple(v for v in self.violations if v.involves(wanted)),
            documents=self.documents,
            checked=tuple(p for p in self.checked if p in wanted),
        )

    def with_prefix(self, prefix: str) -> Report:
        """Paths shown relative to another folder (``prefix`` ends with '/' or is empty)."""
        if not prefix:
            return self
        return self.with_paths(lambda p: prefix + p)

    def with_paths(self, show: Callable[[str], str]) -> Report:
        """The same report with every path passed through ``show`` (for display)."""
        return Report(
            violations=tuple(
                Violation(
                    path=show(v.path),
                    line=v.line,
                    column=v.column,
                    message=v.message,
                    severity=v.severity,
                    related=tuple(show(r) for r in v.related),
                )
                for v in self.violations
            ),
            documents=self.documents,
            checked=tuple(show(p) for p in self.checked),
        )


def sort_key(v: Violation) -> tuple[str, int, int, str]:
    return (v.path, v.line, v.column, v.message)


def merge(reports: Iterable[Report]) -> Report:
    violations: list[Violation] = []
    checked: list[str] = []
    documents: dict[str, dict[str, Any]] = {}
    for r in reports:
        violations.extend(r.violations)
        checked.extend(r.checked)
        documents.update(r.documents)
    return Report(
        violations=tuple(sorted(violations, key=sort_key)),
        documents=MappingProxyType(documents),
        checked=tuple(sorted(set(checked))),
    )


def summary(report: Report) -> str:
    n_err, n_warn, n_files = len(report.errors), len(report.warnings), len(report.checked)
    files = f"{n_files} fleet file{'' if n_files == 1 else 's'}"
    if report.ok and not n_warn:
        return f"{files} valid"
    parts = [f"{n_err} error{'' if n_err == 1 else 's'}"]
    if n_warn:
        parts.append(f"{n_warn} warning{'' if n_warn == 1 else 's'}")
    return f"{', '.join(parts)} in {files}"


def render_text(report: Report) -> str:
    """One line per violation, ``path:line:column: message``; empty when there is none."""
    return "".join(f"{v}\n" for v in report.violations)


def render_json(report: Report) -> str:
    return json.dumps(
        {
            "ok": report.ok,
            "files": list(report.checked),
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "violations": [v.to_json() for v in report.violations],
        },
        indent=2,
    )
