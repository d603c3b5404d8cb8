"""New release and model files from the previous version's (pure: documents in, documents
out). Everything but the version, the artifacts and (models) the ``gguf:`` facts is copied,
so a new version changes only what a new build changes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from reconciler.plan.select import semver_key
from reconciler.spec import GgufFacts

MODEL_PORT = 8081  # llama.cpp's server beside an agent on 8080, as in example-fleet-repo


def previous_version(versions: Mapping[str, Any], new: str) -> str | None:
    """The highest existing version below ``new`` (else the highest at all)."""
    if not versions:
        return None
    below = [v for v in versions if semver_key(v) < semver_key(new)]
    return max(below or versions, key=semver_key)


def new_release(
    previous: Mapping[str, Any], agent: str, version: str, artifacts: list[dict[str, Any]]
) -> dict[str, Any]:
    doc = copy.deepcopy(dict(previous))
    doc.update(agent=agent, version=version, artifacts=artifacts)
    return doc


def gguf_block(facts: GgufFacts) -> dict[str, Any]:
    block: dict[str, Any] = {}
    if facts.architecture is not None:
        block["architecture"] = facts.architecture
    block["parameters"] = facts.parameters
    if facts.quantization is not None:
        block["quantization"] = facts.quantization
    if facts.context_length is not None:
        block["contextLength"] = facts.context_length
    block.update(
        layers=facts.layers,
        kvHeads=facts.kv_heads,
        keyLength=facts.key_length,
        valueLength=facts.value_length,
    )
    return block


def new_model(
    previous: Mapping[str, Any] | None,
    name: str,
    version: str,
    artifact: dict[str, Any],
    facts: GgufFacts,
) -> dict[str, Any]:
    """The model file; without a previous version, a llama-cpp starter on port 8081 for
    every node (narrow its targets, or move the port to a label, before merging)."""
    if previous is None:
        doc: dict[str, Any] = {
            "apiVersion": "fleetkeeper/v1",
            "kind": "Model",
            "name": name,
            "version": version,
            "runtime": "llama-cpp",
            "artifacts": [artifact],
            "args": {"port": MODEL_PORT},
            "health": {"http": f"http://127.0.0.1:{MODEL_PORT}/v1/models", "timeoutSeconds": 300},
        }
    else:
        doc = copy.deepcopy(dict(previous))
        doc.update(name=name, version=version, artifacts=[artifact])
    # the header's facts sit after args, where the context size they are weighed at is
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key != "gguf":
            out[key] = value
        if key == "args":
            out["gguf"] = gguf_block(facts)
    if "gguf" not in out:
        out["gguf"] = gguf_block(facts)
    return out


def to_yaml(doc: Mapping[str, Any], origin: str) -> str:
    """The file's text: a first comment saying where it came from, keys in document order."""
    body = yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, width=100)
    return f"# {origin}\n{body}"
