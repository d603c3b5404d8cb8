"""Desired-state documents as the reconciler sends them, for agent tests.

``workload_doc`` is one workload entry for a program built by ``artifacts.build_program``;
``desired_doc`` wraps entries into a node's document (``schema/desired-state.schema.json``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tests.helpers.artifacts import Artifact


def workload_doc(
    name: str,
    version: str,
    artifact: Artifact,
    url: str,
    port: int,
    *,
    timeout: int = 5,
    probe: bool = True,
) -> dict[str, Any]:
    """A desired-state workload entry for a program built by ``artifacts.build_program``."""
    doc: dict[str, Any] = {
        "name": name,
        "kind": "process",
        "version": version,
        "artifact": artifact.artifact_doc(url),
        "run": {"command": [f"bin/{name}", "--port", str(port)]},
        "health": {"http": f"http://127.0.0.1:{port}/healthz", "timeoutSeconds": timeout},
    }
    if probe:
        doc["versionProbe"] = [f"bin/{name}", "--version"]
    return doc


def desired_doc(
    node: str, generation: int, workloads: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": node,
        "generation": generation,
        "revision": None,
        "approval": None,
        "workloads": [dict(w) for w in workloads],
    }
