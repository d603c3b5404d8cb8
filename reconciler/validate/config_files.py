"""Config files of releases and models (``config.files[].from``): check them, read them in.

Pure: the caller passes ``read``, which answers for one repo-relative path with the entry
at the revision being judged (its git mode and bytes) or None when there is none. Each
``from`` must be a regular file (issue 10's rule: what is judged is what is deployed, so
no symlink, submodule or executable), at most ``MAX_CONFIG_FILE_BYTES``, all of a
workload's files together at most ``MAX_CONFIG_BYTES``, UTF-8 when ``template: true``, and
parse when it ends in ``.yaml``, ``.yml`` or ``.json`` (the error names the config file,
line and column). A spec whose files all pass comes back with their bytes filled in.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import replace

import yaml

from reconciler.spec import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_FILE_BYTES,
    ConfigFile,
    Deployable,
    FleetSpec,
    build_spec,
)
from reconciler.validate.loader import load_file
from reconciler.validate.violations import Report, Violation, sort_key

# (git mode, bytes) of one path at the revision; None: no such entry
Entry = tuple[str, bytes]
Reader = Callable[[str], Entry | None]

_REGULAR = "100644"
# what a template may hold (other ${...}, such as ${HOME}, are left as they are)
_NODE_REF = re.compile(r"\$\{node[.}][^}]*\}?")
_ALLOWED_REF = re.compile(r"\$\{node\.(name|labels\.[A-Za-z0-9._/-]+)\}")
_MODES = {
    "120000": "a symbolic link",
    "160000": "a submodule",
    "100755": "an executable file",
    "40000": "a folder",
}


def load_config(
    spec: FleetSpec, read: Reader, sources: Mapping[str, bytes] | None = None
) -> tuple[FleetSpec, tuple[Violation, ...]]:
    """``spec`` with every config file's bytes filled in, and the violations found.

    ``sources``: the fleet files' own bytes by path (to place an error on the ``from`` line
    of the release file); read through ``read`` when not given.
    """
    violations: list[Violation] = []
    deployables = []
    for d in spec.deployables:
        if d.config is None:
            deployables.append(d)
            continue
        filled, found = _load_one(d, read, sources)
        violations.extend(found)
        deployables.append(filled)
    return replace(spec, deployables=tuple(deployables)), tuple(violations)


def _load_one(
    d: Deployable, read: Reader, sources: Mapping[str, bytes] | None
) -> tuple[Deployable, list[Violation]]:
    assert d.config is not None
    out: list[Violation] = []
    files: list[ConfigFile] = []
    total = 0
    seen: set[str] = set()
    for i, f in enumerate(d.config.files):

        def at(message: str, key: str = "from", i: int = i, f: ConfigFile = f) -> Violation:
            line, column = _locate(d.path, ("config", "files", i, key), read, sources)
            return Violation(d.path, line, column, message, related=(f.source,))

        if f.to in seen:
            out.append(at(f"config.files[{i}].to: {f.to} is given twice", "to"))
        seen.add(f.to)
        entry = read(f.source)
        if entry is None:
            out.append(at(f"config.files[{i}].from: {f.source} does not exist in the fleet repo"))
            continue
        mode, data = entry
        if mode != _REGULAR:
            kind = _MODES.get(mode, f"mode {mode}")
            out.append(
                at(
                    f"config.files[{i}].from: {f.source} is {kind}, not a regular file "
                    "(config files are delivered as committed: regular files only)"
                )
            )
            continue
        if len(data) > MAX_CONFIG_FILE_BYTES:
            out.append(
                at(
                    f"config.files[{i}].from: {f.source} is {len(data)} bytes; a config file "
                    f"is limited to {MAX_CONFIG_FILE_BYTES // 1024} KiB"
                )
            )
            continue
        total += len(data)
        problem = parse_problem(f.source, data, template=f.template)
        if problem is not None:
            out.append(replace(problem, related=(d.path,)))
            continue
        files.append(replace(f, sha256=hashlib.sha256(data).hexdigest(), data=data))
    if total > MAX_CONFIG_BYTES:
        line, column = _locate(d.path, ("config", "files"), read, sources)
        out.append(
            Violation(
                d.path,
                line,
                column,
                f"config files of {d.name} {d.version} total {total} bytes; a workload's "
                f"config is limited to {MAX_CONFIG_BYTES // 1024} KiB",
            )
        )
    if out:
        return d, out
    return replace(d, config=replace(d.config, files=tuple(files))), out


def parse_problem(path: str, data: bytes, *, template: bool = False) -> Violation | None:
    """Why ``data`` (the config file ``path``) is not usable: not UTF-8 when it is a
    template, or a ``.yaml``/``.yml``/``.json`` file that does not parse."""
    structured = path.endswith((".yaml", ".yml", ".json"))
    if not (template or structured):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        line, column = before.count(b"\n") + 1, exc.start - (before.rfind(b"\n") + 1) + 1
        return Violation(path, line, column, "config file is not valid UTF-8 text")
    if template:
        for m in _NODE_REF.finditer(text):
            if _ALLOWED_REF.fullmatch(m[0]) is None:
                head = text[: m.start()]
                line, column = head.count("\n") + 1, m.start() - (head.rfind("\n") + 1) + 1
                return Violation(
                    path,
                    line,
                    column,
                    f"unknown placeholder {m[0]}; use ${{node.name}} or ${{node.labels.KEY}}",
                )
    if path.endswith(".json"):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return Violation(path, exc.lineno, exc.colno, f"invalid JSON: {exc.msg}")
    elif structured:
        try:
            for _ in yaml.safe_load_all(text):  # every document of the stream
                pass
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            context = f" {exc.context}:" if exc.context else ""
            return Violation(path, line, column, f"invalid YAML:{context} {exc.problem}")
        except yaml.YAMLError as exc:
            return Violation(path, 1, 1, f"invalid YAML: {exc}")
    return None


def _locate(
    path: str,
    at: tuple[str | int, ...],
    read: Reader,
    sources: Mapping[str, bytes] | None,
) -> tuple[int, int]:
    """Line and column of ``at`` in the fleet file ``path`` (parsed again: only on an error)."""
    data = sources.get(path) if sources is not None else None
    if data is None:
        entry = read(path)
        data = entry[1] if entry is not None else None
    if data is None:
        return (1, 1)
    loaded, _ = load_file(path, data)
    return loaded.locate(list(at)) if loaded is not None else (1, 1)


def with_config(report: Report, read: Reader, sources: Mapping[str, bytes]) -> Report:
    """``report`` (from ``validate_files`` over ``sources``) plus the config-file checks of
    the releases and models that passed their own checks."""
    spec = build_spec(report.documents)
    _, found = load_config(spec, read, sources)
    if not found:
        return report
    return Report(
        violations=tuple(sorted((*report.violations, *found), key=sort_key)),
        documents=report.documents,
        checked=report.checked,
    )
