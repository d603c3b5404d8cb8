"""The faster selection (selectors as sets once per call, memoised semver keys) gives what
the per-node ``matches`` definition gives: same nodes, same order, same documents."""

from __future__ import annotations

import re
from collections.abc import Mapping

import pytest

from reconciler.plan.select import (
    NodeFacts,
    desired_workloads,
    latest_versions,
    matches,
    resolve,
    selected,
    semver_key,
    target_nodes,
    workload_document,
)
from reconciler.spec import JSON, Deployable, FleetSpec, Targets, build_spec, parse_node
from reconciler.validate import validate_files
from tests.helpers.fleetfiles import basic_fleet, node, release


def reference_targets(d: Deployable, nodes: Mapping[str, NodeFacts]) -> list[str]:
    """target_nodes as it was written before: ``matches`` node by node."""
    chosen = sorted(n for n, f in nodes.items() if matches(d.targets, f))
    canary = [c for c in d.rollout.canary if c in chosen]
    return canary + [n for n in chosen if n not in canary]


def reference_latest(spec: FleetSpec) -> dict[str, Deployable]:
    key = semver_key.__wrapped__  # the unmemoised function
    best: dict[str, Deployable] = {}
    for d in spec.deployables:
        cur = best.get(d.name)
        if cur is None or key(d.version) > key(cur.version):
            best[d.name] = d
    return best


def reference_desired(
    spec: FleetSpec, nodes: Mapping[str, NodeFacts]
) -> dict[str, list[dict[str, JSON]]]:
    out: dict[str, list[dict[str, JSON]]] = {n: [] for n in sorted(nodes)}
    latest = reference_latest(spec)
    for name in sorted(latest):
        d = latest[name]
        for node_name in reference_targets(d, nodes):
            doc = workload_document(d, nodes[node_name])
            if doc is not None:
                out[node_name].append(doc)
    return out


NODES = {
    n.name: NodeFacts.from_spec(n)
    for n in (
        parse_node(None, {"name": "a", "platform": "linux/amd64", "roles": ["x", "y"]}),
        parse_node(
            None,
            {"name": "b", "platform": "linux/arm64", "accelerator": "cuda", "roles": ["y"]},
        ),
        parse_node(None, {"name": "c", "platform": "linux/amd64", "labels": {"zone": "1"}}),
        parse_node(
            None,
            {"name": "d", "platform": "darwin/arm64", "accelerator": "metal", "roles": ["x"]},
        ),
    )
}
# registered under another key than its name: selection answers keys, matches names
NODES["e-key"] = NodeFacts("e", "linux/amd64", roles=("x",), labels={"zone": "1"})

SELECTORS = {
    "nothing": Targets(),
    "roles": Targets(roles=("x",)),
    "no such role": Targets(roles=("z",)),
    "empty roles": Targets(roles=()),
    "accelerators": Targets(accelerators=("cuda", "metal")),
    "labels": Targets(labels={"zone": "1"}),
    "empty labels": Targets(labels={}),
    "nodes": Targets(nodes=("a", "e", "e-key", "zz")),
    "roles and labels": Targets(roles=("x",), labels={"zone": "1"}),
    "all four": Targets(roles=("x", "y"), accelerators=("cpu",), labels={}, nodes=("a", "d")),
}


@pytest.mark.parametrize("targets", list(SELECTORS.values()), ids=list(SELECTORS))
def test_selected_is_matches_node_by_node(targets: Targets) -> None:
    assert selected(targets, NODES) == [n for n, f in NODES.items() if matches(targets, f)]


@pytest.mark.parametrize("version", ["1.0.0", "1.0.0-rc.1", "1.0.0+b", "10.2.3-a.b.9", "x", ""])
def test_memoised_semver_key_is_the_function(version: str) -> None:
    assert semver_key(version) == semver_key.__wrapped__(version)


def fleet(**extra: str) -> dict[str, str]:
    return {
        **basic_fleet(),
        "nodes/gpu-2.yaml": node("gpu-2", roles="[inference, edge]"),
        "nodes/mac-1.yaml": node("mac-1", "darwin/arm64", "metal", roles="[edge]"),
        "releases/infer/1.1.0.yaml": release(version="1.1.0", tail="rollout:\n  canary: [gpu-2]\n"),
        "releases/infer/1.1.0-rc.1.yaml": release(version="1.1.0-rc.1"),
        "releases/edge/1.0.0.yaml": release("edge", roles="[edge]"),
        "releases/all/2.0.0.yaml": release("all", tail="  labels: {port: '8080'}\n"),
        **extra,
    }


CHANGES = {
    "start": fleet(),
    "a newer edge": fleet(**{"releases/edge/1.2.0.yaml": release("edge", "1.2.0", roles="[edge]")}),
    "node relabelled": fleet(**{"nodes/gpu-1.yaml": node("gpu-1", labels='{port: "9"}')}),
    "node gone": {k: v for k, v in fleet().items() if k != "nodes/gpu-2.yaml"},
}


@pytest.mark.parametrize("files", list(CHANGES.values()), ids=list(CHANGES))
def test_desired_workloads_equal_the_reference(files: dict[str, str]) -> None:
    report = validate_files({p: t.encode() for p, t in files.items()})
    spec = build_spec(dict(report.documents))
    nodes = {name: NodeFacts.from_spec(n) for name, n in spec.nodes.items()}
    for d in spec.deployables:
        assert target_nodes(d, nodes) == reference_targets(d, nodes)
    assert latest_versions(spec) == reference_latest(spec)
    got = desired_workloads(spec, nodes)
    assert got == reference_desired(spec, nodes)
    assert sum(len(ws) for ws in got.values()) >= 2  # something was selected


def reference_resolve(value: JSON, node: NodeFacts) -> JSON:
    """resolve as it was written before: the regex on every string."""
    if isinstance(value, str):
        return re.sub(
            r"\$\{node\.(name|labels\.([A-Za-z0-9._/-]+))\}",
            lambda m: node.name if m[1] == "name" else node.labels.get(m[2], ""),
            value,
        )
    if isinstance(value, list):
        return [reference_resolve(v, node) for v in value]
    if isinstance(value, dict):
        return {k: reference_resolve(v, node) for k, v in value.items()}
    return value


TEMPLATES: dict[str, JSON] = {
    "plain string": "bin/agent",
    "name": "${node.name}",
    "label and text": "port=${node.labels.port}/${node.labels.none}!",
    "unknown placeholder kept": "${node.zone} and ${ node.name }",
    "nested": {
        "command": ["bin/a", "--port", "${node.labels.port}", 3, None, True],
        "env": {"NODE": "${node.name}", "FIXED": "x", "N": 1.5, "deep": [{"k": "${node.name}"}]},
    },
    "scalars": [1, 2.0, False, None],
}


@pytest.mark.parametrize("value", list(TEMPLATES.values()), ids=list(TEMPLATES))
def test_resolve_equals_the_regex_on_every_string(value: JSON) -> None:
    for facts in NODES.values():
        got = resolve(value, facts)
        assert got == reference_resolve(value, facts)
        assert got is not value or not isinstance(value, list | dict)  # a fresh container
