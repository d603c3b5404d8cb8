"""The approver's signature checked on the node (issue 13, level 3).

A real agent with ``approvers`` set runs only what an approver's own key signed: through the
real reconciler (an SSH-signed and an OpenPGP-signed tag roll out; a tag the reconciler
accepts but the node's approvers do not is refused), and against a fake reconciler that
serves genuine evidence with a changed document, a tree without the file, a swapped file,
a tag signed by an unknown key, or no evidence at all. Each refusal: the marker file is
absent, the old version keeps serving on its port, the report names why.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pygit2
import pytest
import yaml

from agent.evidence import EvidenceRefused, chains
from fleetkeeper_common import gitobjects
from fleetkeeper_common.fleetfile import workload_entry
from fleetkeeper_common.signing import ENVELOPE_TYPE
from reconciler.evidence import EvidenceSource
from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import (
    Artifact,
    build_program,
    describe,
    hello_release,
    program_source,
)
from tests.helpers.desired import desired_doc
from tests.helpers.fakereconciler import (
    fake_reconciler,
    level3_agent,
    reported_refusal,
    sign_doc,
)
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc
from tests.helpers.git import commit_all, git, init_repo
from tests.helpers.keys import Keys, SignedRepo, signed_tag
from tests.helpers.server import RunningServer, start_server

NODE = "gpu-1"
PLATFORM = "linux/amd64"


def healthy(version: str) -> Callable[[AgentProc], bool]:
    def check(a: AgentProc) -> bool:
        w = a.workload("hello")
        return w is not None and (w["version"], w["phase"]) == (version, "Healthy")

    return check


def serves(port: int) -> str:
    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text.strip()


@contextmanager
def one_agent(
    tmp: Path, server: RunningServer, labels: Mapping[str, str], approvers: Mapping[str, str]
) -> Iterator[tuple[ArtifactServer, AgentProc]]:
    """An artifact server on ``tmp/dist`` and agent NODE joined to ``server``, checking
    approvals itself against ``approvers`` (no file: URLs, so it fetches over HTTP)."""
    dist = tmp / "dist"
    dist.mkdir()
    with (
        ArtifactServer(dist) as arts,
        running_agents(
            tmp,
            server.url,
            server.bootstrap_token,
            [NODE],
            labels=labels,
            approvers=approvers,
            allowFileURLs=False,
        ) as (agent,),
    ):
        yield arts, agent


# -- the real reconciler ---------------------------------------------------------------


def test_real_reconciler_ssh_and_openpgp_tags_run_and_an_unlisted_approver_is_refused(
    tmp_path: Path, keys: Keys
) -> None:
    port = free_port()
    labels = {"port": str(port)}
    repo = FleetRepo.create(
        tmp_path / "fleet",
        {"fleet.yaml": fleet_doc(), f"nodes/{NODE}.yaml": node_doc(NODE, labels=labels)},
    )
    signed_tag(repo.path, keys, "alice", "deploy/0")
    server = start_server(
        tmp_path / "server",
        repo=repo,
        extra_config={
            "pollIntervalSeconds": 1,
            "listen": f"127.0.0.1:{free_port()}",
            "approval": {
                "mode": "signed-tag",
                "allowedSigners": str(keys.allowed_signers),  # alice, bob and forge
                "gpgKeyring": str(keys.gpg_keyring),
            },
        },
    )
    # the node trusts alice and carol as approvers, not bob
    node_signers = keys.allowed_signers_file(("alice",), "node_allowed_signers")
    approvers = {"allowedSigners": str(node_signers), "gpgKeyring": str(keys.gpg_keyring)}
    dist = tmp_path / "dist"
    try:
        with one_agent(tmp_path, server, labels, approvers) as (arts, agent):

            def release(version: str, signer: str, tag: str) -> None:
                art = build_program(dist, "hello", version)
                doc = hello_release(version, art, arts.url(art.path.name))
                repo.change({f"releases/hello/{version}.yaml": doc}, f"hello {version}")
                # the newest tag by tagger time wins, and tagger times are whole seconds
                time.sleep(1.1)
                signed_tag(repo.path, keys, signer, tag)

            release("1.0.0", "alice", "deploy/1")  # SSH
            agent.wait_for(healthy("1.0.0"), timeout=60, what="1.0.0 (SSH tag) healthy")
            assert serves(port) == "hello 1.0.0"
            token = agent.state_dir.joinpath("node.token").read_text().strip()
            served = httpx.get(
                f"{server.url}/v1/nodes/{NODE}/desired",
                headers={"Authorization": f"Bearer {token}", "Accept": ENVELOPE_TYPE},
            ).json()["signed"]
            kinds = sorted({o["type"] for o in served["evidence"]["objects"]})
            assert kinds == ["blob", "commit", "tag", "tree"]

            # bob is an approver for the reconciler, not for this node
            release("1.1.0", "bob", "deploy/2")
            agent.wait_for(
                lambda a: reported_refusal(a.report(), "is not signed by an approver"),
                timeout=40,
                what="bob's tag refused on the node",
            )
            assert "tag deploy/2" in agent.report()["desired"]["message"]  # type: ignore[index]
            assert serves(port) == "hello 1.0.0"
            assert agent.workload("hello")["version"] == "1.0.0"  # type: ignore[index]

            release("1.2.0", "carol", "deploy/3")  # OpenPGP
            agent.wait_for(healthy("1.2.0"), timeout=60, what="1.2.0 (OpenPGP tag) healthy")
            assert serves(port) == "hello 1.2.0"
            out = agent.cli("status").stdout
            assert f"approvers: each release's signature is checked here ({node_signers}" in out
    finally:
        server.stop()


# -- a fake reconciler serving genuine evidence, misused -----------------------------


def evil_artifact(dest: Path, marker: Path, port: int) -> Artifact:
    """A hello 2.0.0 lookalike that touches ``marker`` when it starts."""
    script = program_source("hello", "2.0.0").replace(
        "args = sys.argv[1:]", f"open({str(marker)!r}, 'w').close()\nargs = sys.argv[1:]", 1
    )
    path = dest / "hello-evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/hello")
        data = script.encode()
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return describe(path)


class Fleet:
    """A real fleet repo: deploy/1 (alice) approves hello 1.0.0; deploy/2 (alice) and
    deploy/m (mallory, unknown to the node) approve a commit that adds 2.0.0."""

    def __init__(self, tmp: Path, keys: Keys, arts: ArtifactServer, port: int) -> None:
        self.path = init_repo(tmp / "fleet")
        self.port = port
        self.built = {v: build_program(tmp / "artifacts", "hello", v) for v in ("1.0.0", "2.0.0")}
        self.files: dict[str, bytes] = {}
        self.commits: dict[str, str] = {}
        for version, tags in (("1.0.0", ("deploy/1",)), ("2.0.0", ("deploy/2",))):
            art = self.built[version]
            rel = f"releases/hello/{version}.yaml"
            text = yaml.safe_dump(hello_release(version, art, arts.url(art.path.name)))
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.path / rel).write_text(text)
            self.files[version] = text.encode()
            self.commits[version] = commit_all(self.path, f"hello {version}")
            for t in tags:
                signed_tag(self.path, keys, "alice", t)
        signed_tag(self.path, keys, "mallory", "deploy/m")
        self.source = EvidenceSource(str(self.path))

    def tag(self, name: str) -> str:
        return git(self.path, "rev-parse", f"refs/tags/{name}").stdout.strip()

    def workload(self, version: str) -> dict[str, Any]:
        doc = yaml.safe_load(self.files[version])
        entry = workload_entry(doc, NODE, {"port": str(self.port)}, PLATFORM)
        assert entry is not None
        return entry

    def evidence(self, tag: str, version: str) -> dict[str, Any]:
        commit = git(self.path, "rev-parse", f"{tag}^{{commit}}").stdout.strip()
        proof = self.source(
            {
                "revision": commit,
                "approval": {"kind": "tag", "ref": f"refs/tags/{tag}"},
                "workloads": [self.workload(version)],
            }
        )
        assert proof is not None
        return proof

    def document(
        self, generation: int, version: str, evidence: dict[str, Any] | None, **over: Any
    ) -> dict[str, Any]:
        doc = desired_doc(NODE, generation, [{**self.workload(version), **over}])
        if evidence is not None:
            doc["evidence"] = evidence
        return doc


def swapped_file_evidence(fleet: Fleet) -> dict[str, Any]:
    """deploy/2's tag, with a commit built by git plumbing whose tree holds 1.0.0's approved
    file at releases/hello/2.0.0.yaml (the tag still names the genuine commit)."""
    work = fleet.path
    old_blob = git(work, "rev-parse", "HEAD:releases/hello/1.0.0.yaml").stdout.strip()
    index = dict(os.environ, GIT_INDEX_FILE=str(work / ".git" / "forged-index"))

    def plumb(*args: str) -> str:
        out = subprocess.run(
            ["git", *args], cwd=work, env=index, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()

    plumb("read-tree", "HEAD")
    plumb("update-index", "--cacheinfo", f"100644,{old_blob},releases/hello/2.0.0.yaml")
    tree = plumb("write-tree")
    forged = plumb("commit-tree", tree, "-p", "HEAD", "-m", "forged")
    repo = pygit2.Repository(str(work))
    tag_id = fleet.tag("deploy/2")
    objs: list[tuple[str, bytes]] = [("tag", repo[tag_id].read_raw())]
    objs.append(("commit", repo[forged].read_raw()))
    t = repo[tree]
    for part in ("releases", "hello"):
        objs.append(("tree", t.read_raw()))
        t = t[part]
    objs.append(("tree", t.read_raw()))
    objs.append(("blob", repo[old_blob].read_raw()))
    return {
        "objects": [{"type": k, "data": base64.b64encode(b).decode()} for k, b in objs],
        "workloads": {"hello": tag_id},
    }


def swapped_blob_evidence(fleet: Fleet) -> dict[str, Any]:
    """deploy/2's genuine chain with the 2.0.0 file's blob replaced by 1.0.0's."""
    proof = fleet.evidence("deploy/2", "2.0.0")
    new_blob = base64.b64encode(fleet.files["2.0.0"]).decode()
    old_blob = base64.b64encode(fleet.files["1.0.0"]).decode()
    objects = [
        {"type": "blob", "data": old_blob} if o == {"type": "blob", "data": new_blob} else o
        for o in proof["objects"]
    ]
    assert objects != proof["objects"]
    return {**proof, "objects": objects}


def test_fake_reconciler_cannot_make_a_level3_node_run_what_no_approver_signed(
    tmp_path: Path, keys: Keys
) -> None:
    (tmp_path / "artifacts").mkdir()
    port = free_port()
    marker = tmp_path / "MARKER"
    with fake_reconciler() as fake, ArtifactServer(tmp_path / "artifacts") as arts:
        fleet = Fleet(tmp_path, keys, arts, port)
        evil = evil_artifact(tmp_path / "artifacts", marker, port)
        approvers = {
            "allowedSigners": str(keys.allowed_signers),
            "gpgKeyring": str(keys.gpg_keyring),
        }
        agent, rkey = level3_agent(tmp_path, NODE, fake.url, port, approvers)
        fake.serve(sign_doc(rkey, fleet.document(1, "1.0.0", fleet.evidence("deploy/1", "1.0.0"))))
        try:
            agent.start()
            agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy with genuine evidence")
            assert serves(port) == "hello 1.0.0"
            genuine2 = fleet.evidence("deploy/2", "2.0.0")
            evil_art = evil.artifact_doc(arts.url(evil.path.name))
            attacks: list[tuple[str, dict[str, Any], str]] = [
                (
                    "genuine evidence, changed URL and sha256",
                    fleet.document(2, "2.0.0", genuine2, artifact=evil_art),
                    "artifact.sha256, artifact.size, artifact.url differ from the approved "
                    "releases/hello/2.0.0.yaml",
                ),
                (
                    "genuine evidence, changed command",
                    fleet.document(
                        2,
                        "2.0.0",
                        genuine2,
                        run={"command": ["bin/hello", "--port", str(port), "--debug"]},
                    ),
                    "run.command differ from the approved",
                ),
                (
                    "a tree that does not contain the file",
                    fleet.document(2, "2.0.0", fleet.evidence("deploy/1", "1.0.0")),
                    "the approved tree has no releases/hello/2.0.0.yaml",
                ),
                (
                    "another signed release's file under a forged tree",
                    fleet.document(2, "2.0.0", swapped_file_evidence(fleet)),
                    f"commit {fleet.commits['2.0.0'][:12]} is not in the evidence",
                ),
                (
                    "another signed release's file as the blob",
                    fleet.document(2, "2.0.0", swapped_blob_evidence(fleet)),
                    f"blob {gitobjects.object_id('blob', fleet.files['2.0.0'])[:12]} is not in "
                    "the evidence",
                ),
                (
                    "a tag signed by a key not in the node's approvers",
                    fleet.document(2, "2.0.0", fleet.evidence("deploy/m", "2.0.0")),
                    f"tag deploy/m ({fleet.tag('deploy/m')[:12]}) is not signed by an approver "
                    "(signing key is not in approvers.allowedSigners",
                ),
                (
                    "no evidence at all",
                    fleet.document(2, "2.0.0", None, artifact=evil_art),
                    "no approval evidence in the document",
                ),
            ]
            versions = agent.state_dir.parent / "root" / "hello" / "versions"
            installed = sorted(p.name for p in versions.iterdir())
            for what, doc, reason in attacks:
                fake.serve(sign_doc(rkey, doc))
                agent.wait_for(
                    lambda _a, r=reason: reported_refusal(fake.last_report(), r),
                    what=f"refusal of {what}",
                )
                assert not marker.exists(), what
                assert serves(port) == "hello 1.0.0", what
                assert sorted(p.name for p in versions.iterdir()) == installed, what
            # the same release with its genuine evidence runs: the check is not a wall
            fake.serve(sign_doc(rkey, fleet.document(3, "2.0.0", genuine2)))
            agent.wait_for(healthy("2.0.0"), what="2.0.0 healthy with genuine evidence")
            assert serves(port) == "hello 2.0.0"
            assert not marker.exists()
        finally:
            agent.stop()
            agent.kill_workloads()


# -- both sides on the same objects ---------------------------------------------------


def test_object_ids_and_signed_payloads_match_git(tmp_path: Path, keys: Keys) -> None:
    """The shared parser against git itself: ids as ``git hash-object`` computes them and the
    signed payloads libgit2 extracts, for an SSH-signed merge, a GPG-signed tag and a tree."""
    repo = SignedRepo(tmp_path / "r", keys)
    merge = repo.merge({"releases/a/1.0.0.yaml": "x: 1\n"}, signer="forge")
    tag = signed_tag(repo.path, keys, "carol", "deploy/x")
    r = pygit2.Repository(str(repo.path))
    commit = r[merge]
    parsed = gitobjects.parse_commit(commit.read_raw())
    assert gitobjects.object_id("commit", commit.read_raw()) == merge
    assert parsed.tree == str(commit.tree_id) and len(parsed.parents) == 2
    sig, payload = commit.gpg_signature
    assert parsed.signed is not None
    assert parsed.signed.payload == payload
    assert parsed.signed.signature.strip() == sig.strip()
    t = gitobjects.parse_tag(r[tag].read_raw())
    assert gitobjects.object_id("tag", r[tag].read_raw()) == tag
    assert (t.object, t.type, t.name) == (merge, "commit", "deploy/x")
    assert t.signed is not None and t.signed.signature.startswith(b"-----BEGIN PGP SIGNATURE")
    entries = gitobjects.parse_tree(commit.tree.read_raw())
    assert {(e.name, e.id) for e in entries} == {(e.name.encode(), str(e.id)) for e in commit.tree}
    hashed = (
        subprocess.run(
            ["git", "hash-object", "-t", "tree", "--stdin"],
            input=commit.tree.read_raw(),
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .strip()
    )
    assert gitobjects.object_id("tree", commit.tree.read_raw()) == hashed


def test_merged_pr_evidence_only_with_a_signed_merge(tmp_path: Path, keys: Keys) -> None:
    repo = SignedRepo(tmp_path / "r", keys)
    art = {"platform": PLATFORM, "url": "https://example.org/a.tgz", "sha256": "a" * 64, "size": 1}
    release = {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": "a",
        "version": "1.0.0",
        "artifacts": [art],
        "run": {"command": ["bin/a", "--port", "${node.labels.port}"]},
    }
    text = yaml.safe_dump(release)
    unsigned = repo.merge({"releases/a/1.0.0.yaml": text})
    signed = repo.merge({"releases/a/1.0.0.yaml": text + "# again\n"}, signer="forge")
    source = EvidenceSource(str(repo.path))
    entry = workload_entry(yaml.safe_load(text), NODE, {"port": "9"}, PLATFORM)
    assert entry is not None and entry["run"] == {"command": ["bin/a", "--port", "9"]}

    def doc(rev: str) -> dict[str, Any]:
        return {"revision": rev, "approval": {"kind": "merge", "ref": rev}, "workloads": [entry]}

    assert source(doc(unsigned)) is None  # nothing an agent could check
    proof = source(doc(signed))
    assert proof is not None and proof["workloads"] == {"a": signed}
    claims = chains(
        {**doc(signed), "evidence": proof}, node=NODE, labels={"port": "9"}, platform=PLATFORM
    )
    assert [c.what for c in claims] == [f"commit {signed[:12]}"]
    # the same evidence does not pass for another node's labels (placeholders differ)
    with pytest.raises(EvidenceRefused, match="run.command differ"):
        chains(
            {**doc(signed), "evidence": proof}, node=NODE, labels={"port": "10"}, platform=PLATFORM
        )


def test_node_judges_approver_keys_at_its_own_clock(tmp_path: Path, keys: Keys) -> None:
    """A key whose allowed_signers line ended (valid-before 2020) approves nothing on the
    node, even though the signature itself is good; a listed key verifies in one call."""
    from agent.approvers import ApproverKeys, verify

    repo = SignedRepo(tmp_path / "r", keys)
    node_keys = ApproverKeys(keys.allowed_signers, keys.gpg_keyring)
    r = pygit2.Repository(str(repo.path))
    verdicts = {}
    for who in ("alice", "expired", "carol", "eve"):
        tag = signed_tag(repo.path, keys, who, f"deploy/{who}")
        signed = gitobjects.parse_tag(r[tag].read_raw()).signed
        assert signed is not None
        verdicts[who] = verify(signed, node_keys, tmp_path / "gnupg")
    assert verdicts["alice"].signer == "alice@fleet.test"
    assert verdicts["expired"].signer is None
    assert verdicts["carol"].signer == keys.gpg["carol"].fingerprint
    assert verdicts["eve"].signer is None and "NO_PUBKEY" in verdicts["eve"].detail


def test_merged_pr_signed_merge_runs_and_an_unsigned_merge_is_refused_on_the_node(
    tmp_path: Path, keys: Keys
) -> None:
    """merged-pr: the forge's signed merge is evidence a node can check; an unsigned merge,
    which the reconciler approves on the forge's word, gives the node nothing to check."""
    port = free_port()
    labels = {"port": str(port)}
    repo = SignedRepo(tmp_path / "fleet", keys)
    fleet_files = {
        "fleet.yaml": yaml.safe_dump(fleet_doc()),
        f"nodes/{NODE}.yaml": yaml.safe_dump(node_doc(NODE, labels=labels)),
    }
    repo.merge(fleet_files, "fleet", signer="forge")
    server = start_server(
        tmp_path / "server",
        repo_url=str(repo.path),
        extra_config={
            "pollIntervalSeconds": 1,
            "listen": f"127.0.0.1:{free_port()}",
            "approval": {"mode": "merged-pr", "allowedSigners": str(keys.allowed_signers)},
        },
    )
    forge_only = keys.allowed_signers_file(("forge",), "node_forge_signers")
    dist = tmp_path / "dist"
    try:
        with one_agent(tmp_path, server, labels, {"allowedSigners": str(forge_only)}) as (
            arts,
            agent,
        ):

            def release(version: str) -> dict[str, str]:
                art = build_program(dist, "hello", version)
                doc = hello_release(version, art, arts.url(art.path.name))
                return {f"releases/hello/{version}.yaml": yaml.safe_dump(doc)}

            repo.merge(release("1.0.0"), "hello 1.0.0", signer="forge")
            agent.wait_for(healthy("1.0.0"), timeout=60, what="1.0.0 (signed merge) healthy")
            repo.merge(release("1.1.0"), "hello 1.1.0")  # an unsigned merge
            agent.wait_for(
                lambda a: reported_refusal(a.report(), "no approval evidence in the document"),
                timeout=40,
                what="unsigned merge refused on the node",
            )
            (row,) = [n for n in server.fleet()["nodes"] if n["node"] == NODE]
            # the reconciler did approve it and desires it; the node refuses to run it
            assert [w["desired"] for w in row["workloads"]] == ["1.1.0"], row
            assert serves(port) == "hello 1.0.0"
            assert agent.workload("hello")["version"] == "1.0.0"  # type: ignore[index]
    finally:
        server.stop()
