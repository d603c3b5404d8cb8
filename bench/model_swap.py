"""Model swap benchmark: merge → node serving the new model, swap downtime, download+verify.

Runs a real reconciler (``fleetkeeper serve``), one real agent and llama.cpp's server on
127.0.0.1 with generated GGUF models: the tiny one the tests use (~0.5 MB) and a ~200 MB
one. For each size: version 1.0.0 is rolled out, then 1.1.0 is merged while a client
hammers the model port with one-token completions. Printed per size:

- merge → serving: from the merge commit to the first completion answered by a server that
  lists the new version's file in ``/v1/models``;
- outage: the longest stretch, from the merge until the swap is over, from the last
  successful completion before a failed request (refused, reset) to the next success, over
  4 clients hammering the port;
- longest stall: the longest stretch with no successful completion at all (failures or slow
  answers), with the failed requests per swap; the same stall measure over 1.5 s before
  the merge is printed as the steady-state gap (slow answers on a loaded machine);
- download+verify: the agent's own timings for the new artifact (MB/s).

Usage: ``.venv/bin/python bench/model_swap.py [--sizes tiny,200] [--rounds 3]
[--swap auto|overlap|restart]`` (``overlap``: blue/green handoff on a shared port;
``restart``: stop the old server, then start the new one).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.agents import running_agents  # noqa: E402
from tests.helpers.artifact_server import (
    ArtifactServer,  # noqa: E402
    free_port,  # noqa: E402
)
from tests.helpers.fleet import API, FleetRepo, fleet_doc, node_doc, rollout_block  # noqa: E402
from tests.helpers.models import ModelFile, write_gguf, write_large_gguf  # noqa: E402
from tests.helpers.server import running_server  # noqa: E402

NAME = "swap"
SWAP = "auto"  # --swap: auto (overlap when two copies fit in memory), overlap, restart
CLIENTS = 4  # concurrent hammering clients: one slow answer is not an outage
NODE = "node-a"


def model_yaml(version: str, model: ModelFile, url: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "Model",
        "name": NAME,
        "version": version,
        "runtime": "llama-cpp",
        "artifacts": [{"platform": "any", "url": url, "sha256": model.sha256, "size": model.size}],
        "args": {
            "port": "${node.labels.model-port}",
            "contextSize": 128,
            "threads": 2,
            "swap": SWAP,
        },
        "health": {"timeoutSeconds": 120},
        "targets": {"nodes": [NODE]},
        "rollout": rollout_block(soak=0, timeout=600),
    }


@dataclass
class Hammer:
    """Clients sending one-token completions back to back; records each outcome."""

    port: int
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.port}"
        with httpx.Client(timeout=5, trust_env=False) as c:
            while not self.stop.is_set():
                try:
                    r = c.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 1})
                    ok = r.status_code == 200
                    served = str(r.json().get("model", "")) if ok else ""
                except (httpx.HTTPError, ValueError):
                    ok, served = False, ""
                with self.lock:
                    self.results.append((time.monotonic(), ok, served))
                if not ok:
                    time.sleep(0.005)

    def outage(self, start: float, end: float) -> float:
        """Longest stretch in [start, end] from the last success before a failed request to
        the next success: the port refused or broke requests (0 when none failed)."""
        with self.lock:
            results = sorted(r for r in self.results if start <= r[0] <= end)
        worst, last_ok, failing = 0.0, start, False
        for t, ok, _ in results:
            if ok:
                if failing:
                    worst = max(worst, t - last_ok)
                last_ok, failing = t, False
            else:
                failing = True
        if failing:
            worst = max(worst, end - last_ok)
        return worst

    def downtime(self, start: float, end: float) -> tuple[float, int]:
        """Longest stretch in [start, end] with no successful completion by any client,
        and how many requests failed in it."""
        with self.lock:
            results = list(self.results)
        oks = sorted(t for t, ok, _ in results if ok and start <= t <= end)
        gaps = [b - a for a, b in zip([start, *oks], [*oks, end], strict=True)]
        failed = sum(1 for t, ok, _ in results if not ok and start <= t <= end)
        return max(gaps), failed


def serving(port: int, path_part: str) -> bool:
    try:
        with httpx.Client(timeout=2, trust_env=False) as c:
            ids = [m["id"] for m in c.get(f"http://127.0.0.1:{port}/v1/models").json()["data"]]
            if not any(path_part in i for i in ids):
                return False
            r = c.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "Hi"})
            return r.status_code == 200
    except (httpx.HTTPError, ValueError, KeyError):
        return False


def reported(agent: Any, version: str) -> bool:
    w = agent.workload(NAME)
    return bool(w and w.get("version") == version and w.get("phase") == "Healthy")


def wait(pred: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic()
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def one_size(tmp: Path, label: str, make: Any, rounds: int) -> dict[str, Any]:
    port = free_port()
    files = tmp / "files"
    files.mkdir(parents=True)
    versions = [f"1.{i}.0" for i in range(rounds + 1)]
    models = {v: make(files / f"{NAME}-{v}.gguf", i) for i, v in enumerate(versions)}
    nodes = {f"nodes/{NODE}.yaml": node_doc(NODE, labels={"model-port": str(port)})}
    repo = FleetRepo.create(tmp / "fleet", {"fleet.yaml": fleet_doc(), **nodes})
    out: dict[str, Any] = {"size": models[versions[0]].size, "rounds": []}
    with (
        ArtifactServer(files) as art,
        running_server(tmp / "reconciler", repo=repo) as server,
        running_agents(tmp / "agents", server.url, server.bootstrap_token, [NODE]) as agents,
    ):
        first = versions[0]
        url = art.url(models[first].path.name)
        repo.change({f"models/{NAME}/{first}.yaml": model_yaml(first, models[first], url)}, "v1")
        wait(lambda: serving(port, f"/versions/{first}/"), 180, f"{first} serving")
        for v in versions[1:]:
            hammer = Hammer(port)
            threads = [threading.Thread(target=hammer.run, daemon=True) for _ in range(CLIENTS)]
            for thread in threads:
                thread.start()
            time.sleep(2.0)
            merged = time.monotonic()
            baseline, _ = hammer.downtime(merged - 1.5, merged)
            doc = model_yaml(v, models[v], art.url(models[v].path.name))
            repo.change({f"models/{NAME}/{v}.yaml": doc}, f"model {v}")
            done = wait(lambda v=v: serving(port, f"/versions/{v}/"), 300, f"{v} serving")
            # The swap is over when the agent reports the new version proven (and, with a
            # handoff, the old server stopped): measure until a moment after that.
            settled = wait(lambda v=v: reported(agents[0], v), 300, f"{v} reported") + 0.5
            time.sleep(max(settled - time.monotonic(), 0))
            hammer.stop.set()
            for thread in threads:
                thread.join(10)
            gap, failed = hammer.downtime(merged, settled)
            timing = last_timing(agents[0].state_dir, v)
            mb = models[v].size / 1e6
            dl = timing.get("download", 0.0) + timing.get("verify", 0.0)
            out["rounds"].append(
                {
                    "merge_to_serving": done - merged,
                    "downtime": gap,
                    "outage": hammer.outage(merged, settled),
                    "baseline_gap": baseline,
                    "failed_requests": failed,
                    "requests": len(hammer.results),
                    "download_verify_s": dl,
                    "throughput_mb_s": mb / dl if dl > 0 else float("nan"),
                    "restart_s": timing.get("restart", float("nan")),
                    "prove_s": timing.get("prove", float("nan")),
                }
            )
    return out


def last_timing(state_dir: Path, version: str) -> dict[str, float]:
    path = state_dir / "timings.jsonl"
    found: dict[str, float] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("workload") == NAME and rec.get("version") == version:
                found = {k: float(v) for k, v in rec.items() if isinstance(v, int | float)}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,200", help="tiny and/or MiB sizes, e.g. tiny,200")
    parser.add_argument("--rounds", type=int, default=3, help="swaps per size")
    parser.add_argument("--swap", default="auto", choices=["auto", "overlap", "restart"])
    args = parser.parse_args()
    global SWAP
    SWAP = args.swap
    print(
        f"model swap benchmark: llama-cpp, 1 agent, {args.rounds} swaps per size, "
        f"swap: {args.swap}, {CLIENTS} clients"
    )
    for size in args.sizes.split(","):
        if size == "tiny":

            def make(p: Path, seed: int) -> ModelFile:
                return write_gguf(p, seed=seed)

        else:
            mib = int(size)

            def make(p: Path, seed: int, mib: int = mib) -> ModelFile:
                return write_large_gguf(p, mib=mib, seed=seed)

        with tempfile.TemporaryDirectory(prefix="fk-bench-") as tmp:
            res = one_size(Path(tmp), size, make, args.rounds)
        rounds = res["rounds"]

        def med(key: str, rounds: list[dict[str, Any]] = rounds) -> float:
            return statistics.median(r[key] for r in rounds)

        print(
            f"\n{size} GGUF ({res['size'] / 1e6:.1f} MB), median of {len(rounds)} swaps:\n"
            f"  merge -> node serving new model : {med('merge_to_serving'):6.2f} s\n"
            f"  outage (requests failing)       : {med('outage'):6.2f} s "
            f"(max {max(r['outage'] for r in rounds):.2f} s)\n"
            f"  longest stall (no completion)   : {med('downtime'):6.2f} s "
            f"(max {max(r['downtime'] for r in rounds):.2f} s; failed requests per swap "
            f"{[r['failed_requests'] for r in rounds]}; steady-state gap "
            f"{med('baseline_gap'):.2f} s)\n"
            f"  download+verify                 : {med('download_verify_s'):6.3f} s "
            f"= {med('throughput_mb_s'):.0f} MB/s\n"
            f"  agent restart / prove           : {med('restart_s'):6.2f} s / "
            f"{med('prove_s'):.2f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
