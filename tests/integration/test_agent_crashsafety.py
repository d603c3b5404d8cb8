"""kill -9 the real agent at random instants of an update, 50 times: the install root is
always consistent, workloads are never duplicated, and a restarted agent converges."""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

import httpx

from agent.layout import MARKER
from agent.state import write_json
from tests.helpers.agents import make_agent
from tests.helpers.artifact_server import free_port
from tests.helpers.artifacts import build_program
from tests.helpers.desired import desired_doc, workload_doc

ROUNDS = 50


def workload_pids(root: Path) -> list[int]:
    """Live session leaders whose working directory lies under ``root``: our workloads
    (a version probe the agent runs also works there, but is no session leader)."""
    real = os.path.realpath(root)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        leader = session == int(entry)
        if leader and state != "Z" and (cwd == real or cwd.startswith(real + "/")):
            found.append(int(entry))
    return found


def check_link(link: Path) -> None:
    if not os.path.lexists(link):
        return
    target = link.parent / os.readlink(link)
    assert target.is_dir() and (target / MARKER).is_file(), f"{link} -> incomplete {target}"


def test_kill_9_at_random_points_never_breaks_current(tmp_path: Path) -> None:
    rng = random.Random(5)
    port = free_port()
    dist = tmp_path / "dist"
    arts = {v: build_program(dist, "hello", v) for v in ("1.0.0", "1.1.0", "1.2.0")}
    docs = {
        v: workload_doc("hello", v, a, a.path.resolve().as_uri(), port, timeout=5)
        for v, a in arts.items()
    }
    # No reconciler at all: the agent works from the desired state stored in its stateDir.
    agent = make_agent(tmp_path, "node-k", f"http://127.0.0.1:{free_port()}", "t" * 32)
    desired = agent.state_dir / "desired.json"
    root = agent.install_root / "hello"
    try:
        for i in range(ROUNDS):
            version = ("1.0.0", "1.1.0")[i % 2]
            write_json(
                desired, {"document": desired_doc("node-k", i + 1, [docs[version]]), "etag": None}
            )
            agent.start()
            time.sleep(rng.uniform(0.1, 0.6))
            agent.kill()
            check_link(root / "current")
            check_link(root / "previous")
            pids = workload_pids(agent.install_root)
            assert len(pids) <= 1, f"round {i}: duplicated workloads {pids}"

        write_json(desired, {"document": desired_doc("node-k", 999, [docs["1.2.0"]]), "etag": None})
        agent.start()
        agent.wait_for(
            lambda a: (
                (w := a.workload("hello")) is not None
                and (w["version"], w["phase"]) == ("1.2.0", "Healthy")
            ),
            timeout=20,
            what="1.2.0 healthy after 50 kills",
        )
        assert (
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).text.strip() == "hello 1.2.0"
        )
        assert len(workload_pids(agent.install_root)) == 1
        assert Path(os.readlink(root / "current")).name == "1.2.0"
        leftovers = [p.name for p in (root / "versions").iterdir() if p.name.startswith(".")]
        assert leftovers == []
        report = json.loads((agent.state_dir / "status.json").read_text())["report"]
        assert report["workloads"][0]["pid"] in workload_pids(agent.install_root)
    finally:
        agent.stop()
        for pid in workload_pids(agent.install_root):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 9)
