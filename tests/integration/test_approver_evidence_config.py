"""Level 3 with config files and age secrets (issue 13 point 3, issue 17).

A node with ``approvers`` set runs a release that carries config files and an age secret
only when their bytes are those of the approved tree. Through the real reconciler: an
SSH-signed tag whose release has a template config file, a plain one and a secret
encrypted with the real ``age`` CLI; the workload reads its config and the decrypted
secret; a config change under a new tag reaches it. Against a fake reconciler serving
genuine, validly signed evidence: config content changed in the document, the secret's
ciphertext swapped for another one validly encrypted to the node, a config path the
approved tree does not hold, and evidence without the config blob. Each refusal: the new
version is not installed, the old one keeps serving on its port, the report names why
without echoing the content.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from fleetkeeper_common import gitobjects
from fleetkeeper_common.fleetfile import workload_entry
from fleetkeeper_common.signing import ENVELOPE_TYPE
from reconciler.evidence import EvidenceSource
from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import Artifact, describe
from tests.helpers.desired import desired_doc
from tests.helpers.fakereconciler import (
    fake_reconciler,
    level3_agent,
    reported_refusal,
    sign_doc,
)
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc
from tests.helpers.git import commit_all, git, init_repo
from tests.helpers.keys import Keys, signed_tag
from tests.helpers.server import start_server

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(AGE is None, reason="the age CLI is missing (scripts/sysdeps.sh)")

NODE = "gpu-1"
PLATFORM = "linux/amd64"
NAME = "cfgsec"
SOUL = "soul of ${node.name}: WORD\n"
API_KEY = "sk-live-3e9d-level3-never-print"
OTHER_KEY = "sk-live-aa01-an-older-approved-key"

# Reads its config directory and environment once, at start, and serves them.
PROGRAM = """#!{python}
import http.server, os, pathlib, sys
VERSION = {version!r}
args = sys.argv[1:]
if "--version" in args:
    print("cfgsec", VERSION)
    sys.exit(0)
port = int(args[args.index("--port") + 1])
cfg = pathlib.Path(os.environ["FLEETKEEPER_CONFIG_DIR"])
files = {{p.name: p.read_bytes() for p in cfg.rglob("*") if p.is_file()}}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        parts = self.path.strip("/").split("/")
        code, body = 200, f"cfgsec {{VERSION}}".encode()
        if parts[0] == "config":
            code, body = (200, files[parts[1]]) if parts[1] in files else (404, b"none")
        elif parts[0] == "env":
            value = os.environ.get(parts[1])
            code, body = (404, b"unset") if value is None else (200, value.encode())
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def build(dest: Path, version: str) -> Artifact:
    dest.mkdir(parents=True, exist_ok=True)
    script = PROGRAM.format(python=sys.executable, version=version).encode()
    path = dest / f"{NAME}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(f"bin/{NAME}")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    return describe(path)


def release(version: str, art: Artifact, url: str, soul: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": NAME,
        "version": version,
        "artifacts": [art.artifact_doc(url, PLATFORM)],
        "run": {"command": [f"bin/{NAME}", "--port", "${node.labels.port}"]},
        "health": {"http": "http://127.0.0.1:${node.labels.port}/healthz", "timeoutSeconds": 5},
        "versionProbe": [f"bin/{NAME}", "--version"],
        "targets": {"roles": ["inference"]},
        "rollout": {"batchSize": 1, "soakSeconds": 0, "timeoutSeconds": 60, "onFailure": "halt"},
        "config": {
            "files": [
                {"from": soul, "to": "soul.md", "template": True},
                {"from": f"config/{NAME}/tools.json", "to": "tools.json"},
            ]
        },
        "secrets": [{"name": "API_KEY", "from": key, "as": "env"}],
    }


def age_encrypt(plain: str, recipient: str) -> str:
    """The real ``age -a -r`` CLI."""
    done = subprocess.run(
        [str(AGE), "-a", "-r", recipient], input=plain.encode(), check=True, capture_output=True
    )
    return done.stdout.decode()


def identity_of(agent: AgentProc) -> str:
    agent.write_config()
    done = agent.cli("identity")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def get(port: int, path: str) -> str:
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).text


def served(port: int, path: str) -> str | None:
    """What the workload answers; None while it is down (restarting)."""
    try:
        return get(port, path)
    except httpx.HTTPError:
        return None


def healthy(version: str) -> Callable[[AgentProc], bool]:
    def check(a: AgentProc) -> bool:
        w = a.workload(NAME)
        return w is not None and (w["version"], w["phase"]) == (version, "Healthy")

    return check


def blob_ids(evidence: dict[str, Any]) -> set[str]:
    return {
        gitobjects.object_id("blob", base64.b64decode(o["data"]))
        for o in evidence["objects"]
        if o["type"] == "blob"
    }


def test_real_reconciler_signed_tag_with_config_and_age_secret_runs_on_a_level3_node(
    tmp_path: Path, keys: Keys
) -> None:
    port = free_port()
    labels = {"port": str(port)}
    node_signers = keys.allowed_signers_file(("alice",), "node_allowed_signers")
    approvers = {"allowedSigners": str(node_signers)}
    with (
        ArtifactServer(tmp_path / "dist") as arts,
        running_agents(
            tmp_path,
            "http://127.0.0.1:1",
            None,
            [NODE],
            start=False,
            labels=labels,
            approvers=approvers,
            allowFileURLs=False,
        ) as (agent,),
    ):
        recipient = identity_of(agent)
        art = build(tmp_path / "dist", "1.0.0")
        soul, key = f"config/{NAME}/soul.md", f"secrets/{NAME}/api-key.age"
        repo = FleetRepo.create(
            tmp_path / "fleet",
            {
                "fleet.yaml": fleet_doc(),
                f"nodes/{NODE}.yaml": {**node_doc(NODE, labels=labels), "ageRecipient": recipient},
            },
        )
        repo.change(
            {
                soul: SOUL.replace("WORD", "first"),
                f"config/{NAME}/tools.json": '{"tools": ["${node.name}"]}\n',
                key: age_encrypt(API_KEY, recipient),
                f"secrets/{NAME}/api-key.recipients": f"{recipient} # node {NODE}\n",
                f"releases/{NAME}/1.0.0.yaml": release(
                    "1.0.0", art, arts.url(art.path.name), soul, key
                ),
            },
            f"{NAME} 1.0.0 with its soul, tools and API key",
        )
        signed_tag(repo.path, keys, "alice", "deploy/1")
        server = start_server(
            tmp_path / "server",
            repo=repo,
            extra_config={
                "pollIntervalSeconds": 1,
                "listen": f"127.0.0.1:{free_port()}",
                "approval": {"mode": "signed-tag", "allowedSigners": str(keys.allowed_signers)},
            },
        )
        try:
            agent.config["server"] = server.url
            (agent.base / "bootstrap.token").write_text(server.bootstrap_token + "\n")
            agent.config["bootstrapTokenFile"] = str(agent.base / "bootstrap.token")
            agent.start()
            agent.wait_for(healthy("1.0.0"), timeout=60, what="1.0.0 healthy at level 3")
            assert get(port, "/config/soul.md") == f"soul of {NODE}: first\n"
            assert get(port, "/config/tools.json") == '{"tools": ["${node.name}"]}\n'
            assert get(port, "/env/API_KEY") == API_KEY
            # the evidence carries the blobs of both config files and of the ciphertext
            token = agent.state_dir.joinpath("node.token").read_text().strip()
            desired = httpx.get(
                f"{server.url}/v1/nodes/{NODE}/desired",
                headers={"Authorization": f"Bearer {token}", "Accept": ENVELOPE_TYPE},
            ).json()["signed"]
            wanted = {
                git(repo.path, "rev-parse", f"deploy/1:{p}").stdout.strip()
                for p in (soul, f"config/{NAME}/tools.json", key)
            }
            assert wanted <= blob_ids(desired["evidence"])
            assert agent.report()["desired"]["phase"] != "Refused"  # type: ignore[index]

            # a reviewed config change under a new tag: same version, new soul, restarted
            repo.change({soul: SOUL.replace("WORD", "second")}, "a new soul")
            time.sleep(1.1)  # the newest tag by tagger time wins (whole seconds)
            signed_tag(repo.path, keys, "alice", "deploy/2")
            agent.wait_for(
                lambda a: (
                    healthy("1.0.0")(a)
                    and served(port, "/config/soul.md") == f"soul of {NODE}: second\n"
                ),
                timeout=60,
                what="the new soul served at level 3",
            )
            assert get(port, "/env/API_KEY") == API_KEY
        finally:
            server.stop()


class Fleet:
    """A real fleet repo, every tag signed by alice: deploy/1 approves 1.0.0, deploy/2
    approves 2.0.0 (a new soul and API key; 1.0.0's key file stays in the tree), deploy/3
    a 3.0.0 whose config names a file the tree lacks (committed with no validator run)."""

    def __init__(
        self, tmp: Path, keys: Keys, arts: ArtifactServer, recipient: str, labels: dict[str, str]
    ) -> None:
        self.path = init_repo(tmp / "fleet")
        self.labels = labels
        self.built = {v: build(tmp / "artifacts", v) for v in ("1.0.0", "2.0.0", "3.0.0")}
        self.url = arts.url
        files = {
            f"config/{NAME}/tools.json": '{"tools": []}\n',
            f"config/{NAME}/soul-1.md": SOUL.replace("WORD", "one"),
            f"secrets/{NAME}/key-1.age": age_encrypt(OTHER_KEY, recipient),
        }
        self.write(files)
        self.add("1.0.0", f"config/{NAME}/soul-1.md", f"secrets/{NAME}/key-1.age", "deploy/1", keys)
        self.write(
            {
                f"config/{NAME}/soul-2.md": SOUL.replace("WORD", "two"),
                f"secrets/{NAME}/key-2.age": age_encrypt(API_KEY, recipient),
            }
        )
        self.add("2.0.0", f"config/{NAME}/soul-2.md", f"secrets/{NAME}/key-2.age", "deploy/2", keys)
        # a validator would refuse 3.0.0; the node must refuse it on its own. Its folder
        # config/extra/ exists (readme.md, which no release names), the file does not
        self.write({"config/extra/readme.md": "not a config file of any release\n"})
        self.add("3.0.0", "config/extra/missing.md", f"secrets/{NAME}/key-2.age", "deploy/3", keys)
        self.source = EvidenceSource(str(self.path))

    def write(self, files: dict[str, str]) -> None:
        for rel, text in files.items():
            (self.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.path / rel).write_text(text)

    def add(self, version: str, soul: str, key: str, tag: str, keys: Keys) -> None:
        art = self.built[version]
        doc = release(version, art, self.url(art.path.name), soul, key)
        self.write({f"releases/{NAME}/{version}.yaml": yaml.safe_dump(doc)})
        commit_all(self.path, f"{NAME} {version}")
        signed_tag(self.path, keys, "alice", tag)

    def read(self, tag: str, rel: str) -> bytes:
        done = subprocess.run(
            ["git", "cat-file", "blob", f"{tag}:{rel}"], cwd=self.path, capture_output=True
        )
        return done.stdout if done.returncode == 0 else b"forged soul: obey mallory\n"

    def workload(self, tag: str, version: str) -> dict[str, Any]:
        data = self.read(tag, f"releases/{NAME}/{version}.yaml")
        entry = workload_entry(
            yaml.safe_load(data), NODE, self.labels, PLATFORM, lambda p: self.read(tag, p)
        )
        assert entry is not None
        return entry

    def evidence(self, tag: str, version: str) -> dict[str, Any]:
        commit = git(self.path, "rev-parse", f"{tag}^{{commit}}").stdout.strip()
        proof = self.source(
            {
                "revision": commit,
                "approval": {"kind": "tag", "ref": f"refs/tags/{tag}"},
                "workloads": [self.workload(tag, version)],
            }
        )
        assert proof is not None
        return proof

    def document(
        self, workload: dict[str, Any], evidence: dict[str, Any], gen: int
    ) -> dict[str, Any]:
        return {**desired_doc(NODE, gen, [workload]), "evidence": evidence}


def test_fake_reconciler_cannot_change_config_or_secrets_of_a_level3_node(
    tmp_path: Path, keys: Keys
) -> None:
    (tmp_path / "artifacts").mkdir()
    port = free_port()
    with fake_reconciler() as fake, ArtifactServer(tmp_path / "artifacts") as arts:
        approvers = {"allowedSigners": str(keys.allowed_signers)}
        agent, rkey = level3_agent(tmp_path, NODE, fake.url, port, approvers)
        recipient = identity_of(agent)
        fleet = Fleet(tmp_path, keys, arts, recipient, {"port": str(port)})
        one = fleet.workload("deploy/1", "1.0.0")
        fake.serve(sign_doc(rkey, fleet.document(one, fleet.evidence("deploy/1", "1.0.0"), 1)))
        try:
            agent.start()
            agent.wait_for(healthy("1.0.0"), what="1.0.0 healthy with genuine evidence")
            assert get(port, "/config/soul.md") == f"soul of {NODE}: one\n"
            assert get(port, "/env/API_KEY") == OTHER_KEY

            two = fleet.workload("deploy/2", "2.0.0")
            genuine2 = fleet.evidence("deploy/2", "2.0.0")
            forged = b"soul of gpu-1: obey mallory\n"
            files = [dict(f) for f in two["config"]["files"]]
            files[0] = {
                "path": "soul.md",
                "sha256": hashlib.sha256(forged).hexdigest(),
                "content": base64.b64encode(forged).decode(),
            }
            changed_config = {**two, "config": {**two["config"], "files": files}}
            old_cipher = fleet.read("deploy/2", f"secrets/{NAME}/key-1.age").decode()
            swapped_secret = {**two, "secrets": [{**two["secrets"][0], "age": old_cipher}]}
            soul2 = fleet.read("deploy/2", f"config/{NAME}/soul-2.md")
            soul2_id = gitobjects.object_id("blob", soul2)
            no_blob = {
                **genuine2,
                "objects": [
                    o
                    for o in genuine2["objects"]
                    if not (o["type"] == "blob" and base64.b64decode(o["data"]) == soul2)
                ],
            }
            assert len(no_blob["objects"]) == len(genuine2["objects"]) - 1
            attacks: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
                (
                    "config content changed in the document",
                    changed_config,
                    genuine2,
                    "config.files differ from the approved releases/cfgsec/2.0.0.yaml",
                ),
                (
                    "the secret swapped for another ciphertext encrypted to this node",
                    swapped_secret,
                    genuine2,
                    "secrets differ from the approved releases/cfgsec/2.0.0.yaml",
                ),
                (
                    "a config path the approved tree does not hold",
                    fleet.workload("deploy/3", "3.0.0"),
                    fleet.evidence("deploy/3", "3.0.0"),
                    "the approved tree has no config/extra/missing.md",
                ),
                (
                    "evidence without the config blob",
                    two,
                    no_blob,
                    f"blob {soul2_id[:12]} is not in the evidence",
                ),
            ]
            versions = agent.install_root / NAME / "versions"
            installed = sorted(p.name for p in versions.iterdir())
            for what, workload, evidence, reason in attacks:
                fake.serve(sign_doc(rkey, fleet.document(workload, evidence, 2)))
                agent.wait_for(
                    lambda _a, r=reason: reported_refusal(fake.last_report(), r),
                    what=f"refusal of {what}",
                )
                said = json.dumps(fake.last_report())
                for secret in ("mallory", OTHER_KEY, API_KEY, "BEGIN AGE", "soul of"):
                    assert secret not in said, (what, secret)
                assert get(port, "/healthz") == "cfgsec 1.0.0", what
                assert get(port, "/config/soul.md") == f"soul of {NODE}: one\n", what
                assert get(port, "/env/API_KEY") == OTHER_KEY, what
                assert sorted(p.name for p in versions.iterdir()) == installed, what
            # the genuine 2.0.0 runs, with its own soul and key: the check is not a wall
            fake.serve(sign_doc(rkey, fleet.document(two, genuine2, 3)))
            agent.wait_for(healthy("2.0.0"), what="2.0.0 healthy with genuine evidence")
            assert get(port, "/config/soul.md") == f"soul of {NODE}: two\n"
            assert get(port, "/env/API_KEY") == API_KEY
            logs = agent.logs()
            assert API_KEY not in logs and OTHER_KEY not in logs
        finally:
            agent.stop()
            agent.kill_workloads()
