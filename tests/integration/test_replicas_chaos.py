"""Chaos on real replicas: three ``fleetkeeper serve`` on one PostgreSQL, three real agents
(each listing all three servers), staged rollouts of a real program; the leader is killed
with SIGKILL at random moments (at least ``KILLS`` times), PostgreSQL itself is restarted
mid-rollout. Every rollout completes, no batch is skipped or repeated, every audit event is
there exactly once, and the store holds each agent's last acknowledged report.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.agents import AgentProc, running_agents
from tests.helpers.artifact_server import ArtifactServer, free_port
from tests.helpers.artifacts import build_program, hello_release
from tests.helpers.fleet import fleet_doc, node_doc
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.postgres import PostgresServer, database_of
from tests.helpers.replicas import ReplicaSet, replica_set

NODES = ("node-a", "node-b", "node-c")
KILLS = 20
ROLLOUT_TIMEOUT = 90.0
BATCH = re.compile(r"batch (\d+)/(\d+) (started|done)")


class Lab:
    def __init__(self, tmp: Path, repo: FleetRepo, artifacts: ArtifactServer) -> None:
        self.tmp, self.repo, self.artifacts = tmp, repo, artifacts

    def release(self, version: str) -> str:
        art = build_program(self.tmp / "dist", "hello", version)
        doc = hello_release(version, art, self.artifacts.url(art.path.name))
        doc["rollout"].update({"batchSize": 1, "soakSeconds": 1, "timeoutSeconds": 60})
        return self.repo.change({f"releases/hello/{version}.yaml": doc}, f"hello {version}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    files: dict[str, Any] = {"fleet.yaml": fleet_doc()}
    for n in NODES:
        files[f"nodes/{n}.yaml"] = node_doc(n, labels={"port": str(free_port())})
    repo = FleetRepo.create(tmp_path / "fleet", files)
    (tmp_path / "dist").mkdir()
    with ArtifactServer(tmp_path / "dist") as artifacts:
        yield Lab(tmp_path, repo, artifacts)


def converged(agents: list[AgentProc], version: str) -> bool:
    return all(a.running("hello") == version and a.phase("hello") == "Healthy" for a in agents)


def wait_succeeded(rs: ReplicaSet, version: str, timeout: float = 30.0) -> None:
    """Until the leader recorded the rollout's end (the last soak, then Succeeded)."""
    deadline = time.monotonic() + timeout
    phase = None
    while time.monotonic() < deadline:
        with contextlib.suppress(AssertionError, httpx.TransportError):
            releases = rs.fleet(rs.wait_leader())["releases"]
            phase = next(
                (r["phase"] for r in releases if r["agent"] == "hello" and r["version"] == version),
                None,
            )
            if phase == "Succeeded":
                return
        time.sleep(0.2)
    raise AssertionError(f"hello {version} is {phase}, not Succeeded\n{rs.tail()}")


def wait_ready_again(url: str, timeout: float) -> float:
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout:
        with contextlib.suppress(httpx.TransportError):
            r = httpx.get(f"{url}/readyz", timeout=10)
            if r.status_code == 200:
                return time.monotonic() - started
            last = r.text
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout}s: {last}")


def check_audit(rs: ReplicaSet, versions: list[str], revisions: list[str]) -> None:
    """Each rollout started, ran every batch in order and succeeded, each once; each
    revision applied once; no event recorded twice."""
    # the pass that marks the rollout Succeeded appends its events just after the state
    deadline = time.monotonic() + 10
    while True:
        events = rs.audit(rs.alive()[0])
        done = {e["message"] for e in events if e["kind"] == "succeeded"}
        if all(f"hello {v} rolled out" in done for v in versions) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    keys = collections.Counter(
        (e["kind"], e["message"], e["node"]) for e in events if e["kind"] != "registered"
    )
    twice = {k: c for k, c in keys.items() if c > 1 and k[0] not in ("stale", "fresh")}
    assert not twice, f"audit events recorded more than once: {twice}"
    applied = [e["revision"] for e in events if e["kind"] == "applied"]
    assert sorted(applied) == sorted(set(applied)), applied
    assert set(revisions) <= set(applied), (revisions, applied)
    for v in versions:
        mine = [e for e in events if e["release"] == "hello" and f"hello {v}" in e["message"]]
        kinds = [e["kind"] for e in mine]
        assert kinds.count("rollout-started") == 1, (v, kinds)
        assert kinds.count("succeeded") == 1, (v, kinds)
        steps = [BATCH.search(e["message"]) for e in mine if e["kind"].startswith("batch-")]
        got = [(int(m.group(1)), m.group(3)) for m in steps if m is not None]
        want = [(i, w) for i in range(1, len(NODES) + 1) for w in ("started", "done")]
        assert got == want, (v, got)


def check_reports(postgres: PostgresServer, url: str, agents: list[AgentProc]) -> None:
    """The store holds what each agent last sent and was answered for (its status.json)."""
    rows = postgres.execute(
        "SELECT node, report FROM reports ORDER BY node", database=database_of(url)
    )
    stored = {str(n): r for n, r in rows}
    for a in agents:
        sent = a.report()
        assert sent is not None
        doc = stored[a.node]
        stored_report = doc if isinstance(doc, dict) else json.loads(str(doc))
        assert stored_report["workloads"] == sent["workloads"], (a.node, stored_report, sent)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_rollouts_survive_leader_kills_at_random_moments(
    lab: Lab, postgres: PostgresServer, postgres_url: str
) -> None:
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    print(f"random seed {seed}")
    extra = {"heartbeatTTLSeconds": 30, "pollIntervalSeconds": 30}
    with (
        replica_set(lab.tmp / "rs", lab.repo, postgres_url, 3, extra_config=extra) as rs,
        running_agents(lab.tmp / "agents", rs.urls, rs.bootstrap_token, NODES) as agents,
    ):
        versions: list[str] = []
        revisions: list[str] = []
        failovers: list[float] = []
        restarting: threading.Thread | None = None
        kills = 0
        minor = 0
        while kills < KILLS:
            version = f"1.0.{minor}"
            minor += 1
            versions.append(version)
            revisions.append(lab.release(version))
            deadline = time.monotonic() + ROLLOUT_TIMEOUT
            while not converged(agents, version):
                assert time.monotonic() < deadline, (
                    f"{version} not rolled out after {kills} kills: "
                    f"{[a.report() for a in agents]}\n{rs.tail()}"
                )
                time.sleep(rng.uniform(0.2, 2.0))  # a random moment of the rollout
                if converged(agents, version) or kills >= KILLS:
                    continue
                if len(rs.alive()) < 2 and restarting is not None:
                    restarting.join()  # never kill the last replica standing
                leader = rs.wait_leader()
                rs.kill(leader)
                killed = time.monotonic()
                kills += 1
                rs.wait_leader(timeout=2 * 2, other_than=leader)
                failovers.append(time.monotonic() - killed)
                if restarting is not None:
                    restarting.join()
                # back as a follower on the same port, while the rollout goes on
                restarting = threading.Thread(target=rs.start, args=(leader,))
                restarting.start()
            wait_succeeded(rs, version)  # its last soak: the next release must not supersede it
            print(f"{version} rolled out; {kills} kills so far")
        if restarting is not None:
            restarting.join()
        check_audit(rs, versions, revisions)
        time.sleep(1.5)  # the agents' next heartbeat: nothing changed, nothing new stored
        check_reports(postgres, postgres_url, agents)
        p50 = statistics.median(failovers)
        p99 = sorted(failovers)[max(0, int(len(failovers) * 0.99) - 1)]
        print(
            f"{kills} leader kills over {len(versions)} rollouts; "
            f"new leader after p50 {p50:.2f}s p99 {p99:.2f}s max {max(failovers):.2f}s"
        )
        assert max(failovers) < 2 * 2  # leaderLeaseSeconds, with the 2 s of the test


def test_a_rollout_survives_a_postgresql_restart(
    lab: Lab, postgres: PostgresServer, postgres_url: str
) -> None:
    extra = {"heartbeatTTLSeconds": 30, "pollIntervalSeconds": 30}
    with (
        replica_set(lab.tmp / "rs", lab.repo, postgres_url, 2, extra_config=extra) as rs,
        running_agents(lab.tmp / "agents", rs.urls, rs.bootstrap_token, NODES) as agents,
    ):
        revisions = [lab.release("1.0.0")]
        agents[0].wait_for(lambda a: a.running("hello") == "1.0.0", what="batch 1", timeout=60)
        postgres.stop("fast")
        try:
            for i in rs.alive():  # not ready without the database, still alive
                r = httpx.get(f"{rs.urls[i]}/readyz", timeout=10)
                assert r.status_code == 503, r.text
            time.sleep(2)
            assert all(rs.leads(i) is False for i in rs.alive())  # nobody leads
        finally:
            postgres.start()
        rs.wait_leader(timeout=15)
        deadline = time.monotonic() + ROLLOUT_TIMEOUT
        while not converged(agents, "1.0.0"):
            assert time.monotonic() < deadline, f"{[a.report() for a in agents]}\n{rs.tail()}"
            time.sleep(0.2)
        wait_succeeded(rs, "1.0.0")
        for i in rs.alive():  # ready again once its pool has reconnected
            waited = wait_ready_again(rs.urls[i], 40.0)
            print(f"replica {i} ready {waited:.1f}s after the rollout ended")
        check_audit(rs, ["1.0.0"], revisions)
        time.sleep(1.5)
        check_reports(postgres, postgres_url, agents)
