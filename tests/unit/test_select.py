from __future__ import annotations

import pytest

from reconciler.plan.select import NodeFacts, desired_workloads, matches, resolve, semver_key
from reconciler.spec import Targets, build_spec

SHA = "a" * 64


def release(agent: str, version: str, **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": agent,
        "version": version,
        "artifacts": [
            {"platform": "linux/amd64", "url": f"https://x/{version}", "sha256": SHA},
        ],
        "run": {"command": ["bin/a", "--port", "${node.labels.port}"]},
        "targets": {"roles": ["inference"]},
    }
    doc.update(extra)
    return doc


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("0.9.0", "0.10.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-beta"),
        ("1.2.3", "2.0.0"),
    ],
)
def test_semver_order(older: str, newer: str) -> None:
    assert semver_key(older) < semver_key(newer)


@pytest.mark.parametrize(
    ("targets", "want"),
    [
        (Targets(), True),
        (Targets(roles=("inference",)), True),
        (Targets(roles=("coding",)), False),
        (Targets(accelerators=("metal",)), False),
        (Targets(labels={"site": "homelab"}), True),
        (Targets(labels={"site": "office"}), False),
        (Targets(nodes=("gpu-2",)), False),
    ],
)
def test_matches(targets: Targets, want: bool) -> None:
    node = NodeFacts("gpu-1", "linux/amd64", "cuda", 64, ("inference",), {"site": "homelab"})
    assert matches(targets, node) is want


def test_resolve_placeholders() -> None:
    node = NodeFacts("gpu-1", "linux/amd64", labels={"port": "8081"})
    got = resolve({"a": ["${node.name}", "p=${node.labels.port}"]}, node)
    assert got == {"a": ["gpu-1", "p=8081"]}


def test_desired_takes_highest_version_and_skips_missing_platform() -> None:
    spec = build_spec(
        {
            "releases/a/0.9.0.yaml": release("a", "0.9.0"),
            "releases/a/0.10.0.yaml": release("a", "0.10.0"),
        }
    )
    nodes = {
        "gpu-1": NodeFacts("gpu-1", "linux/amd64", roles=("inference",), labels={"port": "81"}),
        "mac-1": NodeFacts("mac-1", "darwin/arm64", roles=("inference",)),
    }
    got = desired_workloads(spec, nodes)
    assert [w["version"] for w in got["gpu-1"]] == ["0.10.0"]
    assert got["gpu-1"][0]["run"] == {"command": ["bin/a", "--port", "81"]}
    assert got["mac-1"] == []


def test_size_unpacked_size_and_run_user_reach_the_desired_document() -> None:
    art = {"platform": "linux/amd64", "url": "https://x/1", "sha256": SHA}
    art |= {"size": 1234, "unpackedSize": 99999}
    doc = release(
        "a", "1.0.0", artifacts=[art], run={"command": ["bin/a"], "user": "fleetkeeper-workload"}
    )
    spec = build_spec({"releases/a/1.0.0.yaml": doc})
    nodes = {"gpu-1": NodeFacts("gpu-1", "linux/amd64", roles=("inference",))}
    [w] = desired_workloads(spec, nodes)["gpu-1"]
    assert w["artifact"] == art
    assert w["run"] == {"command": ["bin/a"], "user": "fleetkeeper-workload"}
