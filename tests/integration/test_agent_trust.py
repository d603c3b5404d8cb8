"""A real agent against a fake reconciler (the attacker, on 127.0.0.1): every forged,
replayed, misdirected or expired document is refused, nothing on the node changes, the old
version keeps serving from its own port, and the report names the refusal."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, make_agent
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import Artifact, build_program
from tests.helpers.desired import desired_doc, workload_doc
from tests.helpers.fakereconciler import (
    FakeReconciler,
    fake_reconciler,
    new_key,
    reported_refusal,
    sign_batch,
    sign_doc,
)
from tests.helpers.wait import wait_until

NODE = "gpu-1"


class Rig:
    def __init__(self, tmp: Path, fake: FakeReconciler, arts: ArtifactServer) -> None:
        self.tmp, self.fake, self.arts = tmp, fake, arts
        self.port = free_port()
        self.key = new_key(tmp / "reconciler_key")
        self.marker = tmp / "MARKER"
        self.built = {v: build_program(tmp / "artifacts", "hello", v) for v in ("1.0.0", "2.0.0")}

    def workload(self, version: str, **over: Any) -> dict[str, Any]:
        art: Artifact = self.built[version]
        doc = workload_doc("hello", version, art, self.arts.url(art.path.name), self.port)
        doc.update(over)
        return doc

    def doc(self, generation: int, version: str, node: str = NODE, **over: Any) -> dict[str, Any]:
        return desired_doc(node, generation, [self.workload(version, **over)])

    def serves(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).text.strip()

    def agent(self, trusted: list[Path] | None = None, **config: Any) -> AgentProc:
        keys = self.tmp / "trusted_keys"
        pubs = trusted or [self.tmp / "reconciler_key.pub"]
        keys.write_text("".join(p.read_text() for p in pubs))
        return make_agent(
            self.tmp,
            NODE,
            self.fake.url,
            "b" * 32,
            trustedKeys=str(keys),
            allowFileURLs=False,
            **config,
        )


def refused_with(fake: FakeReconciler, text: str) -> Callable[[AgentProc], bool]:
    def check(_: AgentProc) -> bool:
        return reported_refusal(fake.last_report(), text)

    return check


def healthy(version: str) -> Callable[[AgentProc], bool]:
    def check(a: AgentProc) -> bool:
        w = a.workload("hello")
        return w is not None and (w["version"], w["phase"]) == (version, "Healthy")

    return check


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    (tmp_path / "artifacts").mkdir()
    with fake_reconciler() as fake, ArtifactServer(tmp_path / "artifacts") as arts:
        yield Rig(tmp_path, fake, arts)


def test_forged_replayed_and_misdirected_documents_change_nothing(rig: Rig) -> None:
    fake = rig.fake
    touch = ["/bin/sh", "-c", f"touch {rig.marker}"]
    attacker = new_key(rig.tmp / "attacker_key")
    fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0")))
    agent = rig.agent()
    try:
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy")
        assert rig.serves() == "hello 1.0.0"
        versions = rig.tmp / NODE / "root" / "hello" / "versions"
        installed = sorted(p.name for p in versions.iterdir())

        attacks: list[tuple[str, bytes, str]] = [
            (
                "unsigned",
                json_bytes(rig.doc(2, "2.0.0", run={"command": touch})),
                "unsigned document",
            ),
            (
                "tampered on the wire",
                tampered(sign_doc(rig.key, rig.doc(2, "2.0.0")), touch),
                "bad signature by trusted key SHA256:",
            ),
            (
                "untrusted key",
                sign_doc(attacker, rig.doc(2, "2.0.0", run={"command": touch})),
                "signed by untrusted key",
            ),
            (
                "another node",
                sign_doc(rig.key, rig.doc(2, "2.0.0", node="gpu-2", run={"command": touch})),
                "document for node 'gpu-2'",
            ),
            (
                "expired",
                sign_doc(
                    rig.key,
                    rig.doc(2, "2.0.0", run={"command": touch}),
                    issued=time.time() - 7200,
                ),
                "document expired at",
            ),
            (
                "run.command outside the version directory",
                sign_doc(rig.key, rig.doc(2, "2.0.0", run={"command": touch})),
                "run.command: program '/bin/sh' is outside the version directory",
            ),
            (
                "versionProbe outside the version directory",
                sign_doc(rig.key, rig.doc(2, "2.0.0", versionProbe=touch)),
                "versionProbe: program '/bin/sh' is outside the version directory",
            ),
            (
                "file:// artifact",
                sign_doc(
                    rig.key,
                    rig.doc(
                        2,
                        "2.0.0",
                        artifact={
                            "platform": "linux/amd64",
                            "url": "file:///etc/hostname",
                            "sha256": "0" * 64,
                        },
                    ),
                ),
                "file:// artifact URLs need allowFileURLs: true",
            ),
        ]
        for what, body, reason in attacks:
            fake.serve(body)
            agent.wait_for(refused_with(fake, reason), what=f"refusal of {what}")
            assert not rig.marker.exists(), what
            assert rig.serves() == "hello 1.0.0", what
            assert sorted(p.name for p in versions.iterdir()) == installed, what
            assert agent.workload("hello")["version"] == "1.0.0"  # type: ignore[index]
        assert "refused desired state" in agent.logs()
        # no digest of what a file:// URL would have read is ever reported or logged
        import hashlib

        local = hashlib.sha256(Path("/etc/hostname").read_bytes()).hexdigest()
        assert local not in agent.logs()

        # A valid newer document is still accepted after all that.
        fake.serve(sign_doc(rig.key, rig.doc(3, "2.0.0")))
        agent.wait_for(healthy("2.0.0"), what="2.0.0 healthy")
        assert rig.serves() == "hello 2.0.0"
    finally:
        agent.stop()
        agent.kill_workloads()


def test_batch_signed_documents_verify_and_forged_proofs_change_nothing(rig: Rig) -> None:
    """The batch form (one signature over a Merkle root, each document with its inclusion
    proof) converges; an altered proof, another node's proof with this node's document
    swapped in, and a batch signature passed off as a single one are refused. The agent
    allows /bin/sh here, so only the signature check stands between the attacker's
    document and the marker."""
    import json

    fake = rig.fake
    touch = ["/bin/sh", "-c", f"touch {rig.marker}"]
    fleet = ["gpu-0", NODE, "gpu-2", "gpu-3", "gpu-4"]

    def batch(generation: int, version: str) -> dict[str, dict[str, Any]]:
        docs = [rig.doc(generation, version, node=n) for n in fleet]
        return {n: json.loads(b) for n, b in zip(fleet, sign_batch(rig.key, docs), strict=True)}

    first = batch(1, "1.0.0")
    assert first[NODE]["signatures"][0]["proof"]["size"] == len(fleet)
    fake.serve(json.dumps(first[NODE]).encode())
    agent = rig.agent(allowedPrograms=["/bin/sh"])
    try:
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy from a batch-signed document")
        assert rig.serves() == "hello 1.0.0"
        assert "refused desired state" not in agent.logs()
        versions = rig.tmp / NODE / "root" / "hello" / "versions"
        installed = sorted(p.name for p in versions.iterdir())

        second = batch(2, "2.0.0")
        altered = json.loads(json.dumps(second[NODE]))
        path = altered["signatures"][0]["proof"]["path"]
        path[1] = ("B" if path[1][0] != "B" else "C") + path[1][1:]
        swapped = json.loads(json.dumps(second["gpu-2"]))
        swapped["signed"] = {
            **second[NODE]["signed"],
            **rig.doc(2, "2.0.0", run={"command": touch}),
        }
        relabelled = json.loads(json.dumps(second[NODE]))
        del relabelled["signatures"][0]["proof"]
        attacks: list[tuple[str, dict[str, Any], str]] = [
            ("altered inclusion proof", altered, "over a batch of 5"),
            ("another node's proof, this node's document", swapped, "over a batch of 5"),
            ("batch signature relabelled as single", relabelled, "bad signature by trusted key"),
        ]
        for what, envelope, reason in attacks:
            fake.serve(json.dumps(envelope).encode())
            agent.wait_for(refused_with(fake, reason), what=f"refusal of {what}")
            assert not rig.marker.exists(), what
            assert rig.serves() == "hello 1.0.0", what
            assert sorted(p.name for p in versions.iterdir()) == installed, what
            assert agent.workload("hello")["version"] == "1.0.0"  # type: ignore[index]

        # the untouched batch-signed document of that same batch still rolls out
        fake.serve(json.dumps(second[NODE]).encode())
        agent.wait_for(healthy("2.0.0"), what="2.0.0 healthy")
        assert rig.serves() == "hello 2.0.0"
        assert not rig.marker.exists()
    finally:
        agent.stop()
        agent.kill_workloads()


def test_older_generation_after_restart_is_refused(rig: Rig) -> None:
    fake = rig.fake
    fake.serve(sign_doc(rig.key, rig.doc(5, "2.0.0")))
    agent = rig.agent()
    try:
        agent.start()
        agent.wait_for(healthy("2.0.0"), what="generation 5 healthy")
        assert agent.stop() == 0
        # The attacker replays an older, validly signed, unexpired document to a fresh
        # agent process: the generation high-water mark survived in the state directory.
        fake.reports.clear()
        fake.serve(sign_doc(rig.key, rig.doc(4, "1.0.0"), issued=time.time() - 60))
        agent.start()
        agent.wait_for(
            refused_with(fake, "generation 4 is older than accepted 5 (rollback)"),
            what="rollback refused",
        )
        assert rig.serves() == "hello 2.0.0"
        assert agent.workload("hello")["version"] == "2.0.0"  # type: ignore[index]
        # the same generation with other content is no refresh either
        fake.serve(sign_doc(rig.key, rig.doc(5, "1.0.0")))
        agent.wait_for(
            refused_with(fake, "generation 5 already accepted with other content"),
            what="same-generation swap refused",
        )
        assert rig.serves() == "hello 2.0.0"
    finally:
        agent.stop()
        agent.kill_workloads()


def test_key_rotation_old_and_new_trusted_then_old_dropped(rig: Rig) -> None:
    fake = rig.fake
    new = new_key(rig.tmp / "new_key")
    old_pub, new_pub = rig.tmp / "reconciler_key.pub", rig.tmp / "new_key.pub"
    fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0")))
    agent = rig.agent(trusted=[old_pub, new_pub])
    try:
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="signed by the old key")
        # The reconciler switches keys: the same generation re-signed by the new key is a
        # refresh (accepted, nothing restarted), then a new release signed by it rolls out.
        pid = agent.workload("hello")["pid"]  # type: ignore[index]
        fake.serve(sign_doc(new, rig.doc(1, "1.0.0")))
        agent.wait_for(lambda a: "re-signed, signed by SHA256:" in a.logs(), what="refresh")
        assert agent.workload("hello")["pid"] == pid  # type: ignore[index]
        fake.serve(sign_doc(new, rig.doc(2, "2.0.0")))
        agent.wait_for(healthy("2.0.0"), what="signed by the new key")
        # The operator drops the old key: a document it signs is refused from now on.
        (rig.tmp / "trusted_keys").write_text(new_pub.read_text())
        fake.serve(sign_doc(rig.key, rig.doc(3, "1.0.0")))
        agent.wait_for(refused_with(fake, "signed by untrusted key"), what="old key refused")
        assert rig.serves() == "hello 2.0.0"
    finally:
        agent.stop()
        agent.kill_workloads()


def test_expired_document_keeps_last_good_state_and_reports_desired_expired(rig: Rig) -> None:
    fake = rig.fake
    # short validity, but long enough to converge first on a loaded machine
    fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0"), valid=15))
    agent = rig.agent()
    try:
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy")
        # The server goes on serving only that document (304s): a freeze.
        agent.wait_for(
            lambda a: ((a.report() or {}).get("desired") or {}).get("phase") == "DesiredExpired",
            timeout=30,
            what="DesiredExpired",
        )
        # status.json is written before the report goes out: the server hears it a beat later
        wait_until(
            "the server's copy of the DesiredExpired report",
            lambda: (
                ((fake.last_report() or {}).get("desired") or {}).get("phase") == "DesiredExpired"
            ),
            timeout=15,
        )
        assert rig.serves() == "hello 1.0.0"
        out = agent.cli("status")
        assert "desired state: DesiredExpired" in out.stdout, out.stdout + out.stderr
        # A fresh signature ends it.
        fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0")))
        agent.wait_for(
            lambda a: ((a.report() or {}).get("desired") or {}).get("phase") == "Accepted",
            what="Accepted again",
        )
    finally:
        agent.stop()
        agent.kill_workloads()


def test_trust_on_first_use_records_the_key_and_refuses_a_changed_one(rig: Rig) -> None:
    fake = rig.fake
    fake.signing_key_line = (rig.tmp / "reconciler_key.pub").read_text()
    fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0")))
    agent = make_agent(rig.tmp, NODE, fake.url, "b" * 32)  # no trustedKeys
    try:
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy (trusted on first use)")
        known = agent.state_dir / "known_signing_keys"
        assert known.read_text().split()[:2] == fake.signing_key_line.split()[:2]
        assert "trust on first use" in agent.logs()
        assert ((agent.report() or {}).get("desired") or {}).get("trust") == "tofu"
        assert "WARNING: trust on first use" in agent.cli("status").stdout
        # The server now offers another key and documents signed by it: refused.
        other = new_key(rig.tmp / "other_key")
        fake.signing_key_line = (rig.tmp / "other_key.pub").read_text()
        fake.serve(sign_doc(other, rig.doc(2, "2.0.0")))
        agent.wait_for(refused_with(fake, "pin the new key"), what="changed key refused")
        assert rig.serves() == "hello 1.0.0"
    finally:
        agent.stop()
        agent.kill_workloads()


def test_plain_http_server_off_loopback_is_refused_at_start(rig: Rig) -> None:
    agent = make_agent(rig.tmp, "far", "http://192.0.2.1:8700", "b" * 32)
    agent.write_config()
    out = agent.cli("status")
    assert out.returncode != 0
    assert "server http://192.0.2.1:8700: plain http to a non-loopback address" in out.stderr


def tampered(body: bytes, command: list[str]) -> bytes:
    """A validly signed envelope whose signed run.command was changed afterwards."""
    import json

    envelope = json.loads(body)
    envelope["signed"]["workloads"][0]["run"]["command"] = command
    return json.dumps(envelope).encode()


def json_bytes(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc).encode()


def test_allowed_programs_is_the_only_way_out_of_the_version_directory(rig: Rig) -> None:
    import sys

    fake = rig.fake
    command = [sys.executable, "bin/hello", "--port", str(rig.port)]
    fake.serve(sign_doc(rig.key, rig.doc(1, "1.0.0", run={"command": command})))
    agent = rig.agent()
    try:
        agent.start()
        agent.wait_for(
            refused_with(fake, f"program {sys.executable!r} is outside the version directory"),
            what="interpreter refused by default",
        )
        assert agent.stop() == 0
        agent.config["allowedPrograms"] = [sys.executable]
        agent.write_config()
        agent.start()
        agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy through an allowed interpreter")
        assert rig.serves() == "hello 1.0.0"
    finally:
        agent.stop()
        agent.kill_workloads()
