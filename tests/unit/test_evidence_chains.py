"""``agent.evidence.chains`` on hand-built Git objects (pure: the signatures themselves are
checked by ``agent.approvers``, in tests/integration/test_approver_evidence.py). Each bad
input is refused with a reason that names the workload and what is wrong."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from agent.evidence import EvidenceRefused, chains
from fleetkeeper_common.fleetfile import workload_entry
from fleetkeeper_common.gitobjects import object_id

SIG = b"-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n"
RELEASE = {
    "apiVersion": "fleetkeeper/v1",
    "kind": "Release",
    "agent": "hello",
    "version": "1.0.0",
    "artifacts": [
        {"platform": "linux/amd64", "url": "https://x/h.tgz", "sha256": "a" * 64, "size": 3}
    ],
    "run": {"command": ["bin/hello", "--port", "${node.labels.port}"]},
}
LABELS = {"port": "8080"}


def tree(*entries: tuple[str, str, str]) -> bytes:
    return b"".join(f"{m} {n}".encode() + b"\0" + bytes.fromhex(i) for m, n, i in entries)


def build(file_bytes: bytes, *, file_mode: str = "100644", signed: bool = True) -> dict[str, Any]:
    """Evidence for releases/hello/1.0.0.yaml under a tag (signed or not)."""
    blob = file_bytes
    hello = tree((file_mode, "1.0.0.yaml", object_id("blob", blob)))
    releases = tree(("40000", "hello", object_id("tree", hello)))
    root = tree(("40000", "releases", object_id("tree", releases)))
    commit = (
        f"tree {object_id('tree', root)}\nauthor a <a@b> 1 +0000\n"
        "committer a <a@b> 1 +0000\n\nreleases\n"
    ).encode()
    tag = (
        f"object {object_id('commit', commit)}\ntype commit\ntag deploy/1\n"
        "tagger a <a@b> 1 +0000\n\ndeploy\n"
    ).encode() + (SIG if signed else b"")
    objects = [
        ("tag", tag),
        ("commit", commit),
        ("tree", root),
        ("tree", releases),
        ("tree", hello),
        ("blob", blob),
    ]
    return {
        "objects": [{"type": t, "data": base64.b64encode(b).decode()} for t, b in objects],
        "workloads": {"hello": object_id("tag", tag)},
    }


def document(evidence: dict[str, Any] | None, **over: Any) -> dict[str, Any]:
    entry = workload_entry(RELEASE, "gpu-1", LABELS, "linux/amd64")
    assert entry is not None
    doc: dict[str, Any] = {"node": "gpu-1", "workloads": [{**entry, **over}]}
    if evidence is not None:
        doc["evidence"] = evidence
    return doc


FILE = yaml.safe_dump(RELEASE).encode()


def drop(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(ev: dict[str, Any]) -> dict[str, Any]:
        return {**ev, "objects": [o for o in ev["objects"] if o["type"] != kind]}

    return edit


def test_genuine_chain_leaves_one_signature_to_check() -> None:
    claims = chains(document(build(FILE)), node="gpu-1", labels=LABELS, platform="linux/amd64")
    assert len(claims) == 1 and claims[0].what.startswith("tag deploy/1 (")
    assert claims[0].signed.signature == SIG


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (document(None), "no approval evidence in the document"),
        (document({"objects": [], "workloads": {}}), "workload 'hello': no approval evidence"),
        (document(drop("commit")(build(FILE))), "workload 'hello': commit "),
        (document(drop("blob")(build(FILE))), "is not in the evidence"),
        (document(build(FILE, signed=False)), "tag deploy/1 is not signed"),
        (document(build(FILE, file_mode="120000")), "is not a regular file"),
        (document(build(b"a: 1\na: 2\n")), "duplicate key"),
        (document(build(FILE), version="1.0.1"), "no releases/hello/1.0.1.yaml"),
        (document(build(FILE), artifact={"url": "https://evil"}), "artifact.platform"),
        (
            document(build(FILE), secrets=[{"name": "k", "as": "env", "ciphertext": "x"}]),
            "carries secrets, which a node with approvers cannot check",
        ),
        (
            document({"objects": [{"type": "blob", "data": "%%"}], "workloads": {}}),
            "evidence.objects[0].data is not base64",
        ),
        (
            document({"objects": [{"type": "exe", "data": ""}], "workloads": {}}),
            "evidence.objects[0] needs a git object type",
        ),
    ],
)
def test_bad_evidence_is_refused_naming_what(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(EvidenceRefused, match=why.replace("(", r"\(").replace("[", r"\[")):
        chains(doc, node="gpu-1", labels=LABELS, platform="linux/amd64")


def test_a_document_without_workloads_needs_no_evidence() -> None:
    assert chains({"workloads": []}, node="gpu-1", labels={}, platform="linux/amd64") == []
