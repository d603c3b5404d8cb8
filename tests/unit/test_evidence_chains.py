"""``agent.evidence.chains`` on hand-built Git objects (pure: the signatures themselves are
checked by ``agent.approvers``, in tests/integration/test_approver_evidence.py). Each bad
input is refused with a reason that names the workload and what is wrong."""

from __future__ import annotations

import base64
import hashlib
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
# a release whose entry carries the bytes of other files of the approved tree (issue 17)
WITH_FILES = {
    **RELEASE,
    "config": {"files": [{"from": "config/hello/soul.md", "to": "soul.md", "template": True}]},
    "secrets": [{"name": "API_KEY", "from": "secrets/hello/key.age", "as": "env"}],
}
AGE = b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"
OTHER_AGE = b"-----BEGIN AGE ENCRYPTED FILE-----\nb3RoZXI=\n-----END AGE ENCRYPTED FILE-----\n"
TREE = {"config/hello/soul.md": b"I am ${node.name}\n", "secrets/hello/key.age": AGE}


def tree(*entries: tuple[str, str, str]) -> bytes:
    return b"".join(f"{m} {n}".encode() + b"\0" + bytes.fromhex(i) for m, n, i in entries)


def nest(files: dict[str, tuple[str, bytes]]) -> tuple[str, list[tuple[str, bytes]]]:
    """The root tree id and every tree and blob object holding ``files`` (path -> mode, bytes)."""
    objects: list[tuple[str, bytes]] = []
    here: dict[str, tuple[str, bytes]] = {}
    below: dict[str, dict[str, tuple[str, bytes]]] = {}
    for path, entry in files.items():
        head, _, rest = path.partition("/")
        if rest:
            below.setdefault(head, {})[rest] = entry
        else:
            here[head] = entry
    entries: list[tuple[str, str, str]] = []
    for name, (mode, data) in here.items():
        objects.append(("blob", data))
        entries.append((mode, name, object_id("blob", data)))
    for name, sub in below.items():
        sub_id, sub_objects = nest(sub)
        objects.extend(sub_objects)
        entries.append(("40000", name, sub_id))
    body = tree(*sorted(entries, key=lambda e: e[1] + ("/" if e[0] == "40000" else "")))
    return object_id("tree", body), [("tree", body), *objects]


def build(
    file_bytes: bytes,
    *,
    file_mode: str = "100644",
    signed: bool = True,
    extra: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    """Evidence for releases/hello/1.0.0.yaml (and ``extra`` files) under a tag."""
    files = {"releases/hello/1.0.0.yaml": (file_mode, file_bytes)}
    files.update({p: ("100644", b) for p, b in (extra or {}).items()})
    root, objects = nest(files)
    commit = (
        f"tree {root}\nauthor a <a@b> 1 +0000\ncommitter a <a@b> 1 +0000\n\nreleases\n"
    ).encode()
    tag = (
        f"object {object_id('commit', commit)}\ntype commit\ntag deploy/1\n"
        "tagger a <a@b> 1 +0000\n\ndeploy\n"
    ).encode() + (SIG if signed else b"")
    objects = [("tag", tag), ("commit", commit), *objects]
    return {
        "objects": [{"type": t, "data": base64.b64encode(b).decode()} for t, b in objects],
        "workloads": {"hello": object_id("tag", tag)},
    }


def document(
    evidence: dict[str, Any] | None, release: dict[str, Any] = RELEASE, **over: Any
) -> dict[str, Any]:
    entry = workload_entry(release, "gpu-1", LABELS, "linux/amd64", TREE.__getitem__)
    assert entry is not None
    doc: dict[str, Any] = {"node": "gpu-1", "workloads": [{**entry, **over}]}
    if evidence is not None:
        doc["evidence"] = evidence
    return doc


FILE = yaml.safe_dump(RELEASE).encode()
FILE2 = yaml.safe_dump(WITH_FILES).encode()


def with_files(**over: Any) -> dict[str, Any]:
    """The WITH_FILES entry under its genuine evidence, with ``over`` in the document."""
    return document(build(FILE2, extra=TREE), WITH_FILES, **over)


def swap_config(content: bytes) -> dict[str, Any]:
    entry = document(None, WITH_FILES)["workloads"][0]
    f = {**entry["config"]["files"][0], "content": base64.b64encode(content).decode()}
    f["sha256"] = hashlib.sha256(content).hexdigest()  # self-consistent: only the tree says no
    return {**entry["config"], "files": [f]}


def drop(kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(ev: dict[str, Any]) -> dict[str, Any]:
        return {**ev, "objects": [o for o in ev["objects"] if o["type"] != kind]}

    return edit


def drop_blob(ev: dict[str, Any], data: bytes) -> dict[str, Any]:
    gone = {"type": "blob", "data": base64.b64encode(data).decode()}
    return {**ev, "objects": [o for o in ev["objects"] if o != gone]}


def test_config_and_secrets_from_the_approved_tree_pass() -> None:
    doc = with_files()
    w = doc["workloads"][0]
    assert base64.b64decode(w["config"]["files"][0]["content"]) == b"I am gpu-1\n"
    assert w["secrets"][0]["age"] == AGE.decode()
    claims = chains(doc, node="gpu-1", labels=LABELS, platform="linux/amd64")
    assert len(claims) == 1 and claims[0].what.startswith("tag deploy/1 (")
    # the same evidence for another node: the template fills in differently
    with pytest.raises(EvidenceRefused, match="config.files differ"):
        chains(doc, node="gpu-2", labels=LABELS, platform="linux/amd64")


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
        # what the approved file does not name cannot be made up by the reconciler
        (
            document(build(FILE), secrets=[{"name": "k", "as": "env", "age": "x"}]),
            "secrets differ from the approved releases/hello/1.0.0.yaml",
        ),
        (document(build(FILE), config={"files": []}), "config differ from the approved"),
        # config and secrets followed through the same tree
        (with_files(config=swap_config(b"I am root\n")), "config.files differ"),
        (
            with_files(
                secrets=[
                    {
                        **document(None, WITH_FILES)["workloads"][0]["secrets"][0],
                        "age": OTHER_AGE.decode(),
                    }
                ]
            ),
            "secrets differ from the approved",
        ),
        (
            document(build(FILE2, extra={"secrets/hello/key.age": AGE}), WITH_FILES),
            "the approved tree has no config/hello/soul.md",
        ),
        (
            document(drop_blob(build(FILE2, extra=TREE), TREE["config/hello/soul.md"]), WITH_FILES),
            f"blob {object_id('blob', TREE['config/hello/soul.md'])[:12]} is not in the evidence",
        ),
        (
            document(
                build(FILE2, extra={**TREE, "config/hello/soul.md": b"\xff${node.name}"}),
                WITH_FILES,
            ),
            "a template config file is not UTF-8 text",
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
