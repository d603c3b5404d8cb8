"""Benchmark: `fleetkeeper plan` on a generated fleet repo, from scratch and incrementally.

    .venv/bin/python bench/plan.py [--commits 10000] [--releases 5000] [--nodes 1000]

Generates (with ``git fast-import``, a few seconds) a bare repo whose first-parent chain is
merges of topic commits: 1,000 node files, then one release file per merged topic, for
10,000 commits in all. Prints the time of:

- a full plan from scratch (cold caches: approval walks the whole history, every fleet
  file is read and validated),
- the re-plan after one new merge (warm caches: only the new commits are judged, only
  changed blobs re-read, only changed files go through the cross-file rules),
- the re-plan after a merge that edits a node file (every release is judged again by the
  cross-file rules: they depend on the node set),
- push-to-approved: a `git push` of one more merge into the bare repo until the watcher
  has woken and approval has returned the new revision.

Each phase is shown as wall time and CPU time of this process (``time.process_time``): on
a shared, loaded machine the CPU figure is the steadier one. ``--repeat N`` repeats the
incremental re-plan on N further merges and prints the median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from reconciler.approval.engine import Approver
from reconciler.commands.plan import build_view
from reconciler.config import ApprovalSettings
from reconciler.plan.inputs import PlanInputs
from reconciler.plan.rollout import compute_plan
from reconciler.plan.select import inventory
from reconciler.revision import fleet_listing, load_revision
from reconciler.source import GitSource

ROLES = 20
SHA = "a" * 64
# Kept across the plans below, as a running reconciler keeps its own (built in its wiring).
APPROVER = Approver()


def node_yaml(i: int) -> str:
    return (
        "apiVersion: fleetkeeper/v1\nkind: Node\n"
        f"name: node-{i:04d}\nplatform: linux/amd64\naccelerator: cpu\n"
        f'roles: [r{i % ROLES}]\nlabels: {{port: "{8000 + i % 100}"}}\n'
    )


def release_yaml(agent: int, version: str) -> str:
    return (
        "apiVersion: fleetkeeper/v1\nkind: Release\n"
        f"agent: agent-{agent:03d}\nversion: {version}\n"
        "artifacts:\n  - platform: linux/amd64\n"
        f"    url: https://artifacts.example.org/agent-{agent:03d}-{version}.tar.gz\n"
        f"    sha256: {SHA}\n    size: 1024\n"
        f'run:\n  command: [bin/agent, --port, "${{node.labels.port}}"]\n'
        f"targets:\n  roles: [r{agent % ROLES}]\n"
        "rollout:\n  batchSize: 10%\n"
    )


FLEET = "apiVersion: fleetkeeper/v1\nkind: Fleet\nname: bench\n"


class Stream:
    """A git fast-import stream written straight into the process's stdin."""

    def __init__(self, repo: Path) -> None:
        self.proc = subprocess.Popen(
            ["git", "fast-import", "--quiet", "--done"], cwd=repo, stdin=subprocess.PIPE
        )
        assert self.proc.stdin is not None
        self.out = self.proc.stdin
        self.mark = 0
        self.time = 1_700_000_000

    def data(self, text: str) -> None:
        raw = text.encode()
        self.out.write(b"data %d\n" % len(raw) + raw + b"\n")

    def commit(
        self,
        ref: str,
        message: str,
        files: dict[str, str],
        parent: str | None,
        merge: str | None = None,
    ) -> str:
        self.mark += 1
        self.time += 60
        self.out.write(f"commit {ref}\nmark :{self.mark}\n".encode())
        self.out.write(f"committer Bench <bench@example.org> {self.time} +0000\n".encode())
        self.data(message)
        if parent:
            self.out.write(f"from {parent}\n".encode())
        if merge:
            self.out.write(f"merge {merge}\n".encode())
        for path, text in files.items():
            self.out.write(f"M 100644 inline {path}\n".encode())
            self.data(text)
        return f":{self.mark}"

    def close(self) -> None:
        self.out.write(b"done\n")
        self.out.close()
        if self.proc.wait() != 0:
            raise SystemExit("git fast-import failed")


def version_of(n: int) -> str:
    return f"{1 + n // 50}.{n % 50}.0"


def merge_release(s: Stream, main: str | None, n: int, agents: int) -> str:
    files = {f"releases/agent-{n % agents:03d}/{version_of(n // agents)}.yaml": ""}
    path = next(iter(files))
    files[path] = release_yaml(n % agents, version_of(n // agents))
    topic = s.commit("refs/heads/topic", f"release {path}", files, main)
    return s.commit("refs/heads/main", f"Merge topic: {path}", files, main, topic)


def generate(repo: Path, commits: int, releases: int, nodes: int) -> None:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    s = Stream(repo)
    root = s.commit("refs/heads/main", "initial", {"README.md": "bench fleet\n"}, None)
    files = {
        "fleet.yaml": FLEET,
        **{f"nodes/node-{i:04d}.yaml": node_yaml(i) for i in range(nodes)},
    }
    topic = s.commit("refs/heads/topic", "nodes", files, root)
    main = s.commit("refs/heads/main", "Merge topic: nodes", files, root, topic)
    agents = max(1, releases // 50)
    made = 3
    n = 0
    while n < releases or made + 2 <= commits:
        if n < releases:
            main = merge_release(s, main, n, agents)
            n += 1
        else:  # filler: documentation merges that touch no fleet file
            topic = s.commit("refs/heads/topic", "docs", {"docs/notes.md": f"{made}\n"}, main)
            main = s.commit(
                "refs/heads/main", "Merge docs", {"docs/notes.md": f"{made}\n"}, main, topic
            )
        made += 2
    s.close()
    print(f"generated {made} commits, {n} release files, {nodes} nodes in {repo}")


def add_merge(repo: Path, n: int, agents: int) -> None:
    s = Stream(repo)
    merge_release(s, "refs/heads/main^0", n, agents)
    s.close()


def edit_node(repo: Path, i: int) -> None:
    """A merge that changes one node file (the node set changes: every release is judged
    again against it)."""
    s = Stream(repo)
    files = {f"nodes/node-{i:04d}.yaml": node_yaml(i) + "memoryGiB: 64\n"}
    topic = s.commit("refs/heads/topic", "node", files, "refs/heads/main^0")
    s.commit("refs/heads/main", "Merge topic: node", files, "refs/heads/main^0", topic)
    s.close()


Times = dict[str, tuple[float, float]]  # phase -> (wall, cpu) seconds


class Clock:
    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def phases(repo: Path, state: Path, *, quiet: bool = False) -> Times:
    """One plan, timed by phase (what ``fleetkeeper plan`` does, in the same order)."""
    out: Times = {}
    clock = Clock()
    source = GitSource(str(repo), state, "main")
    result = APPROVER.evaluate(source, ApprovalSettings(), None, state)
    out["approval (walk, judge)"] = clock.lap()
    assert result.revision is not None, result.refused[:3]
    listing = fleet_listing(source.repository(), result.revision)
    files = {p: o for p, o in listing}
    out["read tree listing"] = clock.lap()
    loaded = load_revision(source.repository(), result.revision)
    out["validate + build spec (load_revision)"] = clock.lap()
    assert loaded.spec is not None, loaded.violations[:3]
    view = build_view(result, loaded)
    out["desired workloads + batches (select)"] = clock.lap()
    out["total"] = (sum(w for w, _ in out.values()), sum(c for _, c in out.values()))
    if not quiet:
        print(
            f"  revision {view.revision[:12] if view.revision else None}: {len(files)} fleet "
            f"files, {len(view.nodes)} nodes, {sum(len(w) for w in view.nodes.values())} "
            "workloads"
        )
    return out


def loop_planner(repo: Path, state: Path) -> tuple[float, float]:
    """``compute_plan`` (what the reconcile loop runs instead of ``build_view``) on the tip's
    spec, mid-way: the rollouts started by a first pass, no reports yet. Wall, CPU."""
    source = GitSource(str(repo), state, "main")
    tip = source.tip()
    assert tip is not None
    loaded = load_revision(source.repository(), tip)
    assert loaded.spec is not None
    nodes = inventory(loaded.spec)
    first = compute_plan(PlanInputs(loaded.spec, nodes, {}, {}, {}, 0.0, 60.0, None, None))
    clock = Clock()
    compute_plan(
        PlanInputs(loaded.spec, nodes, first.rollouts, {}, first.desired, 10.0, 60.0, None, None)
    )
    return clock.lap()


def show(label: str, times: Times) -> None:
    print(f"{label:<48} {'wall':>9}    {'cpu':>9}")
    for k, (wall, cpu) in times.items():
        print(f"  {k:<46} {wall * 1000:9.1f} ms {cpu * 1000:9.1f} ms")


def median(runs: list[Times]) -> Times:
    return {
        k: (
            statistics.median(r[k][0] for r in runs),
            statistics.median(r[k][1] for r in runs),
        )
        for k in runs[0]
    }


async def push_to_approved(bare: Path, work: Path, state: Path) -> float:
    source = GitSource(str(bare), state, "main")
    APPROVER.evaluate(source, ApprovalSettings(), None, state)  # warm, as a running reconciler is
    done = asyncio.Event()
    seen: list[float] = []
    before = source.tip()

    def wake() -> None:
        result = APPROVER.evaluate(source, ApprovalSettings(), None, state)
        if result.revision != before:
            seen.append(time.perf_counter())
            done.set()

    stop = asyncio.Event()
    task = asyncio.create_task(source.watch(wake, stop, poll_interval=3600))
    await asyncio.sleep(0.5)
    await asyncio.to_thread(
        subprocess.run, ["git", "push", "-q", "origin", "main"], cwd=work, check=True
    )
    pushed = time.perf_counter()
    await asyncio.wait_for(done.wait(), 10)
    stop.set()
    await task
    return seen[0] - pushed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--commits", type=int, default=10_000)
    ap.add_argument("--releases", type=int, default=5_000)
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5, help="further one-merge re-plans (median)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
        repo = Path(tmp) / "fleet.git"
        t0 = time.perf_counter()
        generate(repo, args.commits, args.releases, args.nodes)
        print(f"{'generate (git fast-import)':<48} {(time.perf_counter() - t0) * 1000:9.1f} ms")
        agents = max(1, args.releases // 50)
        state = Path(tmp) / "state"
        show("full plan from scratch (cold caches)", phases(repo, state))
        show("re-plan, nothing new", phases(repo, state))
        applied = GitSource(str(repo), state, "main").tip()
        add_merge(repo, args.releases + 1, agents)
        show("incremental re-plan after one new merge", phases(repo, state))
        runs = []
        for i in range(args.repeat):
            applied = GitSource(str(repo), state, "main").tip()
            add_merge(repo, args.releases + 10 + i, agents)
            runs.append(phases(repo, state, quiet=True))
        if runs:
            show(f"same, median of {len(runs)} more merges", median(runs))
        source = GitSource(str(repo), state, "main")
        t = time.perf_counter()
        result = APPROVER.evaluate(source, ApprovalSettings(), applied, state)
        took = time.perf_counter() - t
        assert result.revision == source.tip()
        print(f"{'approval from the applied revision (the loop)':<48} {took * 1000:9.1f} ms")
        wall, cpu = loop_planner(repo, state)
        print(f"{'loop: compute_plan on that spec':<48} {wall * 1000:9.1f} ms {cpu * 1000:9.1f} ms")
        edit_node(repo, 7)
        show("re-plan after a merge that edits one node file", phases(repo, state))
        work = Path(tmp) / "work"
        subprocess.run(["git", "clone", "-q", str(repo), str(work)], check=True)
        add_merge(work / ".git", args.releases + 3, agents)
        latency = asyncio.run(push_to_approved(repo, work, Path(tmp) / "state"))
        print(f"{'push -> watcher -> new approved revision':<48} {latency * 1000:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
