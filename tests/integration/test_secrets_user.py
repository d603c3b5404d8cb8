"""A secret for a workload that runs as another user (``run.user``): its directory and
file belong to that user (0700 / 0600), the workload reads them, and the process record
in the agent's state directory holds no value."""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from agent.state import StateDir, write_json
from fleetkeeper_common.age import encrypt
from tests.helpers.agents import desired_doc, make_agent
from tests.helpers.artifacts import free_port
from tests.integration.test_agent_isolation import shared_dir, snoop_artifact

__all__ = ["shared_dir"]  # the fixture, reused

READER = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "snoop {version}"; exit 0; fi
echo "env $(printf %s "$API_KEY" | sha256sum | cut -d' ' -f1)"
echo "file $(sha256sum < "$FLEETKEEPER_SECRETS_DIR/token" | cut -d' ' -f1)"
exec sleep 600
"""
API_KEY, TOKEN = "sk-user-5d1e-api", "tok-user-77a0-file"


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_secret_file_belongs_to_run_user(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "tests.integration.test_agent_isolation.SNOOP", READER
    )  # the same artifact builder, another script
    art = snoop_artifact(shared_dir / "dist", "1.0.0")
    for p in (shared_dir / "dist", art.path):
        p.chmod(0o755)
    agent = make_agent(
        tmp_path,
        "node-u",
        [f"http://127.0.0.1:{free_port()}"],
        None,
        installRoot=str(shared_dir / "root"),
    )
    agent.write_config()
    state = StateDir(agent.state_dir)
    state.ensure()
    state.write_token("node-token-0123")
    recipient = agent.cli("identity").stdout.strip()
    w = {
        "name": "snoop",
        "kind": "process",
        "version": "1.0.0",
        "artifact": art.artifact_doc(art.path.resolve().as_uri()),
        "run": {"command": ["bin/snoop"], "user": "nobody"},
        "versionProbe": ["bin/snoop", "--version"],
        "secrets": [
            {
                "name": "API_KEY",
                "from": "secrets/k.age",
                "as": "env",
                "age": encrypt(API_KEY.encode(), [recipient]).decode(),
            },
            {
                "name": "token",
                "from": "secrets/t.age",
                "as": "file",
                "age": encrypt(TOKEN.encode(), [recipient]).decode(),
            },
        ],
    }
    write_json(state.desired_file, {"document": desired_doc("node-u", 1, [w]), "etag": None})
    agent.start()
    try:
        agent.wait_for(lambda a: a.phase("snoop") == "Healthy", what="snoop healthy")
        log = (agent.state_dir / "logs" / "snoop.log").read_text()
        assert f"env {hashlib.sha256(API_KEY.encode()).hexdigest()}" in log
        assert f"file {hashlib.sha256(TOKEN.encode()).hexdigest()}" in log
        where = shared_dir / "root" / "snoop" / "secrets" / "1.0.0"
        nobody = pwd.getpwnam("nobody")
        for path, mode in ((where, 0o700), (where / "token", 0o600)):
            st = path.stat()
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, mode), path
        # another unprivileged user cannot read it
        other = subprocess.run(
            [
                "setpriv",
                "--reuid=daemon",
                "--regid=daemon",
                "--clear-groups",
                "cat",
                str(where / "token"),
            ],
            capture_output=True,
            text=True,
        )
        assert other.returncode != 0 and TOKEN not in other.stdout
        for path in agent.state_dir.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert API_KEY.encode() not in data and TOKEN.encode() not in data, path
    finally:
        agent.stop()
        agent.kill_workloads()
