"""Age secrets end to end (issue 17): encrypted with the real ``age`` CLI to the nodes' own
identities, carried through a real reconciler as ciphertext, decrypted by real agents and
read by a real workload as an environment variable and as a file.

The plain text must never appear in the reconciler's SQLite database, its logs, any API
answer, the agents' logs, reports, journal or state directory: every one is searched.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.fleet import FleetRepo, fleet_doc, node_doc
from tests.helpers.secret_reader import build_secret_reader, reader_release
from tests.helpers.server import start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(AGE is None, reason="the age CLI is missing (scripts/sysdeps.sh)")

API_KEY = "sk-live-7f3c9a1e-never-print-me"
TOKEN = "tok-2b8d4e6f-file-secret"
ROTATED = "sk-live-rotated-41d2"
SECRETS = [
    {"name": "API_KEY", "from": "secrets/reader/api-key.age", "as": "env"},
    {"name": "TOKEN", "from": "secrets/reader/token.age", "as": "file"},
]


def age_keygen(path: Path) -> str:
    """A fresh identity file made by age-keygen; its recipient."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    out = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True)
    return out.stdout.decode().strip()


def age_encrypt(plain: str, recipients: list[str]) -> str:
    """``age -a -r R ...`` over ``plain``: the real CLI, armored."""
    argv = [str(AGE), "-a"]
    for r in recipients:
        argv += ["-r", r]
    return subprocess.run(
        argv, input=plain.encode(), check=True, capture_output=True
    ).stdout.decode()


def fleetkeeper(
    *args: str, cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


def encrypt_api_key(root: Path) -> subprocess.CompletedProcess[str]:
    """``secret encrypt`` of API_KEY to the recipients of the secret-reader release."""
    return fleetkeeper(
        "secret",
        "encrypt",
        "reader/api-key",
        "--for-release",
        "secret-reader",
        cwd=root,
        stdin=API_KEY,
    )


def identity_of(agent: AgentProc) -> str:
    done = agent.cli("identity")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


def served(url: str) -> str | None:
    """What the workload answers, None while it is down (restarting)."""
    try:
        return get(url).text
    except httpx.HTTPError:
        return None


def release_digests(fleet: dict[str, Any]) -> set[tuple[str, str | None]]:
    """(version, target digest) of every secret-reader rollout the status shows."""
    return {
        (r["version"], r.get("configDigest"))
        for r in fleet["releases"]
        if r["agent"] == "secret-reader"
    }


def reported(fleet: dict[str, Any], node: str) -> str | None:
    """The target digest ``node`` reports, when it is the one desired (else None)."""
    (row,) = [n for n in fleet["nodes"] if n["node"] == node]
    (w,) = [w for w in row["workloads"] if w["name"] == "secret-reader"]
    ok = w.get("configDigest") and w.get("configDigest") == w.get("desiredConfig")
    return str(w["configDigest"]) if ok else None


def files_under(root: Path, skip: tuple[Path, ...] = ()) -> Iterator[Path]:
    for path in root.rglob("*"):
        if (
            path.is_file()
            and not path.is_symlink()
            and not any(path.is_relative_to(s) for s in skip)
        ):
            yield path


def test_secret_reaches_the_workload_only(tmp_path: Path) -> None:
    port_a, port_b = free_port(), free_port()
    nodes = ["node-a", "node-b"]
    stale = age_keygen(tmp_path / "lost-identity.txt")  # node-b's old identity, lost since
    with running_agents(tmp_path, "http://127.0.0.1:1", None, nodes, start=False) as agents:
        a, b = agents
        for agent in agents:
            agent.write_config()
        recipient_a = identity_of(a)
        assert recipient_a.startswith("age1") and identity_of(a) == recipient_a  # stable
        key_file = a.state_dir / "age-identity.txt"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert recipient_a in key_file.read_text()  # age-keygen's format: the CLI can use it
        identity_of(b)  # b has a fresh identity; its node file still names the lost one
        repo = FleetRepo.create(
            tmp_path / "fleet",
            {
                "fleet.yaml": fleet_doc(),
                "nodes/node-a.yaml": {
                    **node_doc("node-a", roles=["coding"], labels={"port": str(port_a)}),
                    "ageRecipient": recipient_a,
                },
                "nodes/node-b.yaml": {
                    **node_doc("node-b", roles=["coding"], labels={"port": str(port_b)}),
                    "ageRecipient": stale,
                },
            },
        )
        server = start_server(
            tmp_path / "server",
            repo=repo,
            extra_config={"pollIntervalSeconds": 1, "listen": f"127.0.0.1:{free_port()}"},
        )
        responses: list[str] = []
        try:
            for agent in agents:
                agent.config["server"] = server.url
                (agent.base / "bootstrap.token").write_text(server.bootstrap_token + "\n")
                agent.config["bootstrapTokenFile"] = str(agent.base / "bootstrap.token")
                agent.start()
            with ArtifactServer(tmp_path / "dist") as arts:
                v1 = build_secret_reader(tmp_path / "dist", "1.0.0")
                repo.change(
                    {
                        "releases/secret-reader/1.0.0.yaml": reader_release(
                            "1.0.0", v1, arts.url(v1.path.name)
                        )
                    },
                    "secret-reader 1.0.0",
                )
                for agent in agents:
                    agent.wait_for(
                        lambda x: x.running("secret-reader") == "1.0.0", timeout=60, what="1.0.0"
                    )

                # 1.1.0 reads two secrets; node-a first (canary), then node-b
                recipients = [recipient_a, stale]
                listed = "".join(
                    f"{r} # node {n}\n" for r, n in zip(recipients, nodes, strict=True)
                )
                v2 = build_secret_reader(tmp_path / "dist", "1.1.0")
                release = reader_release("1.1.0", v2, arts.url(v2.path.name), SECRETS)
                release["rollout"] = {**release["rollout"], "canary": ["node-a"]}  # type: ignore[dict-item]
                repo.change(
                    {
                        "secrets/reader/api-key.age": age_encrypt(API_KEY, recipients),
                        "secrets/reader/api-key.recipients": listed,
                        "secrets/reader/token.age": age_encrypt(TOKEN, recipients),
                        "secrets/reader/token.recipients": listed,
                        "releases/secret-reader/1.1.0.yaml": release,
                    },
                    "secret-reader 1.1.0 with its API key",
                )
                a.wait_for(
                    lambda x: (
                        x.phase("secret-reader") == "Healthy"
                        and x.running("secret-reader") == "1.1.0"
                    ),
                    timeout=60,
                    what="a on 1.1.0",
                )
                base_a = f"http://127.0.0.1:{port_a}"
                assert get(f"{base_a}/env/API_KEY").text == API_KEY
                assert get(f"{base_a}/file/TOKEN").text == TOKEN
                assert get(f"{base_a}/env/TOKEN").status_code == 404  # as: file is not in env
                assert get(f"{base_a}/mode/TOKEN").text == "600 700"
                secrets_dir = a.install_root / "secret-reader" / "secrets"

                # node-b cannot open them: a clear failure, and 1.0.0 keeps serving
                b.wait_for(
                    lambda x: x.phase("secret-reader") == "Failed", timeout=60, what="b failed"
                )
                message = (b.workload("secret-reader") or {}).get("message", "")
                assert (
                    "cannot decrypt secrets/reader/api-key.age: this node is not a recipient"
                    in message
                )
                assert get(f"http://127.0.0.1:{port_b}/healthz").text == "secret-reader 1.0.0"
                assert b.running("secret-reader") == "1.0.0"

                # rotation: a re-encrypted key through a merged PR is a new rollout of the
                # same version (its target digest changes) and reaches node-a's workload
                before = release_digests(server.fleet())
                repo.change(
                    {"secrets/reader/api-key.age": age_encrypt(ROTATED, recipients)},
                    "rotate the API key",
                )
                a.wait_for(
                    lambda x: served(f"{base_a}/env/API_KEY") == ROTATED,
                    timeout=60,
                    what="rotated key",
                )
                assert a.running("secret-reader") == "1.1.0"
                assert served(f"{base_a}/file/TOKEN") == TOKEN
                a.wait_for(
                    lambda x: reported(server.fleet(), "node-a") is not None,
                    timeout=30,
                    what="node-a reports the rotated target digest",
                )
                new = release_digests(server.fleet()) - before
                assert {v for v, _ in new} == {"1.1.0"}, new  # same version, new target

                # every answer of the API this test can fetch
                node_token = a.state_dir.joinpath("node.token").read_text().strip()
                with server.admin() as admin:
                    for path in ("/v1/fleet", "/v1/releases", "/metrics", "/v1/audit", "/"):
                        responses.append(admin.get(path).text)
                with server.client(node_token) as c:
                    desired = c.get("/v1/nodes/node-a/desired")
                    responses.append(desired.text)
                assert "BEGIN AGE ENCRYPTED FILE" in desired.text  # ciphertext is what travels
                responses.append(
                    fleetkeeper(
                        "status", "--server", server.url, "--format", "json", cwd=tmp_path
                    ).stdout
                )
                for agent in agents:
                    responses.append(agent.cli("status", "--format", "json").stdout)
        finally:
            server.stop()
            for agent in agents:
                agent.stop()

        # grep: the reconciler's database, logs and state; the agents' logs, reports,
        # journal and state dirs; the install roots except the secrets directory
        searched: list[Path] = [
            *files_under(tmp_path / "server"),
            *files_under(tmp_path / "fleet", skip=(tmp_path / "fleet" / ".git",)),
        ]
        for agent in agents:
            searched += [agent.log_path, *files_under(agent.state_dir)]
            searched += files_under(
                agent.install_root, skip=(agent.install_root / "secret-reader" / "secrets",)
            )
        assert any(p.name.endswith(".db") for p in searched), "the SQLite database was not searched"
        assert any("journal" in p.parts or p.name == "status.json" for p in searched)
        for plain in (API_KEY, TOKEN, ROTATED):
            for path in searched:
                assert plain.encode() not in path.read_bytes(), f"{plain} found in {path}"
            for text in responses:
                assert plain not in text
        assert secrets_dir.is_dir()  # where the plain text is, and only there


def fleet_with_secret(tmp: Path, names: list[str], identities: dict[str, str]) -> Path:
    """A work-tree fleet repo: coding nodes ``names`` and a release reading API_KEY."""
    root = tmp / "fleet"
    files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
    for n in names:
        doc = node_doc(n, roles=["coding"], labels={"port": "9000"})
        if n in identities:
            doc["ageRecipient"] = identities[n]
        files[f"nodes/{n}.yaml"] = doc
    arts = build_secret_reader(tmp / "dist", "1.0.0")
    files["releases/secret-reader/1.0.0.yaml"] = reader_release(
        "1.0.0", arts, "http://127.0.0.1:1/x.tar.gz", [SECRETS[0]]
    )
    repo = FleetRepo.create(root, files)
    return repo.path


def test_secret_encrypt_round_trip_and_check(tmp_path: Path) -> None:
    keys = {n: tmp_path / f"{n}.key" for n in ("n1", "n2", "op")}
    recipients = {n: age_keygen(p) for n, p in keys.items()}
    root = fleet_with_secret(tmp_path, ["n1", "n2"], {n: recipients[n] for n in ("n1", "n2")})
    fleet = root / "fleet.yaml"
    fleet.write_text(fleet.read_text() + f"secrets:\n  operatorRecipients: [{recipients['op']}]\n")

    missing = fleetkeeper("secret", "check", cwd=root)
    assert missing.returncode == 1 and "secrets/reader/api-key.age does not exist" in missing.stdout

    done = encrypt_api_key(root)
    assert done.returncode == 0, done.stderr
    assert API_KEY not in done.stdout + done.stderr
    age_file = root / "secrets/reader/api-key.age"
    assert age_file.read_text().startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    listed = (root / "secrets/reader/api-key.recipients").read_text()
    for n in ("n1", "n2", "op"):
        assert recipients[n] in listed
        out = subprocess.run(
            [str(AGE), "-d", "-i", str(keys[n]), str(age_file)], capture_output=True, check=True
        )
        assert out.stdout.decode() == API_KEY
    ok = fleetkeeper("secret", "check", cwd=root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert fleetkeeper("validate", cwd=root).returncode == 0

    # a new coding node joins with its own recipient: the release now targets a node the
    # secret is not encrypted to, and both check and validate refuse it, naming the node
    n3 = age_keygen(tmp_path / "n3.key")
    (root / "nodes/n3.yaml").write_text(
        (root / "nodes/n2.yaml")
        .read_text()
        .replace("name: n2", "name: n3")
        .replace(recipients["n2"], n3)
    )
    refused = fleetkeeper("secret", "check", cwd=root)
    assert refused.returncode == 1
    assert "releases/secret-reader/1.0.0.yaml:" in refused.stdout
    assert "is not encrypted to targeted node(s) n3" in refused.stdout
    invalid = fleetkeeper("validate", cwd=root)
    assert invalid.returncode == 1 and "targeted node(s) n3" in invalid.stdout

    # re-encrypting includes n3 and the check passes; n3 can decrypt with the age CLI
    again = encrypt_api_key(root)
    assert again.returncode == 0, again.stderr
    out = subprocess.run(
        [str(AGE), "-d", "-i", str(tmp_path / "n3.key"), str(age_file)],
        capture_output=True,
        check=True,
    )
    assert out.stdout.decode() == API_KEY
    assert fleetkeeper("secret", "check", cwd=root).returncode == 0

    # --nodes picks exactly those nodes (plus the operator)
    only = fleetkeeper("secret", "encrypt", "other", "--nodes", "n1", cwd=root, stdin="x")
    assert only.returncode == 0, only.stderr
    listed = (root / "secrets/other.recipients").read_text()
    assert (
        recipients["n1"] in listed and recipients["n2"] not in listed and recipients["op"] in listed
    )
    # a hand-edited recipients list that no longer matches the file is caught
    (root / "secrets/reader/api-key.recipients").write_text(
        f"{recipients['n1']} # node n1\n{recipients['n2']} # node n2\n{n3} # node n3\n"
    )
    stale = fleetkeeper("secret", "check", cwd=root)
    assert stale.returncode == 1 and "the list is stale" in stale.stdout


def test_secret_encrypt_refuses_a_node_without_recipient(tmp_path: Path) -> None:
    keys = {"n1": age_keygen(tmp_path / "n1.key")}
    root = fleet_with_secret(tmp_path, ["n1", "n2"], keys)
    done = encrypt_api_key(root)
    assert done.returncode == 1
    assert "n2 have no ageRecipient" in done.stderr
    assert not (root / "secrets").exists()  # nothing written
    bad = (root / "nodes/n1.yaml").read_text().replace(keys["n1"], keys["n1"][:-1] + "q")
    (root / "nodes/n1.yaml").write_text(bad)
    invalid = fleetkeeper("validate", cwd=root)
    assert invalid.returncode == 1 and "is not an age X25519 recipient" in invalid.stdout
