"""Fleet repos for rollout scenarios: documents as dicts, as a spec, or committed to a real repo.

Reusable by every engineer:

- ``release_doc`` / ``model_doc`` / ``node_doc`` / ``fleet_doc``: schema-valid documents;
- ``fleet_files(nodes, releases)``: ``{repo path: document}`` for a whole fleet;
- ``spec_of(files)``: the ``FleetSpec`` (pure, for planner tests);
- ``FleetRepo``: a real git repo whose every change lands on ``main`` through a
  ``--no-ff`` merge (approved under ``merged-pr``);
- ``report_doc`` / ``converged_report``: status reports as an agent would send them.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.spec import FleetSpec, build_spec
from tests.helpers.git import commit_all, git, head, init_repo

Doc = dict[str, Any]
API = "fleetkeeper/v1"


def fake_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def node_doc(
    name: str,
    *,
    platform: str = "linux/amd64",
    accelerator: str = "cpu",
    roles: Sequence[str] = ("inference",),
    labels: Mapping[str, str] | None = None,
    memory_gib: int | None = None,
) -> Doc:
    doc: Doc = {
        "apiVersion": API,
        "kind": "Node",
        "name": name,
        "platform": platform,
        "accelerator": accelerator,
        "roles": list(roles),
        "labels": dict(labels or {}),
    }
    if memory_gib is not None:
        doc["memoryGiB"] = memory_gib
    return doc


def rollout_block(
    *,
    batch_size: int | str = 1,
    canary: Sequence[str] = (),
    soak: int = 300,
    timeout: int = 900,
    on_failure: str = "halt",
) -> Doc:
    block: Doc = {
        "batchSize": batch_size,
        "soakSeconds": soak,
        "timeoutSeconds": timeout,
        "onFailure": on_failure,
    }
    if canary:
        block["canary"] = list(canary)
    return block


def release_doc(
    agent: str,
    version: str,
    *,
    roles: Sequence[str] | None = ("inference",),
    targets: Mapping[str, Any] | None = None,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64", "darwin/arm64"),
    url_base: str = "https://artifacts.fleet.test",
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    **rollout: Any,
) -> Doc:
    """A Release; ``rollout`` keywords go to ``rollout_block`` (batch_size, soak, ...)."""
    doc: Doc = {
        "apiVersion": API,
        "kind": "Release",
        "agent": agent,
        "version": version,
        "artifacts": [
            {
                "platform": p,
                "url": f"{url_base}/{agent}-{version}-{p.replace('/', '-')}.tar.gz",
                "sha256": fake_sha256(f"{agent}-{version}-{p}"),
                "size": 1024,
            }
            for p in platforms
        ],
        "run": {"command": list(command or ["bin/" + agent, "--port", "${node.labels.port}"])},
        "health": {"timeoutSeconds": 30},
        "versionProbe": ["bin/" + agent, "--version"],
        "targets": dict(targets) if targets is not None else {"roles": list(roles or [])},
        "rollout": rollout_block(**rollout),
    }
    if env:
        doc["run"]["env"] = dict(env)
    return doc


def model_doc(
    name: str,
    version: str,
    *,
    runtime: str = "llama-cpp",
    roles: Sequence[str] = ("inference",),
    **rollout: Any,
) -> Doc:
    return {
        "apiVersion": API,
        "kind": "Model",
        "name": name,
        "version": version,
        "runtime": runtime,
        "artifacts": [
            {
                "platform": "any",
                "url": f"https://artifacts.fleet.test/{name}-{version}.gguf",
                "sha256": fake_sha256(f"{name}-{version}"),
                "size": 1 << 30,
            }
        ],
        "args": {"port": "${node.labels.port}", "contextSize": 2048},
        "targets": {"roles": list(roles)},
        "rollout": rollout_block(**rollout),
    }


def fleet_doc(name: str = "testfleet", *, allow_insecure: bool = True, **defaults: Any) -> Doc:
    doc: Doc = {
        "apiVersion": API,
        "kind": "Fleet",
        "name": name,
        "allowInsecureURLs": allow_insecure,
    }
    if defaults:
        doc["defaults"] = {"rollout": rollout_block(**defaults)}
    return doc


def path_of(doc: Mapping[str, Any]) -> str:
    kind = doc["kind"]
    if kind == "Node":
        return f"nodes/{doc['name']}.yaml"
    if kind == "Release":
        return f"releases/{doc['agent']}/{doc['version']}.yaml"
    if kind == "Model":
        return f"models/{doc['name']}/{doc['version']}.yaml"
    return "fleet.yaml"


def fleet_files(
    nodes: Iterable[Doc] = (), releases: Iterable[Doc] = (), fleet: Doc | None = None
) -> dict[str, Doc]:
    """``{path: document}`` for a fleet repo (fleet.yaml included)."""
    files = {path_of(d): d for d in [fleet or fleet_doc(), *nodes, *releases]}
    return dict(sorted(files.items()))


def nodes_named(*names: str, **kw: Any) -> list[Doc]:
    return [node_doc(n, labels={"port": str(8080 + i)}, **kw) for i, n in enumerate(names)]


def spec_of(files: Mapping[str, Doc]) -> FleetSpec:
    return build_spec(files)


@dataclass
class FleetRepo:
    """A real work-tree git repo; ``change`` lands files on ``main`` via a --no-ff merge."""

    path: Path
    branch: str = "main"
    _n: int = field(default=0)

    @classmethod
    def create(cls, path: Path, files: Mapping[str, Doc] | None = None) -> FleetRepo:
        init_repo(path)
        (path / "README.md").write_text("fleet repo for tests\n")
        commit_all(path, "initial commit")
        repo = cls(path)
        if files:
            repo.change(files, "initial fleet")
        return repo

    def write(self, files: Mapping[str, Doc]) -> None:
        for rel, doc in files.items():
            p = self.path / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(yaml.safe_dump(doc, sort_keys=False))

    def change(self, files: Mapping[str, Doc], message: str, *, remove: Sequence[str] = ()) -> str:
        """Commit ``files`` (and delete ``remove``) on a topic branch, merge it; the merge sha."""
        self._n += 1
        topic = f"change-{self._n}"
        git(self.path, "checkout", "-q", "-b", topic)
        self.write(files)
        for rel in remove:
            git(self.path, "rm", "-q", rel)
        commit_all(self.path, message)
        git(self.path, "checkout", "-q", self.branch)
        git(
            self.path,
            "merge",
            "-q",
            "--no-ff",
            "--no-edit",
            "-m",
            f"Merge {topic}: {message}",
            topic,
        )
        return head(self.path)

    def direct_commit(self, files: Mapping[str, Doc], message: str) -> str:
        """A single-parent commit on main (not approved under merged-pr without a signature)."""
        self.write(files)
        return commit_all(self.path, message)

    def head(self) -> str:
        return head(self.path)


# --- status reports as agents send them ---------------------------------------------------


def workload_report(
    name: str,
    version: str | None,
    *,
    phase: str = "Healthy",
    healthy: bool | None = None,
    desired: str | None = None,
    message: str = "",
) -> Doc:
    w: Doc = {
        "name": name,
        "version": version,
        "desiredVersion": desired if desired is not None else version,
        "phase": phase,
        "healthy": (phase == "Healthy") if healthy is None else healthy,
    }
    if message:
        w["message"] = message
    return w


def report_doc(node: str, workloads: Sequence[Doc], generation: int = 0) -> Doc:
    return {
        "node": node,
        "generation": generation,
        "agentVersion": "0.1.0",
        "workloads": list(workloads),
    }


def converged_report(desired: Mapping[str, Any]) -> Doc:
    """What an agent that converged to ``desired`` (a desired-state document) reports."""
    return report_doc(
        str(desired["node"]),
        [workload_report(str(w["name"]), str(w["version"])) for w in desired.get("workloads", [])],
        int(desired.get("generation", 0)),
    )


def failed_report(desired: Mapping[str, Any], name: str, running: str | None, why: str) -> Doc:
    """An agent that failed to bring up ``name`` and flipped back to ``running``."""
    ws = []
    for w in desired.get("workloads", []):
        if w["name"] == name:
            ws.append(
                workload_report(
                    name,
                    running,
                    phase="Failed",
                    healthy=False,
                    desired=str(w["version"]),
                    message=why,
                )
            )
        else:
            ws.append(workload_report(str(w["name"]), str(w["version"])))
    return report_doc(str(desired["node"]), ws, int(desired.get("generation", 0)))


def desired_versions(doc: Mapping[str, Any] | None) -> dict[str, str]:
    """``{workload: version}`` of a desired-state document (empty for None)."""
    if doc is None:
        return {}
    return {str(w["name"]): str(w["version"]) for w in doc.get("workloads", [])}


# --- a pure simulation of the planner plus agents (no I/O), for planner scenarios ----------


@dataclass
class PlanSim:
    """Drives ``compute_plan`` like the loop does, with simulated agents.

    ``agents[node]`` is how that node's agent behaves: ``"ok"`` converges to whatever is
    desired, ``"down"`` sends nothing, ``"fail:<workload>"`` fails that workload (and keeps
    running what it ran before), ``"unhealthy:<workload>"`` runs it but unhealthy.
    """

    files: dict[str, Doc]
    ttl: float = 90.0
    now: float = 0.0
    revision: str = "a" * 40
    agents: dict[str, str] = field(default_factory=dict)
    rollouts: dict[str, Any] = field(default_factory=dict)
    desired: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, Any] = field(default_factory=dict)
    running: dict[str, dict[str, str]] = field(default_factory=dict)
    stale: frozenset[str] = frozenset()
    events: list[Any] = field(default_factory=list)
    registered: list[Any] = field(default_factory=list)
    last: Any = None

    def spec(self) -> FleetSpec:
        return spec_of(self.files)

    def plan(self) -> Any:
        """One pass at ``now`` without applying it."""
        from reconciler.plan.rollout import compute_plan
        from reconciler.plan.select import inventory

        spec = self.spec()
        return compute_plan(
            spec,
            inventory(spec, self.registered),
            self.rollouts,
            self.reports,
            self.desired,
            self.now,
            self.ttl,
            revision=self.revision,
            approval={"kind": "merge", "ref": self.revision, "signers": []},
            stale_before=self.stale,
        )

    def step(self, at: float | None = None) -> Any:
        """One pass at ``at`` (default: now), applied as the loop would apply it."""
        if at is not None:
            self.now = at
        plan = self.plan()
        self.rollouts = {k: dict(v) for k, v in plan.rollouts.items()}
        self.desired = {k: dict(v) for k, v in plan.desired.items()}
        self.stale = plan.stale
        self.events.extend(plan.events)
        self.last = plan
        return plan

    def heartbeat(self) -> None:
        """Every agent not down reports what it runs at ``now``."""
        from reconciler.plan.reports import NodeReport

        for node, doc in sorted(self.desired.items()):
            mode = self.agents.get(node, "ok")
            if mode == "down":
                continue
            running = self.running.setdefault(node, {})
            ws = []
            for w in doc.get("workloads", []):
                name, version = str(w["name"]), str(w["version"])
                if mode == f"fail:{name}" and running.get(name) != version:
                    ws.append(
                        workload_report(
                            name,
                            running.get(name),
                            phase="Failed",
                            healthy=False,
                            desired=version,
                            message="health check failed",
                        )
                    )
                    continue
                running[name] = version
                if mode == f"unhealthy:{name}":
                    ws.append(workload_report(name, version, phase="Unhealthy"))
                else:
                    ws.append(workload_report(name, version))
            self.reports[node] = NodeReport.from_json(node, report_doc(node, ws), self.now)

    def run_until(self, until: float, every: float = 30.0) -> Any:
        """Heartbeat and pass every ``every`` seconds up to and including ``until``."""
        plan = self.last
        while self.now + every <= until:
            self.now += every
            self.heartbeat()
            plan = self.step()
        return plan

    def versions(self, workload: str) -> dict[str, str | None]:
        """``{node: desired version of workload or None}``."""
        return {n: desired_versions(d).get(workload) for n, d in sorted(self.desired.items())}

    def state(self, name: str) -> Any:
        from reconciler.plan.state import state_from_json

        return state_from_json(self.rollouts[name])

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


# --- the real loop on a real repo and a real SQLite store, with an injected clock ----------


class Clock:
    """A settable clock for ``Reconciler(clock=...)``."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class LoopRig:
    """``Reconciler`` + ``SqliteStore`` + ``GitSource`` on a ``FleetRepo``; agents simulated
    by writing ``ReportRecord``s into the store, as the API does when an agent reports."""

    repo: FleetRepo
    state_dir: Path
    ttl: int = 90
    clock: Clock = field(default_factory=Clock)
    notified: list[str] = field(default_factory=list)
    reconciler: Any = None
    store: Any = None

    @classmethod
    def create(cls, tmp: Path, files: Mapping[str, Doc], **kw: Any) -> LoopRig:
        rig = cls(FleetRepo.create(tmp / "fleet", files), tmp / "state", **kw)
        rig.start()
        return rig

    @property
    def db_path(self) -> Path:
        return self.state_dir / "state.db"

    def config(self) -> Any:
        from reconciler.config import Config

        return Config(
            repo=str(self.repo.path),
            state_dir=self.state_dir,
            database=f"sqlite:///{self.db_path}",
            heartbeat_ttl=self.ttl,
            poll_interval=5.0,
        )

    def start(self) -> None:
        """(Re)open the store and build a fresh Reconciler, as after a process restart."""
        from reconciler.loop import Reconciler
        from reconciler.source import GitSource
        from reconciler.store import open_store

        cfg = self.config()
        self.store = open_store(cfg.database_url)
        source = GitSource(cfg.repo, cfg.state_dir, cfg.branch)
        self.reconciler = Reconciler(cfg, self.store, source, self.notified.append, self.clock)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None

    def once(self, at: float | None = None) -> Any:
        if at is not None:
            self.clock.t = at
        return self.reconciler.reconcile_once()

    def desired(self, node: str) -> Any:
        return self.store.desired(node)

    def versions(self, workload: str) -> dict[str, str | None]:
        return {
            d.node: desired_versions(d.document).get(workload) for d in self.store.all_desired()
        }

    def generations(self) -> dict[str, int]:
        return {d.node: d.generation for d in self.store.all_desired()}

    def put_report(self, doc: Doc, at: float | None = None) -> None:
        from reconciler.store.base import ReportRecord

        self.store.put_report(
            ReportRecord(node=str(doc["node"]), report=doc, received_at=at or self.clock.t)
        )

    def converge(self, *nodes: str) -> None:
        """Those agents report their desired document as running and healthy, now."""
        for n in nodes:
            rec = self.store.desired(n)
            self.put_report(converged_report(rec.document) if rec else report_doc(n, []))

    def fail(self, node: str, workload: str, running: str | None, why: str = "boom") -> None:
        rec = self.store.desired(node)
        self.put_report(failed_report(rec.document, workload, running, why))

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table of the SQLite file (to prove a pass wrote nothing)."""
        import sqlite3

        con = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True)
        try:
            tables = [
                r[0]
                for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not str(r[0]).startswith("sqlite_")
            ]
            return {
                t: sorted(con.execute(f'SELECT * FROM "{t}"').fetchall(), key=repr) for t in tables
            }
        finally:
            con.close()

    def phase(self, name: str) -> str:
        from reconciler.plan.state import state_from_json

        st = state_from_json(self.store.rollouts()[name])
        assert st is not None
        return st.phase

    def state(self, name: str) -> Any:
        from reconciler.plan.state import state_from_json

        return state_from_json(self.store.rollouts()[name])

    def audit_kinds(self) -> list[str]:
        return [e.kind for e in self.store.audit(limit=10000)]


# --- an agent over HTTP that only reports (no downloads): for end-to-end rollout tests -----


@dataclass
class HttpAgent:
    """Polls its desired document and reports it running healthy (or Failed / silent)."""

    url: str
    node: str
    token: str
    mode: str = "ok"  # ok | down | fail:<workload>
    running: dict[str, str] = field(default_factory=dict)
    last: dict[str, Any] | None = None
    # monotonic times, keyed "name@version": first seen desired (after the GET returned),
    # first reported healthy (before the POST was sent); bounds for soak assertions
    given_at: dict[str, float] = field(default_factory=dict)
    healthy_at: dict[str, float] = field(default_factory=dict)

    def desired(self) -> dict[str, Any] | None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=10) as c:
            r = c.get(
                f"/v1/nodes/{self.node}/desired",
                headers={"Authorization": f"Bearer {self.token}"},
            )
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        self.last = doc
        now = time.monotonic()
        for w in doc.get("workloads", []):
            self.given_at.setdefault(f"{w['name']}@{w['version']}", now)
        return doc

    def tick(self) -> dict[str, Any] | None:
        """Fetch desired, 'converge', report. Returns the desired document it acted on."""
        import httpx

        if self.mode == "down":
            return None
        doc = self.desired()
        if doc is None:
            return None
        ws = []
        for w in doc.get("workloads", []):
            name, version = str(w["name"]), str(w["version"])
            if self.mode == f"fail:{name}" and self.running.get(name) != version:
                ws.append(
                    workload_report(
                        name,
                        self.running.get(name),
                        phase="Failed",
                        healthy=False,
                        desired=version,
                        message="health check failed",
                    )
                )
                continue
            self.running[name] = version
            ws.append(workload_report(name, version))
        body = report_doc(self.node, ws, int(doc.get("generation", 0)))
        now = time.monotonic()
        for w in ws:
            if w["healthy"]:
                self.healthy_at.setdefault(f"{w['name']}@{w['version']}", now)
        with httpx.Client(base_url=self.url, timeout=10) as c:
            r = c.post(
                f"/v1/nodes/{self.node}/status",
                json=body,
                headers={"Authorization": f"Bearer {self.token}"},
            )
        assert r.status_code == 200, r.text
        return doc
