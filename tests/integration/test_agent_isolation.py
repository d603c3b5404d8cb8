"""A workload cannot read the agent's secrets (issue 10, point 6), against a real agent.

The attack: a workload prints ``FLEETKEEPER_BOOTSTRAP_TOKEN`` from its environment and reads
``stateDir/node.token``. Dropped to ``nobody`` (``run.user`` or the agent's ``workloadUser``)
it can do neither; without a user its environment is still the clean base. The suite runs
as root, so the drop is real (setgid, setgroups, setuid in the child).
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.state import StateDir, write_json
from tests.helpers.agents import REPO_ROOT, AgentProc, desired_doc, make_agent
from tests.helpers.artifacts import Artifact, describe, free_port

# A shell script: the interpreter under /root (the test venv's) is not readable by nobody.
SNOOP = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "snoop {version}"; exit 0; fi
echo "token=[$FLEETKEEPER_BOOTSTRAP_TOKEN]"
if cat "$STATE_DIR/node.token"; then echo; echo "READ-NODE-TOKEN"; else echo "CANNOT-READ"; fi
if ls "$STATE_DIR" >/dev/null 2>&1; then echo "LISTED-STATE"; fi
exec sleep 600
"""
BOOTSTRAP = "bootstrap-secret-0123456789abcdef"
NODE_TOKEN = "node-secret-fedcba9876543210"
BASE_KEYS = {
    "PATH",
    "HOME",
    "LANG",
    "FLEETKEEPER_WORKLOAD",
    "FLEETKEEPER_CONFIG_DIR",
    "FLEETKEEPER_DATA_DIR",
}


def snoop_artifact(dest: Path, version: str) -> Artifact:
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"snoop-{version}.tar.gz"
    data = SNOOP.format(version=version).encode()
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("bin/snoop")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return describe(path)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user may traverse (pytest's tmp_path is 0700, root's)."""
    path = Path(tempfile.mkdtemp(prefix="fk-isolation-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def start_snooping_agent(
    tmp: Path,
    shared: Path,
    monkeypatch: pytest.MonkeyPatch,
    run: dict[str, Any],
    *,
    wait: bool = True,
    **cfg: Any,
) -> AgentProc:
    art = snoop_artifact(shared / "dist", "1.0.0")
    for p in (shared / "dist", art.path):
        p.chmod(0o755)
    agent = make_agent(
        tmp,
        "node-i",
        [f"http://127.0.0.1:{free_port()}"],  # no reconciler: runs from its stored document
        None,
        installRoot=str(shared / "root"),
        **cfg,
    )
    state = StateDir(agent.state_dir)
    state.ensure()
    state.write_token(NODE_TOKEN)
    run = {**run, "env": {"STATE_DIR": str(agent.state_dir)}}
    w = {
        "name": "snoop",
        "kind": "process",
        "version": "1.0.0",
        "artifact": art.artifact_doc(art.path.resolve().as_uri()),
        "run": run,
        "versionProbe": ["bin/snoop", "--version"],
    }
    write_json(state.desired_file, {"document": desired_doc("node-i", 1, [w]), "etag": None})
    # The agent's own environment holds the join token, as under FLEETKEEPER_BOOTSTRAP_TOKEN.
    monkeypatch.setenv("FLEETKEEPER_BOOTSTRAP_TOKEN", BOOTSTRAP)
    agent.start()
    if wait:
        try:
            agent.wait_for(lambda a: a.phase("snoop") == "Healthy", what="snoop healthy")
        except AssertionError:
            agent.stop()
            agent.kill_workloads()
            raise
    return agent


def workload_facts(agent: AgentProc) -> tuple[dict[str, str], int, str]:
    """The live workload's environment and uid from /proc, and what it printed."""
    [pid] = agent.workload_pids()
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])
    log = (agent.state_dir / "logs" / "snoop.log").read_text()
    return env, uid, log


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
@pytest.mark.parametrize("where", ["run.user", "workloadUser"])
def test_workload_dropped_to_nobody_sees_no_secret(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    run: dict[str, Any] = {"command": ["bin/snoop"]}
    cfg: dict[str, Any] = {}
    if where == "run.user":
        run["user"] = "nobody"
    else:
        cfg["workloadUser"] = "nobody"
    agent = start_snooping_agent(tmp_path, shared_dir, monkeypatch, run, **cfg)
    try:
        env, uid, log = workload_facts(agent)
        assert uid == pwd.getpwnam("nobody").pw_uid
        assert "token=[]" in log
        assert BOOTSTRAP not in log and NODE_TOKEN not in log
        assert "CANNOT-READ" in log and "READ-NODE-TOKEN" not in log
        assert "LISTED-STATE" not in log
        assert set(env) - {"PWD"} == BASE_KEYS | {"STATE_DIR"}
        assert env["HOME"] == pwd.getpwnam("nobody").pw_dir
        assert env["FLEETKEEPER_WORKLOAD"] == "snoop"
        mode = agent.state_dir.stat().st_mode & 0o777
        assert mode == 0o700
        assert (agent.state_dir / "node.token").stat().st_mode & 0o777 == 0o600
    finally:
        agent.stop()
        agent.kill_workloads()


def test_workload_without_user_gets_a_clean_environment(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENT_ONLY_SECRET", "s3cret")
    agent = start_snooping_agent(tmp_path, shared_dir, monkeypatch, {"command": ["bin/snoop"]})
    try:
        env, uid, log = workload_facts(agent)
        assert uid == os.getuid()
        assert "token=[]" in log and BOOTSTRAP not in log
        assert set(env) - {"PWD"} == BASE_KEYS | {"STATE_DIR"}
        assert "AGENT_ONLY_SECRET" not in env
        assert env["PATH"] == os.environ["PATH"]
    finally:
        agent.stop()
        agent.kill_workloads()


def test_unknown_run_user_is_a_clear_failure(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = {"command": ["bin/snoop"], "user": "no-such-user-fk"}
    agent = start_snooping_agent(tmp_path, shared_dir, monkeypatch, run, wait=False)
    try:
        agent.wait_for(lambda a: a.phase("snoop") == "Failed", what="snoop failed")
        message = str(agent.workload("snoop")["message"])  # type: ignore[index]
        assert "workload user 'no-such-user-fk' does not exist on this node" in message
        assert agent.workload_pids() == []
    finally:
        agent.stop()
        agent.kill_workloads()


@pytest.mark.skipif(os.geteuid() != 0, reason="creating the directory as another user")
def test_agent_refuses_a_state_dir_owned_by_someone_else(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, "node-o", [f"http://127.0.0.1:{free_port()}"], None)
    agent.state_dir.mkdir(parents=True)
    nobody = pwd.getpwnam("nobody")
    os.chown(agent.state_dir, nobody.pw_uid, nobody.pw_gid)
    agent.start()
    assert agent.process is not None
    assert agent.process.wait(timeout=30) != 0
    assert f"stateDir {agent.state_dir} is owned by uid {nobody.pw_uid}" in agent.logs()


AGENT_CAPS = "+setuid,+setgid,+kill,+sys_ptrace,+dac_read_search"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_workload_of_a_non_root_agent_holds_no_capability(
    tmp_path: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent as the systemd unit runs it: not root, capabilities as *ambient* ones.
    Without clearing them, the workload (dropped to ``daemon``) would exec holding
    CAP_SETUID and could become root again. (CAP_DAC_READ_SEARCH only lets the agent's
    interpreter, under /root here, be read.)"""
    nobody = pwd.getpwnam("nobody")
    home = shared_dir / "agent"
    home.mkdir()
    os.chown(home, nobody.pw_uid, nobody.pw_gid)
    art = snoop_artifact(shared_dir / "dist", "1.0.0")
    agent = make_agent(
        tmp_path,
        "node-c",
        [f"http://127.0.0.1:{free_port()}"],
        None,
        installRoot=str(home / "root"),
        stateDir=str(home / "state"),
        workloadUser="daemon",
    )
    w = {
        "name": "snoop",
        "kind": "process",
        "version": "1.0.0",
        "artifact": art.artifact_doc(art.path.resolve().as_uri()),
        "run": {"command": ["bin/snoop"], "env": {"STATE_DIR": str(home / "state")}},
        "versionProbe": ["bin/snoop", "--version"],
    }
    agent.write_config()
    # The stored document, written as the agent's user would have.
    state = StateDir(home / "state")
    state.root.mkdir(mode=0o700)
    write_json(state.desired_file, {"document": desired_doc("node-c", 1, [w]), "etag": None})
    state.write_token(NODE_TOKEN)
    for p in (state.root, state.desired_file, state.token_file):
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    setpriv = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        f"--inh-caps={AGENT_CAPS}",
        f"--ambient-caps={AGENT_CAPS}",
    ]
    with agent.log_path.open("ab") as log:
        agent.process = subprocess.Popen(
            [
                *setpriv,
                sys.executable,
                "-m",
                "agent.cli",
                "run",
                "--config",
                str(agent.config_path),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_ROOT,
        )
    try:
        agent.wait_for(lambda a: a.phase("snoop") == "Healthy", what="snoop healthy", timeout=30)
        [pid] = agent.workload_pids()
        status = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        assert status["Uid"].split()[0] == str(pwd.getpwnam("daemon").pw_uid)
        for caps in ("CapAmb", "CapPrm", "CapEff"):
            assert int(status[caps].strip(), 16) == 0, (caps, status[caps])
        agent_status = Path(f"/proc/{agent.process.pid}/status").read_text()
        assert f"Uid:\t{nobody.pw_uid}" in agent_status  # the agent really was not root
        assert "CANNOT-READ" in (state.root / "logs" / "snoop.log").read_text()
    finally:
        agent.stop()
        agent.kill_workloads()
