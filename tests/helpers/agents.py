"""Real ``fleetkeeper-agent run`` subprocesses for tests, the demo and benchmarks.

Reusable by every engineer::

    from tests.helpers.agents import running_agents

    with running_agents(tmp, server.url, server.bootstrap_token, ["node-a", "node-b"]) as agents:
        agents[0].wait_for(lambda a: a.phase("hello") == "Healthy", what="hello healthy")

Each agent gets its own config, installRoot and stateDir under ``tmp/<node>/``; output goes
to ``tmp/<node>/agent.log``. ``AgentProc.report()`` is the last status report the agent
built (``stateDir/status.json``), i.e. exactly what it sent. Teardown stops the agents
and then every workload they started (agents deliberately leave workloads running when
they exit, so the next agent can adopt them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.helpers.desired import desired_doc, workload_doc

REPO_ROOT = Path(__file__).resolve().parents[2]
# agent.daemon logs this (node filled in) once its signal handlers are installed
READY_LINE = " for node %s: servers "

# The documents live in tests.helpers.desired; kept importable from here for older callers.
__all__ = [
    "AgentProc",
    "agent_config",
    "desired_doc",
    "make_agent",
    "running_agents",
    "workload_doc",
]


def agent_config(
    node: str,
    servers: str | Sequence[str],
    base: Path,
    bootstrap_token: str | None,
    **overrides: Any,
) -> dict[str, Any]:
    base.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "server": servers if isinstance(servers, str) else list(servers),
        "node": node,
        "installRoot": str(base / "root"),
        "stateDir": str(base / "state"),
        "roles": ["inference"],
        "labels": {},
        "heartbeatSeconds": 1,
        "pollWaitSeconds": 5,
        "maxBackoffSeconds": 1,
        "stopGraceSeconds": 2,
        # the suite serves artifacts over http on 127.0.0.1 and from file:// paths: the
        # agent's own policy must say so (its defaults refuse both)
        "allowInsecureURLs": True,
        "allowFileURLs": True,
    }
    if bootstrap_token is not None:
        token_file = base / "bootstrap.token"
        token_file.write_text(bootstrap_token + "\n")
        config["bootstrapTokenFile"] = str(token_file)
    config.update(overrides)
    return config


@dataclass
class AgentProc:
    node: str
    base: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    @property
    def config_path(self) -> Path:
        return self.base / "agent.yaml"

    @property
    def install_root(self) -> Path:
        return Path(self.config["installRoot"])

    @property
    def state_dir(self) -> Path:
        return Path(self.config["stateDir"])

    @property
    def log_path(self) -> Path:
        return self.base / "agent.log"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start(self) -> AgentProc:
        self.write_config()
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"=== start {self.starts}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
            )
        return self

    def started(self) -> bool:
        """This start's log (after its ``=== start N`` marker) has the line the daemon logs
        right after installing its SIGTERM/SIGINT handlers: a stop now goes through them."""
        return READY_LINE % self.node in self.logs().rsplit(f"=== start {self.starts}\n", 1)[-1]

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until ``started()``: on a loaded machine the interpreter alone can take seconds,
        and a SIGTERM before the handlers exist kills the agent (-15) instead of stopping it."""
        self.wait_for(lambda a: a.started(), timeout=timeout, what="its signal handlers")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``fleetkeeper-agent ARGS --config <this agent's config>``, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "agent.cli", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)

    def stop(self) -> int | None:
        """SIGTERM and wait; returns the exit code. An agent that does not exit is
        SIGKILLed so no test leaves one behind, and the hang is raised."""
        if self.process is None:
            return None
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
            raise
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def report(self) -> dict[str, Any] | None:
        try:
            doc = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        report: dict[str, Any] = doc["report"]
        return report

    def workload(self, name: str) -> dict[str, Any] | None:
        for w in (self.report() or {}).get("workloads", []):
            if w["name"] == name:
                return dict(w)
        return None

    def phase(self, name: str) -> str | None:
        w = self.workload(name)
        return str(w["phase"]) if w else None

    def running(self, name: str) -> str | None:
        """The version the agent last reported as running."""
        w = self.workload(name)
        return w.get("version") if w else None

    def current(self, name: str) -> str | None:
        link = self.install_root / name / "current"
        try:
            return Path(os.readlink(link)).name
        except OSError:
            return None

    def wait_for(
        self,
        predicate: Callable[[AgentProc], bool],
        *,
        timeout: float = 20.0,
        what: str = "condition",
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"agent {self.node} exited with {self.process.returncode} while waiting for "
                    f"{what}\n{self.logs()[-4000:]}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"agent {self.node}: timed out after {timeout}s waiting for {what}; last report "
            f"{json.dumps(self.report(), indent=1)}\n{self.logs()[-4000:]}"
        )

    def workload_pids(self) -> list[int]:
        pids = []
        for rec in (self.state_dir / "processes").glob("*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(rec.read_text())["pid"]))
        return pids

    def kill_workloads(self) -> None:
        for pid in self.workload_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)


def make_agent(
    tmp: Path, node: str, servers: str | Sequence[str], bootstrap_token: str | None, **config: Any
) -> AgentProc:
    base = tmp / node
    return AgentProc(node, base, agent_config(node, servers, base, bootstrap_token, **config))


@contextlib.contextmanager
def running_agents(
    tmp: Path,
    servers: str | Sequence[str],
    bootstrap_token: str | None,
    nodes: Sequence[str],
    *,
    start: bool = True,
    **config: Any,
) -> Iterator[list[AgentProc]]:
    """Agents for ``nodes`` (started unless ``start=False``); all stopped and their
    workloads killed on exit."""
    agents = [make_agent(tmp, n, servers, bootstrap_token, **config) for n in nodes]
    try:
        if start:
            for a in agents:
                a.start()
        yield agents
    finally:
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop()
        for a in agents:
            a.kill_workloads()
