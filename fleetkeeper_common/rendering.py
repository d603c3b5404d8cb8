"""Rendering shared by the reconciler and the agent, with no parser behind it (pure).

``${node.*}`` placeholders, and the ``config`` and ``secrets`` entries of a workload
document: the reconciler's planner (``reconciler.plan.select``, ``reconciler.spec``) renders
with these, and so does ``fleetkeeper_common.fleetfile.workload_entry``, which an agent with
``approvers`` uses to re-render an entry from the approved tree. Kept apart from
``fleetfile`` so the pure core imports no YAML reader.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

PLACEHOLDER = re.compile(r"\$\{node\.(name|labels\.([A-Za-z0-9._/-]+))\}")


class TemplateError(ValueError):
    """A config file marked ``template: true`` that is not UTF-8 text."""


def fill(value: Any, node: str, labels: Mapping[str, str]) -> Any:
    """``value`` with ``${node.name}`` and ``${node.labels.KEY}`` replaced in every string
    (a label the node lacks becomes the empty string, as the validator forbids it)."""
    if isinstance(value, str):
        if "${" not in value:
            return value
        return PLACEHOLDER.sub(lambda m: node if m[1] == "name" else labels.get(m[2], ""), value)
    if isinstance(value, list):
        return [fill(v, node, labels) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, node, labels) for k, v in value.items()}
    return value


def fill_config(data: bytes, template: bool, node: str, labels: Mapping[str, str]) -> bytes:
    """A config file's bytes as the node receives them: placeholders filled in when it is a
    template (``validate`` refuses a template that is not UTF-8; here: TemplateError)."""
    if not template or b"${" not in data:
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TemplateError("a template config file is not UTF-8 text") from None
    return str(fill(text, node, labels)).encode("utf-8")


@lru_cache(maxsize=256)  # the same file goes to every node it targets, on every plan
def _encoded(data: bytes) -> tuple[str, str]:
    return hashlib.sha256(data).hexdigest(), base64.b64encode(data).decode("ascii")


def config_file_entry(to: str, data: bytes) -> dict[str, Any]:
    """One ``config.files[]`` entry of a workload document (``data`` already filled in)."""
    sha, content = _encoded(data)
    return {"path": to, "sha256": sha, "content": content}


def ciphertext_text(data: bytes) -> str:
    """An age file as the document carries it (armored text; validate refuses other files)."""
    return data.decode("ascii", "replace")


def secret_entry(name: str, source: str, as_: str, ciphertext: str) -> dict[str, Any]:
    return {"name": name, "from": source, "as": as_, "age": ciphertext}
