"""Both halves on the same vectors: the workload entry the reconciler renders from a release
or model file (``select.workload_document``) is the one an agent re-renders from the
approved file's bytes (``fleetkeeper_common.fleetfile``), and the YAML both refuse."""

from __future__ import annotations

import base64

import pytest
import yaml

from fleetkeeper_common.fleetfile import FleetFileError, load_strict, workload_entry
from fleetkeeper_common.rendering import fill
from reconciler.plan.select import NodeFacts, resolve, workload_document
from reconciler.secret_files import attach_ciphertexts
from reconciler.spec import FleetSpec, parse_deployable, parse_fleet, parse_node
from reconciler.validate.config_files import load_config
from reconciler.validate.loader import load_file
from tests.helpers.fleetdocs import model_doc, node_doc, release_doc

NODES = [
    node_doc("gpu-1", labels={"port": "8080", "site": "lab"}),
    node_doc("mac-1", platform="darwin/arm64", labels={"port": "9000"}),
    node_doc("bare", platform="linux/arm64"),  # no labels: placeholders become ""
]
RELEASE = release_doc(
    "inference-agent",
    "0.8.4",
    command=["bin/ia", "--port", "${node.labels.port}", "--name", "${node.name}"],
    env={"SITE": "${node.labels.site}", "LOG_LEVEL": "info"},
)
RELEASE["health"] = {"http": "http://127.0.0.1:${node.labels.port}/healthz", "timeoutSeconds": 9}
RELEASE["versionProbe"] = ["bin/ia", "--version"]
RELEASE["drain"] = {"http": "http://127.0.0.1:${node.labels.port}/drain", "timeoutSeconds": 30}
RELEASE["artifacts"][0]["unpackedSize"] = 4096
RELEASE["data"] = {"snapshot": True, "maxBytes": 1 << 20}
# config files and an age ciphertext: the other files of the tree the entry carries
WITH_FILES = release_doc("coder", "2.0.0", platforms=("linux/amd64", "darwin/arm64"))
WITH_FILES["config"] = {
    "files": [
        {"from": "config/coder/soul.md", "to": "soul.md", "template": True},
        {"from": "config/coder/tools.json", "to": "tools/tools.json"},
        {"from": "config/coder/raw.txt", "to": "raw.txt", "template": True},  # no placeholder
    ],
    "onChange": "none",
}
WITH_FILES["secrets"] = [
    {"name": "API_KEY", "from": "secrets/coder/api-key.age", "as": "env"},
    {"name": "TOKEN", "from": "secrets/coder/token.age", "as": "file"},
]
TREE_FILES = {
    "config/coder/soul.md": b"I am ${node.name} at ${node.labels.site}; ${HOME} stays\n",
    "config/coder/tools.json": b'{"tools": ["${node.name}"]}\n',  # not a template: kept
    "config/coder/raw.txt": b"plain\n",
    "secrets/coder/api-key.age": b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n"
    b"-----END AGE ENCRYPTED FILE-----\n",
    "secrets/coder/token.age": b"-----BEGIN AGE ENCRYPTED FILE-----\ndG9r\n"
    b"-----END AGE ENCRYPTED FILE-----\n",
}
FILES = {
    "releases/inference-agent/0.8.4.yaml": RELEASE,
    "releases/coder/2.0.0.yaml": WITH_FILES,
    "models/qwen/1.0.0.yaml": model_doc("qwen", "1.0.0"),
    "releases/minimal/1.0.0.yaml": {
        **release_doc("minimal", "1.0.0", platforms=("linux/amd64",)),
        "run": {"command": ["bin/minimal"]},
    },
}


@pytest.mark.parametrize("path", sorted(FILES))
@pytest.mark.parametrize("node", NODES, ids=lambda n: str(n["name"]))
def test_agent_renders_what_the_reconciler_renders(path: str, node: dict[str, object]) -> None:
    data = yaml.safe_dump(FILES[path], sort_keys=False).encode()
    loaded, problems = load_file(path, data)
    assert loaded is not None and problems == []
    facts = NodeFacts.from_spec(parse_node(None, node))
    # the reconciler's own way in: config bytes read by the validator, ciphertext attached
    spec = FleetSpec(
        fleet=parse_fleet(None),
        nodes={},
        deployables=(parse_deployable(path, loaded.value, parse_fleet(None)),),
    )
    spec, violations = load_config(spec, lambda p: ("100644", TREE_FILES[p]))
    assert violations == ()
    spec = attach_ciphertexts(spec, TREE_FILES)
    reconciler_side = workload_document(spec.deployables[0], facts)
    agent_side = workload_entry(
        load_strict(data, path),
        facts.name,
        dict(facts.labels),
        facts.platform,
        TREE_FILES.__getitem__,
    )
    assert agent_side == reconciler_side
    if path == "releases/coder/2.0.0.yaml" and agent_side is not None:
        soul = base64.b64decode(agent_side["config"]["files"][0]["content"])
        site = dict(facts.labels).get("site", "")
        assert soul == f"I am {facts.name} at {site}; ${{HOME}} stays\n".encode()


def test_config_and_secrets_are_never_rendered_without_their_files() -> None:
    with pytest.raises(FleetFileError, match="config and secrets need the files they name"):
        workload_entry(WITH_FILES, "gpu-1", {}, "linux/amd64")


@pytest.mark.parametrize(
    "value",
    ["${node.name}:${node.labels.port}", ["a", "${node.labels.nope}x"], {"k": "${node.name}"}, 7],
)
def test_placeholders_resolve_alike(value: object) -> None:
    node = NodeFacts.from_spec(parse_node(None, NODES[0]))
    assert fill(value, node.name, dict(node.labels)) == resolve(value, node)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("a: 1\na: 2\n", "duplicate key"),
        ("1: x\n", "key is not a string"),
        ("a: !!binary aGk=\n", "not a plain YAML value"),
        ("a: !!set {x: null}\n", "unsupported YAML tag"),
        ("a: 2026-01-01\n", "not a plain YAML value"),
        ("a: .inf\n", "not a plain YAML value"),
        ("base: &b {x: 1}\nc:\n  <<: *b\n", "key is not a string"),
    ],
)
def test_yaml_the_validator_refuses_the_node_refuses(text: str, why: str) -> None:
    _, problems = load_file("releases/a/1.0.0.yaml", text.encode())
    assert problems  # the reconciler's validator refuses it ...
    with pytest.raises(FleetFileError, match=why):  # ... and so does the node
        load_strict(text.encode(), "releases/a/1.0.0.yaml")
