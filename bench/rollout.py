"""Rollout planning figures: pure plan time for a large fleet, and one loop pass on SQLite.

    .venv/bin/python bench/rollout.py [NODES] [RELEASES]

Prints: compute_plan time for NODES nodes x RELEASES releases (mid-rollout, all nodes
reporting), the size of the rollout state, and the time of a real reconcile pass (git +
approval + plan + SQLite) that writes nothing, and of one that starts a new rollout.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("GIT_AUTHOR_NAME", "bench")
os.environ.setdefault("GIT_AUTHOR_EMAIL", "bench@fleet.test")
os.environ.setdefault("GIT_COMMITTER_NAME", "bench")
os.environ.setdefault("GIT_COMMITTER_EMAIL", "bench@fleet.test")

from tests.helpers.fleet import (  # noqa: E402
    LoopRig,
    PlanSim,
    fleet_files,
    nodes_named,
    release_doc,
)


def best(fn, runs: int = 5) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    n_nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    n_rel = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    names = tuple(f"node-{i:04d}" for i in range(n_nodes))
    releases = [release_doc(f"agent-{r}", "1.0.0", batch_size="10%", soak=60) for r in range(n_rel)]
    files = fleet_files(nodes_named(*names), releases)

    sim = PlanSim(files)
    sim.step(0)
    sim.run_until(300)  # mid-rollout, every node reporting
    plan_s = best(sim.plan)
    state_bytes = sum(len(str(v)) for v in sim.rollouts.values())
    print(f"compute_plan: {n_nodes} nodes x {n_rel} releases: {plan_s * 1000:.1f} ms")
    print(f"rollout state: ~{state_bytes / 1024:.0f} KiB for {n_rel} releases")

    with tempfile.TemporaryDirectory() as tmp:
        rig = LoopRig.create(Path(tmp), files)
        t = time.perf_counter()
        first = rig.once()
        first_s = time.perf_counter() - t
        rig.converge(*names)
        rig.clock.t += 30
        rig.once()
        idle_s = best(rig.once)
        assert rig.once().writes == 0
        print(
            f"loop pass, first (starts {n_rel} rollouts, {first.writes} writes): "
            f"{first_s * 1000:.0f} ms"
        )
        print(f"loop pass, nothing new (0 writes): {idle_s * 1000:.0f} ms")
        rig.close()


if __name__ == "__main__":
    main()
