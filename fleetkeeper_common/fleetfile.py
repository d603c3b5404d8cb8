"""A release or model file as a node reads it, and the workload entry it implies (pure).

Both halves need this: the reconciler renders a node's workload entry from the file
(``reconciler.plan.select.workload_document``), and an agent with ``approvers`` set
re-renders it from the approved file's bytes and compares (``agent.evidence``).
``tests/unit/test_fleetfile_vectors.py`` holds both to the same vectors.

``config`` and ``secrets`` carry the bytes of other files of the same tree
(``config.files[].from``, ``secrets[].from``): ``workload_entry`` asks ``read`` for them
(an agent: from the approved tree objects of its evidence); the reconciler renders the same
entries through ``fleetkeeper_common.rendering`` from the revision it read.

The YAML reader is strict in the way the reconciler's validator is (duplicate keys,
non-string keys, merge keys, tags beyond plain JSON and non-finite numbers are refused,
not guessed at), so a file never means one thing to a reviewer and another to a node.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from fleetkeeper_common.digests import config_digest
from fleetkeeper_common.rendering import (
    TemplateError,
    ciphertext_text,
    config_file_entry,
    fill,
    fill_config,
    secret_entry,
)

MAX_FILE_BYTES = 256 * 1024
MAX_VALUES = 20_000

_TAG = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_TAG + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _MERGE = (_TAG + t for t in ("map", "seq", "merge"))
_CONSTRUCTOR = SafeConstructor()
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FleetFileError(ValueError):
    """The file is not a plain-YAML release or model; the message says where."""


# bytes of one repo-relative path of the tree the file comes from; raises when there is none
Reader = Callable[[str], bytes]


def release_path(kind: str, name: str, version: str) -> str:
    """Where the file of a workload lives in the fleet repo."""
    folder = "models" if kind == "model" else "releases"
    return f"{folder}/{name}/{version}.yaml"


def load_strict(data: bytes, where: str) -> Any:
    """The one YAML document in ``data`` as plain JSON values, or FleetFileError."""
    if len(data) > MAX_FILE_BYTES:
        raise FleetFileError(f"{where}: larger than {MAX_FILE_BYTES} bytes")
    try:
        node = yaml.compose(data.decode("utf-8"), Loader=_Loader)
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FleetFileError(f"{where}: not YAML: {str(exc).splitlines()[0]}") from None
    count = [0]

    def build(n: yaml.Node, depth: int) -> Any:
        count[0] += 1
        if count[0] > MAX_VALUES or depth > 64:
            raise FleetFileError(f"{where}: too many or too deeply nested values")
        line = n.start_mark.line + 1
        if isinstance(n, yaml.ScalarNode):
            if n.tag == _STR:
                return n.value
            if n.tag in (_INT, _BOOL, _NULL):
                return _CONSTRUCTOR.yaml_constructors[n.tag](_CONSTRUCTOR, n)
            if n.tag == _FLOAT:
                value = _CONSTRUCTOR.construct_yaml_float(n)
                if math.isfinite(value):
                    return value
            # the value is not quoted: a refusal message must not carry what a file holds
            raise FleetFileError(
                f"{where}:{line}: not a plain YAML value (a date, binary, or non-finite number)"
            )
        if isinstance(n, yaml.SequenceNode) and n.tag == _SEQ:
            return [build(v, depth + 1) for v in n.value]
        if isinstance(n, yaml.MappingNode) and n.tag == _MAP:
            out: dict[str, Any] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode) or k.tag != _STR:
                    raise FleetFileError(f"{where}:{k.start_mark.line + 1}: key is not a string")
                if k.value in out:
                    raise FleetFileError(f"{where}:{k.start_mark.line + 1}: duplicate key")
                out[k.value] = build(v, depth + 1)
            return out
        raise FleetFileError(f"{where}:{line}: unsupported YAML tag {n.tag!r}")

    if node is None:
        raise FleetFileError(f"{where}: empty")
    return build(node, 0)


def config_sources(doc: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(from, to, template) of each ``config.files[]`` entry, as the reconciler reads them."""
    config = doc.get("config")
    files = config.get("files") if isinstance(config, dict) else None
    return [
        (str(f.get("from")), str(f.get("to")), f.get("template") is True)
        for f in (files if isinstance(files, list) else [])
        if isinstance(f, dict)
    ]


def secret_sources(doc: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(name, from, as) of each ``secrets[]`` entry (``as`` is ``env`` unless ``file``)."""
    items = doc.get("secrets")
    return [
        (str(s.get("name")), str(s.get("from")), "file" if s.get("as") == "file" else "env")
        for s in (items if isinstance(items, list) else [])
        if isinstance(s, dict)
    ]


def referenced_files(doc: Mapping[str, Any]) -> list[str]:
    """The other files of the tree whose bytes the workload entry carries."""
    paths = [src for src, _, _ in config_sources(doc)] + [s for _, s, _ in secret_sources(doc)]
    return list(dict.fromkeys(paths))


def _artifact(doc: Mapping[str, Any], platform: str) -> dict[str, Any] | None:
    arts = [a for a in doc.get("artifacts") or [] if isinstance(a, dict)]
    chosen = next((a for a in arts if a.get("platform") == platform), None)
    chosen = chosen or next((a for a in arts if a.get("platform") == "any"), None)
    if chosen is None:
        return None
    out = {k: chosen[k] for k in ("platform", "url", "sha256") if k in chosen}
    for k in ("size", "unpackedSize"):
        if isinstance(chosen.get(k), int):
            out[k] = chosen[k]
    return out


def workload_entry(
    doc: Mapping[str, Any],
    node: str,
    labels: Mapping[str, str],
    platform: str,
    read: Reader | None = None,
) -> dict[str, Any] | None:
    """The desired-state workload entry a release or model file implies for a node
    (None: no artifact for its platform). Mirrors ``select.workload_document``. ``read``
    gives the bytes of the config and secret files; without it a file that has either is
    refused (FleetFileError), never rendered without them."""
    is_model = doc.get("kind") == "Model"
    art = _artifact(doc, platform)
    if art is None:
        return None
    out: dict[str, Any] = {
        "name": str(doc.get("name") if is_model else doc.get("agent")),
        "kind": "model" if is_model else "process",
        "version": str(doc.get("version")),
        "artifact": art,
    }
    for key in ("run", "health", "drain"):
        value = doc.get(key)
        if isinstance(value, dict) and value:
            out[key] = fill(value, node, labels)
    probe = doc.get("versionProbe")
    if isinstance(probe, list) and probe:
        out["versionProbe"] = fill([str(v) for v in probe], node, labels)
    data = doc.get("data")
    if isinstance(data, dict):
        limit = data.get("maxBytes")
        out["data"] = {"snapshot": data.get("snapshot") is True}
        if isinstance(limit, int) and not isinstance(limit, bool):
            out["data"]["maxBytes"] = limit
    if is_model:
        args = fill(doc.get("args") if isinstance(doc.get("args"), dict) else {}, node, labels)
        port = args.get("port")
        if isinstance(port, str) and port.isdigit():
            args["port"] = int(port)
        out["model"] = {"runtime": str(doc.get("runtime")), "args": args}
    secrets, config = secret_sources(doc), doc.get("config")
    if (secrets or isinstance(config, dict)) and read is None:
        raise FleetFileError("config and secrets need the files they name: no reader given")
    if secrets and read is not None:
        out["secrets"] = [
            secret_entry(n, src, a, ciphertext_text(read(src))) for n, src, a in secrets
        ]
    if isinstance(config, dict) and read is not None:
        files, shas = [], []
        for src, to, template in config_sources(doc):
            data = read(src)
            shas.append((to, template, hashlib.sha256(data).hexdigest()))
            try:
                filled = fill_config(data, template, node, labels)
            except TemplateError as exc:
                raise FleetFileError(f"{src}: {exc}") from None
            files.append(config_file_entry(to, filled))
        on_change = "none" if config.get("onChange") == "none" else "restart"
        out["config"] = {
            "digest": config_digest(on_change, shas),
            "onChange": on_change,
            "files": files,
        }
    return out
