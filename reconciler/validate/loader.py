"""YAML with marks: one fleet file -> plain JSON-like values, every YAML pitfall reported.

libyaml (``yaml.CSafeLoader``) composes the node tree, which keeps a start mark for every
node. The values are built here from the nodes rather than by PyYAML's constructor, which
lets this module see what the constructor hides:

- duplicate keys (PyYAML keeps the last one silently),
- non-string keys (``1:``, ``yes:``, ``null:``, ``? [a]``), merge keys ``<<``,
- tags outside plain JSON (``!!binary``, ``!!set``, dates, ``!custom``),
- alias bombs ("billion laughs": a few lines that expand to millions of values) and
  recursive aliases,
- more than one document in a file, tabs used for indentation, oversized files.

Pure: bytes in, values and violations out.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from reconciler.validate.violations import Violation

MAX_FILE_BYTES = 256 * 1024  # fleet files are a few hundred bytes; this is generous
MAX_VALUES = 20_000  # values one document may expand to, aliases included
MAX_DEPTH = 64  # nesting of mappings and sequences
_TAB_MESSAGE = "tab character in indentation; YAML indents with spaces only"

Path = tuple[str | int, ...]

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _MERGE, _TIMESTAMP = (_TAG + t for t in ("map", "seq", "merge", "timestamp"))
# Keys whose value is a date (node ``hold: {until: 2026-12-24}``): an unquoted YYYY-MM-DD
# there is read as its text instead of refused as a YAML timestamp.
_DATE_KEYS = frozenset({"until"})
_PLAIN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_plain_date(node: yaml.Node) -> bool:
    return (
        isinstance(node, yaml.ScalarNode)
        and node.tag == _TIMESTAMP
        and _PLAIN_DATE.match(node.value) is not None
    )


_CONSTRUCTOR = SafeConstructor()

# libyaml is optional for PyYAML; the pure-Python loader gives the same marks, slower.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS: dict[str, str] = {}  # plain scalar -> resolved tag; fleet files repeat a lot


class _Loader(_Base):  # type: ignore[misc]
    """The safe loader with a memo for implicit tags: resolving a plain scalar runs a list
    of regexes in Python, and most scalars (keys, platforms, roles) recur in every file."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(_PLAIN_TAGS) < 4096:
                    _PLAIN_TAGS[value] = tag
            return tag
        return super().resolve(kind, value, implicit)

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        """No path resolvers are registered on the safe loader: nothing to track."""

    def ascend_resolver(self) -> None:
        """See descend_resolver."""


@dataclass(frozen=True, eq=False)
class LoadedFile:
    """A parsed fleet file: its value and the node tree that remembers where each value is."""

    path: str
    value: Any
    root: yaml.Node | None = field(repr=False)

    def locate(self, at: Sequence[str | int], *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the value at JSON path ``at`` (of its key with ``key``).

        Walks as deep as the path exists and answers with the deepest node found, so an
        error about a missing field points at the mapping that lacks it.
        """
        node = self.root
        if node is None:
            return (1, 1)
        mark = node.start_mark
        for i, step in enumerate(at):
            last = i == len(at) - 1
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(step):
                        child = k if (last and key) else v
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(step, int)
                and 0 <= step < len(node.value)
            ):
                child = node.value[step]
            if child is None:
                break
            node = child
            mark = node.start_mark
        return (mark.line + 1, mark.column + 1)


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, message: str) -> None:
        super().__init__(message)
        self.node = node
        self.message = message


@dataclass
class _Builder:
    path: str
    violations: list[Violation] = field(default_factory=list)
    count: int = 0
    active: set[int] = field(default_factory=set)  # nodes being built: a repeat is a cycle

    def error(self, node: yaml.Node, message: str) -> None:
        m = node.start_mark
        self.violations.append(Violation(self.path, m.line + 1, m.column + 1, message))

    def build(self, node: yaml.Node, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_VALUES:
            raise _TooBig(
                node,
                f"the document expands to more than {MAX_VALUES} values through aliases "
                "(an alias bomb such as 'billion laughs'?); write the values out",
            )
        if depth > MAX_DEPTH:
            raise _TooBig(node, f"values are nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        ident = id(node)
        if ident in self.active:
            raise _TooBig(node, "an alias refers to a value that contains it (recursive alias)")
        self.active.add(ident)
        try:
            if isinstance(node, yaml.SequenceNode):
                self.check_tag(node, _SEQ)
                return [self.build(item, depth + 1) for item in node.value]
            assert isinstance(node, yaml.MappingNode)
            self.check_tag(node, _MAP)
            return self.mapping(node, depth)
        finally:
            self.active.discard(ident)

    def check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != expected:
            self.error(node, f"unsupported YAML tag {node.tag!r}; fleet files are plain YAML")

    def mapping(self, node: yaml.MappingNode, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                self.error(key_node, "merge keys ('<<') are not supported; write the fields out")
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR:
                self.error(key_node, _bad_key_message(key_node))
                continue
            key = key_node.value
            if key in first_line:
                self.error(
                    key_node,
                    f"duplicate key {key!r} (first at line {first_line[key]}); YAML would "
                    "silently keep only the last one",
                )
                continue
            first_line[key] = key_node.start_mark.line + 1
            if key in _DATE_KEYS and _is_plain_date(value_node):
                self.count += 1
                out[key] = value_node.value  # a date where one is meant: keep its text
                continue
            out[key] = self.build(value_node, depth + 1)
        return out

    def scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        if tag == _STR:
            return node.value
        if tag in (_INT, _BOOL, _NULL):
            return _CONSTRUCTOR.yaml_constructors[tag](_CONSTRUCTOR, node)
        if tag == _FLOAT:
            value = _CONSTRUCTOR.construct_yaml_float(node)
            if math.isinf(value) or math.isnan(value):
                self.error(node, f"{node.value!r} is not a finite number; quote it for a string")
                return None
            return value
        if tag == _TIMESTAMP:
            self.error(
                node,
                f"{node.value!r} is read as a date/time by YAML; quote it for a string",
            )
            return node.value
        self.error(node, f"unsupported YAML tag {tag!r}; fleet files are plain YAML")
        return node.value


def _bad_key_message(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        kind = {_INT: "an integer", _FLOAT: "a number", _BOOL: "a boolean", _NULL: "null"}.get(
            node.tag, f"tagged {node.tag}"
        )
        hint = (
            " (YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans)"
            if node.tag == _BOOL
            else ""
        )
        return f"key {node.value!r} is {kind}, not a string{hint}; quote it"
    return "keys must be plain strings, not a mapping or a sequence"


def _decode(path: str, data: bytes) -> tuple[str | None, list[Violation]]:
    if len(data) > MAX_FILE_BYTES:
        return None, [
            Violation(
                path,
                1,
                1,
                f"file is {len(data)} bytes; fleet files are limited to "
                f"{MAX_FILE_BYTES // 1024} KiB",
            )
        ]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        return None, [Violation(path, line, column, "file is not valid UTF-8")]
    return text.removeprefix("\ufeff"), []


def _parse_error(path: str, text: str, exc: yaml.MarkedYAMLError) -> Violation:
    mark = exc.problem_mark or exc.context_mark
    line, column = (mark.line, mark.column) if mark is not None else (0, 0)
    lines = text.split("\n")
    char = lines[line][column : column + 1] if line < len(lines) else ""
    problem = exc.problem or "invalid YAML"
    if char == "\t" or "tab character" in problem:
        message = _TAB_MESSAGE
    elif exc.context == "expected a single document in the stream":
        message = (
            "more than one YAML document in this file (a '---' separator); "
            "put each document in its own file"
        )
    else:
        context = f" {exc.context}" if exc.context else ""
        message = f"invalid YAML:{context}: {problem}" if context else f"invalid YAML: {problem}"
    return Violation(path, line + 1, column + 1, message)


def _tab_indents(path: str, text: str) -> list[Violation]:
    """Lines indented with a tab (called once libyaml has refused one: tabs inside block
    scalars and flow sequences are legal YAML and are left alone)."""
    out = []
    for i, line in enumerate(text.split("\n")):
        stripped = line.lstrip(" ")
        if stripped.startswith("\t"):
            out.append(
                Violation(
                    path,
                    i + 1,
                    len(line) - len(stripped) + 1,
                    _TAB_MESSAGE,
                )
            )
    return out


def load_file(path: str, data: bytes) -> tuple[LoadedFile | None, list[Violation]]:
    """Parse ``data``; ``None`` when no value could be built. Violations are pitfalls and
    syntax errors (schema checks come later, on the value)."""
    text, violations = _decode(path, data)
    if text is None:
        return None, violations
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        error = _parse_error(path, text, exc)
        if error.message == _TAB_MESSAGE:  # name every tab-indented line, not just the first
            return None, _tab_indents(path, text) or [error]
        return None, [error]
    except yaml.YAMLError as exc:  # errors without a mark (rare: reader errors)
        return None, [Violation(path, 1, 1, f"invalid YAML: {exc}")]
    finally:
        loader.dispose()
    if root is None:
        return None, [Violation(path, 1, 1, "empty file: expected a YAML mapping")]
    builder = _Builder(path)
    try:
        value = builder.build(root, 0)
    except _TooBig as exc:
        builder.error(exc.node, exc.message)
        return None, builder.violations
    except ConstructorError as exc:  # a scalar the resolver typed but cannot convert
        mark = exc.problem_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return None, [*builder.violations, Violation(path, line, column, str(exc.problem))]
    if not isinstance(value, dict):
        m = root.start_mark
        builder.violations.append(
            Violation(path, m.line + 1, m.column + 1, "expected a mapping at the top level")
        )
        return None, builder.violations
    return LoadedFile(path, value, root), builder.violations
