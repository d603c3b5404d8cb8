"""The agent updates itself: staged like a workload, handed over by exec (same PID,
workloads adopted), confirmed after running steadily; a version that keeps dying is
rolled back after three starts. The install root is reached through a symlink."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from agent.layout import WorkloadLayout
from agent.state import write_json
from agent.unpack import unpack
from tests.helpers.agents import agent_config
from tests.helpers.artifact_server import free_port
from tests.helpers.artifacts import Artifact, build_agent, build_program
from tests.helpers.desired import desired_doc, workload_doc

SELF = "fleetkeeper-agent"


class ServiceManager:
    """Restart=always for one command, like the systemd unit in packaging/ (a real loop of
    real processes, not a stand-in for systemctl)."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv, self.log = argv, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stopping.is_set():
            with self.log.open("ab") as out:
                self.proc = subprocess.Popen(
                    self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
                self.starts += 1
                self.proc.wait()
            time.sleep(0.1)

    def start(self) -> ServiceManager:
        self.thread.start()
        return self

    def restart(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        self.stopping.set()
        self.restart()
        self.thread.join(timeout=15)


def self_doc(art: Artifact, version: str) -> dict[str, Any]:
    return {
        "name": SELF,
        "kind": "process",
        "version": version,
        "artifact": art.artifact_doc(art.path.resolve().as_uri()),
        "run": {"command": [f"bin/{SELF}"]},
        "versionProbe": [f"bin/{SELF}", "--version"],
    }


def test_agent_updates_itself_and_rolls_back_a_version_that_keeps_dying(tmp_path: Path) -> None:
    real_root = tmp_path / "data" / "fleetkeeper"
    real_root.mkdir(parents=True)
    root = tmp_path / "opt-fleetkeeper"
    root.symlink_to(real_root)
    dist = tmp_path / "dist"
    agents = {
        "0.1.0": build_agent(dist, "0.1.0"),
        "0.2.0": build_agent(dist, "0.2.0"),
        "0.3.0": build_agent(dist, "0.3.0", broken=True),
    }
    port = free_port()
    hello = build_program(dist, "hello", "1.0.0")
    hello_doc = workload_doc("hello", "1.0.0", hello, hello.path.resolve().as_uri(), port)

    # Installed by hand once (as a package or an installer would): versions/0.1.0 + current.
    layout = WorkloadLayout(root, SELF)
    staging = layout.staging_dir()
    unpack(agents["0.1.0"].path, staging, filename="a.tar.gz")
    layout.commit_staged(staging, "0.1.0", agents["0.1.0"].sha256)
    layout.flip(layout.current, "0.1.0")

    config = agent_config(
        "node-s",
        f"http://127.0.0.1:{free_port()}",  # offline: works from the stored desired state
        tmp_path / "node",
        "t" * 32,
        installRoot=str(root),
        selfUpdateConfirmSeconds=1.5,
    )
    config_path = tmp_path / "node" / "agent.yaml"
    config_path.write_text(yaml.safe_dump(config))
    state = Path(config["stateDir"])
    desired = state / "desired.json"

    def want(generation: int, version: str) -> None:
        doc = desired_doc("node-s", generation, [self_doc(agents[version], version), hello_doc])
        write_json(desired, {"document": doc, "etag": None})

    def report() -> dict[str, Any]:
        try:
            return dict(json.loads((state / "status.json").read_text())["report"])
        except (OSError, ValueError, KeyError):
            return {}

    def entry(name: str) -> dict[str, Any]:
        return next((w for w in report().get("workloads", []) if w["name"] == name), {})

    def wait(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"{what}: {report()}\n{log.read_text()[-3000:]}"
            time.sleep(0.05)

    log = tmp_path / "agent.log"
    want(1, "0.1.0")
    service = ServiceManager(
        [str(root / SELF / "current" / "bin" / SELF), "run", "--config", str(config_path)], log
    ).start()
    try:
        wait(lambda: entry("hello").get("phase") == "Healthy", "hello healthy on 0.1.0")
        assert report()["agentVersion"] == "0.1.0"
        assert entry(SELF)["version"] == "0.1.0" and entry(SELF)["phase"] == "Healthy"
        assert "managed by installRoot as workload fleetkeeper-agent" in log.read_text()
        hello_pid = entry("hello")["pid"]

        # 0.2.0: staged, preflighted, exec'ed in place (same PID), confirmed.
        want(2, "0.2.0")
        service.restart()  # the offline agent reads its stored state at start
        wait(lambda: report().get("agentVersion") == "0.2.0", "agent 0.2.0 running")
        agent_pid = service.proc.pid if service.proc else None
        assert entry(SELF)["pid"] == agent_pid  # exec: the process the manager started
        wait(lambda: entry(SELF).get("phase") == "Healthy", "self-update confirmed")
        assert entry(SELF)["version"] == "0.2.0"
        assert entry(SELF)["current"] == str(real_root.resolve() / SELF / "versions" / "0.2.0")
        assert entry("hello")["pid"] == hello_pid  # adopted across the exec, not restarted
        assert (
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text.strip() == "hello 1.0.0"
        )
        assert Path(os.readlink(root / SELF / "previous")).name == "0.1.0"
        assert "handing over from 0.1.0 to 0.2.0" in log.read_text()

        # 0.3.0 dies right after every start: after three starts it goes back to 0.2.0.
        starts_before = service.starts
        want(3, "0.3.0")
        service.restart()
        wait(
            lambda: (
                entry(SELF).get("phase") == "Failed" and report().get("agentVersion") == "0.2.0"
            ),
            "0.3.0 rolled back",
        )
        e = entry(SELF)
        assert (e["version"], e["desiredVersion"]) == ("0.2.0", "0.3.0")
        assert "did not run steadily in 3 starts" in e["message"]
        assert Path(os.readlink(root / SELF / "current")).name == "0.2.0"
        assert service.starts - starts_before >= 3
        assert entry("hello")["pid"] == hello_pid
        # Not retried for the same document.
        time.sleep(1.0)
        assert report().get("agentVersion") == "0.2.0"
        assert Path(os.readlink(root / SELF / "current")).name == "0.2.0"
    finally:
        service.stop()
        for rec in (state / "processes").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                os.killpg(int(json.loads(rec.read_text())["pid"]), signal.SIGKILL)
