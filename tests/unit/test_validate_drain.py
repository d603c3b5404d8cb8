"""``drain`` in releases and models: each mistake at its path:line:column, and the block
reaching the node's desired document with its placeholders resolved."""

from __future__ import annotations

import pytest

import schema
from reconciler.plan.select import NodeFacts, desired_workloads
from reconciler.spec import build_spec
from tests.helpers.fleetfiles import basic_fleet, lines, release, run
from tests.unit.test_select import release as release_doc

AT = "releases/infer/1.0.0.yaml:14"


@pytest.mark.parametrize(
    ("tail", "want"),
    [
        ('drain: {http: "http://127.0.0.1:${node.labels.port}/drain", timeoutSeconds: 30}\n', []),
        ("drain: {file: /run/infer/update.lock}\n", []),
        (
            'drain: {http: "http://x/d", file: /run/x.lock}\n',
            [
                f"{AT}:8: drain gives both http and file: give one, drain: {{http: URL}} (the "
                "agent POSTs it until it answers 200) or drain: {file: PATH} (an update lock "
                "the workload removes when idle)"
            ],
        ),
        (
            "drain: {timeoutSeconds: 20}\n",
            [
                f"{AT}:8: drain gives neither http nor file: give one, drain: {{http: URL}} (the "
                "agent POSTs it until it answers 200) or drain: {file: PATH} (an update lock "
                "the workload removes when idle)"
            ],
        ),
        (
            "drain: {file: /x.lock, timeoutSeconds: 0}\n",
            [f"{AT}:40: drain.timeoutSeconds: 0 is less than the minimum of 1"],
        ),
        (
            "drain: {file: run/x.lock}\n",
            [
                f"{AT}:15: drain.file: 'run/x.lock' is not an absolute path: the update lock "
                "the workload holds (creates) while busy; the agent waits until it is gone "
                "(placeholders allowed)"
            ],
        ),
        (
            'drain: {http: "ftp://x", timeoutSecond: 5}\n',
            [
                f"{AT}:15: drain.http: 'ftp://x' is not an http:// or https:// URL the agent "
                "POSTs to until it answers 200 or 204 (idle); 202 or anything else means busy "
                "(placeholders allowed)",
                f"{AT}:26: unknown field 'timeoutSecond' in drain; did you mean 'timeoutSeconds'?",
            ],
        ),
        (
            'drain: {http: "http://127.0.0.1:${node.labels.nope}/drain"}\n',
            [f"{AT}:15: ${{node.labels.nope}} but targeted node(s) gpu-1 have no label 'nope'"],
        ),
        (
            'drain: {http: "http://127.0.0.1:${node.port}/drain"}\n',
            [
                f"{AT}:15: unknown placeholder ${{node.port}}; use ${{node.name}} or "
                "${node.labels.KEY}"
            ],
        ),
    ],
)
def test_drain_validation(tail: str, want: list[str]) -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0.yaml"] = release(tail=tail)
    assert lines(run(files)) == want


def test_drain_reaches_the_desired_document_resolved() -> None:
    drain = {"http": "http://127.0.0.1:${node.labels.port}/drain", "timeoutSeconds": 45}
    spec = build_spec({"releases/a/1.0.0.yaml": release_doc("a", "1.0.0", drain=drain)})
    node = NodeFacts("gpu-1", "linux/amd64", roles=("inference",), labels={"port": "8081"})
    [w] = desired_workloads(spec, {"gpu-1": node})["gpu-1"]
    assert w["drain"] == {"http": "http://127.0.0.1:8081/drain", "timeoutSeconds": 45}
    doc = {
        "apiVersion": "fleetkeeper/v1",
        "kind": "DesiredState",
        "node": "gpu-1",
        "generation": 1,
        "revision": None,
        "approval": None,
        "workloads": [{**w, "artifact": {**w["artifact"], "size": 1}, "retryGeneration": 2}],
    }
    assert schema.errors("desired-state", doc) == []
