"""Fleet documents as dicts: schema-valid node, release, model and fleet files, and specs.

- ``release_doc`` / ``model_doc`` / ``node_doc`` / ``fleet_doc``: schema-valid documents;
- ``fleet_files(nodes, releases)``: ``{repo path: document}`` for a whole fleet;
- ``spec_of(files)``: the ``FleetSpec`` (pure, for planner tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from reconciler.spec import FleetSpec, build_spec

Doc = dict[str, Any]
API = "fleetkeeper/v1"


def fake_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node_doc(
    name: str,
    *,
    platform: str = "linux/amd64",
    accelerator: str = "cpu",
    roles: Sequence[str] = ("inference",),
    labels: Mapping[str, str] | None = None,
    memory_gib: int | None = None,
) -> Doc:
    doc: Doc = {
        "apiVersion": API,
        "kind": "Node",
        "name": name,
        "platform": platform,
        "accelerator": accelerator,
        "roles": list(roles),
        "labels": dict(labels or {}),
    }
    if memory_gib is not None:
        doc["memoryGiB"] = memory_gib
    return doc


def rollout_block(
    *,
    batch_size: int | str = 1,
    canary: Sequence[str] = (),
    soak: int = 300,
    timeout: int = 900,
    on_failure: str = "halt",
) -> Doc:
    block: Doc = {
        "batchSize": batch_size,
        "soakSeconds": soak,
        "timeoutSeconds": timeout,
        "onFailure": on_failure,
    }
    if canary:
        block["canary"] = list(canary)
    return block


def release_doc(
    agent: str,
    version: str,
    *,
    roles: Sequence[str] | None = ("inference",),
    targets: Mapping[str, Any] | None = None,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64", "darwin/arm64"),
    url_base: str = "https://artifacts.fleet.test",
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    **rollout: Any,
) -> Doc:
    """A Release; ``rollout`` keywords go to ``rollout_block`` (batch_size, soak, ...)."""
    doc: Doc = {
        "apiVersion": API,
        "kind": "Release",
        "agent": agent,
        "version": version,
        "artifacts": [
            {
                "platform": p,
                "url": f"{url_base}/{agent}-{version}-{p.replace('/', '-')}.tar.gz",
                "sha256": fake_sha256(f"{agent}-{version}-{p}"),
                "size": 1024,
            }
            for p in platforms
        ],
        "run": {"command": list(command or ["bin/" + agent, "--port", "${node.labels.port}"])},
        "health": {"timeoutSeconds": 30},
        "versionProbe": ["bin/" + agent, "--version"],
        "targets": dict(targets) if targets is not None else {"roles": list(roles or [])},
        "rollout": rollout_block(**rollout),
    }
    if env:
        doc["run"]["env"] = dict(env)
    return doc


def model_doc(
    name: str,
    version: str,
    *,
    runtime: str = "llama-cpp",
    roles: Sequence[str] = ("inference",),
    **rollout: Any,
) -> Doc:
    return {
        "apiVersion": API,
        "kind": "Model",
        "name": name,
        "version": version,
        "runtime": runtime,
        "artifacts": [
            {
                "platform": "any",
                "url": f"https://artifacts.fleet.test/{name}-{version}.gguf",
                "sha256": fake_sha256(f"{name}-{version}"),
                "size": 1 << 30,
            }
        ],
        "args": {"port": "${node.labels.port}", "contextSize": 2048},
        "targets": {"roles": list(roles)},
        "rollout": rollout_block(**rollout),
    }


def fleet_doc(name: str = "testfleet", *, allow_insecure: bool = True, **defaults: Any) -> Doc:
    doc: Doc = {
        "apiVersion": API,
        "kind": "Fleet",
        "name": name,
        "allowInsecureURLs": allow_insecure,
    }
    if defaults:
        doc["defaults"] = {"rollout": rollout_block(**defaults)}
    return doc


def path_of(doc: Mapping[str, Any]) -> str:
    kind = doc["kind"]
    if kind == "Node":
        return f"nodes/{doc['name']}.yaml"
    if kind == "Release":
        return f"releases/{doc['agent']}/{doc['version']}.yaml"
    if kind == "Model":
        return f"models/{doc['name']}/{doc['version']}.yaml"
    return "fleet.yaml"


def fleet_files(
    nodes: Iterable[Doc] = (), releases: Iterable[Doc] = (), fleet: Doc | None = None
) -> dict[str, Doc]:
    """``{path: document}`` for a fleet repo (fleet.yaml included)."""
    files = {path_of(d): d for d in [fleet or fleet_doc(), *nodes, *releases]}
    return dict(sorted(files.items()))


def nodes_named(*names: str, **kw: Any) -> list[Doc]:
    return [node_doc(n, labels={"port": str(8080 + i)}, **kw) for i, n in enumerate(names)]


def spec_of(files: Mapping[str, Doc]) -> FleetSpec:
    return build_spec(files)
