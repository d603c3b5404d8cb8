"""The pure half of age secrets: recipients lists, stanza counts, whom to encrypt to, the
secret rules of validation, and the rollout target's digest (issue 17)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fleetkeeper_common.age import decrypt, encrypt, generate_identity
from fleetkeeper_common.digests import secrets_digest, target_digest
from reconciler.plan.state import fingerprint
from reconciler.secret_files import (
    Recipient,
    attach_ciphertexts,
    audience,
    parse_recipients,
    render_recipients,
    x25519_stanzas,
)
from reconciler.spec import build_spec
from reconciler.validate import validate_files
from tests.helpers.fleetdocs import fleet_files, node_doc, release_doc

IDS = {n: generate_identity() for n in ("n1", "n2", "n3", "op")}
SECRET = {"name": "API_KEY", "from": "secrets/app/key.age", "as": "env"}


def files_for(
    nodes: dict[str, str | None], encrypted_to: list[str], listed: list[str] | None = None
) -> dict[str, bytes]:
    """Raw files: nodes (name -> ageRecipient or None), a release reading SECRET, the age
    file encrypted to ``encrypted_to`` (identity names), its recipients list ``listed``."""
    docs = []
    for name, recipient in nodes.items():
        doc = node_doc(name, roles=["coding"], labels={"port": "8080"})
        if recipient is not None:
            doc["ageRecipient"] = recipient
        docs.append(doc)
    rel = release_doc("app", "1.0.0", roles=["coding"])
    rel["secrets"] = [SECRET]
    out = {p: yaml.safe_dump(d).encode() for p, d in fleet_files(docs, [rel]).items()}
    if encrypted_to:
        out["secrets/app/key.age"] = encrypt(b"v", [IDS[n].recipient for n in encrypted_to])
    keys = [IDS[n].recipient for n in (encrypted_to if listed is None else listed)]
    if keys:
        out["secrets/app/key.recipients"] = render_recipients(
            Recipient(k, "x") for k in keys
        ).encode()
    return out


R = {n: i.recipient for n, i in IDS.items()}
CASES: list[tuple[str, dict[str, bytes], str | None]] = [
    ("encrypted to every target", files_for({"n1": R["n1"], "n2": R["n2"]}, ["n1", "n2"]), None),
    ("missing age file", files_for({"n1": R["n1"]}, []), "secrets/app/key.age does not exist"),
    (
        "new target not a recipient",
        files_for({"n1": R["n1"], "n3": R["n3"]}, ["n1"]),
        "is not encrypted to targeted node(s) n3",
    ),
    (
        "target without ageRecipient",
        files_for({"n1": R["n1"], "n2": None}, ["n1"]),
        "targeted node(s) n2 have no ageRecipient",
    ),
    (
        "stale list",
        files_for({"n1": R["n1"], "n2": R["n2"]}, ["n1"], listed=["n1", "n2"]),
        "lists 2 recipient(s) but secrets/app/key.age is encrypted to 1",
    ),
]


@pytest.mark.parametrize(("what", "files", "want"), CASES, ids=[c[0] for c in CASES])
def test_secret_rules(what: str, files: dict[str, bytes], want: str | None) -> None:
    report = validate_files(files)
    messages = [v.message for v in report.errors]
    if want is None:
        assert messages == [], what
    else:
        assert any(want in m for m in messages), (what, messages)
        (v,) = [v for v in report.errors if want in v.message]
        assert v.path == "releases/app/1.0.0.yaml" and v.line > 1  # at secrets[0].from


def test_not_an_age_file_and_a_bad_recipient_are_named() -> None:
    files = files_for({"n1": R["n1"]}, ["n1"])
    files["secrets/app/key.age"] = b"API_KEY=plain text\n"
    assert any("is not an age file" in v.message for v in validate_files(files).errors)
    bad = R["n1"][:-1] + ("q" if R["n1"][-1] != "q" else "p")  # checksum broken
    files = files_for({"n1": bad}, ["n1"])
    (v,) = [v for v in validate_files(files).errors if "ageRecipient" in v.message]
    assert v.path == "nodes/n1.yaml" and "is not an age X25519 recipient" in v.message


def test_recipients_list_and_stanzas() -> None:
    text = render_recipients([Recipient(R["n1"], "node n1"), Recipient(R["op"], "operator")])
    assert parse_recipients(text) == (Recipient(R["n1"], "node n1"), Recipient(R["op"], "operator"))
    cipher = encrypt(b"x", [R["n1"], R["n2"], R["op"]])
    assert x25519_stanzas(cipher) == 3
    assert x25519_stanzas(b"-----BEGIN AGE ENCRYPTED FILE-----\n!!\n") is None
    assert x25519_stanzas(b"not age") is None
    assert decrypt(cipher, IDS["n2"]) == b"x"


def test_audience_by_release_nodes_roles() -> None:
    docs: list[dict[str, Any]] = [node_doc("n1", roles=["coding"]), node_doc("n2", roles=["web"])]
    for d in docs:
        d["ageRecipient"] = R[d["name"]]
    docs.append(node_doc("n3", roles=["coding"]))  # no ageRecipient yet
    fleet = {"apiVersion": "fleetkeeper/v1", "kind": "Fleet", "name": "f"}
    fleet["secrets"] = {"operatorRecipients": [R["op"]]}
    spec = build_spec(
        fleet_files(docs, [release_doc("app", "1.0.0", roles=["coding"])], fleet=fleet)
    )
    by_release = audience(spec, release="app")
    assert by_release.nodes == ("n1", "n3") and by_release.without == ("n3",)
    assert [r.key for r in by_release.recipients] == [R["n1"], R["op"]]
    assert audience(spec, nodes=["n2"]).nodes == ("n2",)
    assert audience(spec, roles=["web", "coding"]).nodes == ("n1", "n2", "n3")
    with pytest.raises(KeyError):
        audience(spec, release="nope")
    with pytest.raises(KeyError):
        audience(spec, nodes=["ghost"])


def test_ciphertext_is_part_of_the_rollout_target_and_fingerprint() -> None:
    files = files_for({"n1": R["n1"]}, ["n1"])
    spec = build_spec(validate_files(files).documents)
    first = attach_ciphertexts(spec, files)
    files["secrets/app/key.age"] = encrypt(b"rotated", [R["n1"]])
    second = attach_ciphertexts(spec, files)
    (a,), (b,) = first.deployables, second.deployables
    assert a.secrets[0].ciphertext.startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    assert a.target_digest != b.target_digest and fingerprint(a) != fingerprint(b)
    # without secrets: the digest is the config digest alone (None without config), and
    # the fingerprint is what it was before secrets existed
    plain = build_spec(fleet_files([node_doc("n1")], [release_doc("app", "1.0.0")])).deployables[0]
    assert plain.target_digest is None and target_digest("abc", None) == "abc"
    assert secrets_digest([]) is None
