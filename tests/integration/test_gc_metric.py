"""``fleetkeeper serve`` times its own garbage collections: ``/metrics`` shows
``fleetkeeper_gc_pause_seconds{generation}`` filled by the real collector."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import running_server

SAMPLE = re.compile(r'^fleetkeeper_gc_pause_seconds_(count|sum)\{generation="(\d)"\} (\S+)$', re.M)


def _pauses(url: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(kind, gen): float(v) for kind, gen, v in SAMPLE.findall(text)}


def test_metrics_show_the_servers_collections_by_generation(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        # once ready, the server collects everything (generation 2) and freezes what
        # start-up built: that collection is the first generation-2 pause
        deadline = time.monotonic() + 30
        while _pauses(server.url).get(("count", "2"), 0) < 1:
            assert time.monotonic() < deadline, "no generation-2 collection recorded"
            time.sleep(0.1)
        before = _pauses(server.url)
        # requests allocate, so young collections follow; how many requests that takes
        # depends on how little each one allocates (the hot paths keep it small), so
        # keep reporting until one is recorded, within a bound
        tokens = {node: server.register(node) for node in ("node-a", "node-b", "node-c")}
        after = before
        deadline = time.monotonic() + 30
        generation = 0
        while after[("count", "0")] <= before[("count", "0")]:
            assert time.monotonic() < deadline, "no young collection recorded under load"
            for node, token in tokens.items():
                with server.client(token) as c:
                    for _ in range(20):
                        generation += 1
                        report = {"node": node, "generation": generation, "workloads": []}
                        assert c.post(f"/v1/nodes/{node}/status", json=report).status_code == 200
            after = _pauses(server.url)
    assert set(after) == {(k, g) for k in ("count", "sum") for g in "012"}
    assert after[("count", "0")] > before[("count", "0")]
    assert after[("sum", "0")] > before[("sum", "0")]
    assert 0 < after[("sum", "2")] < 10  # real seconds, not a counter of calls


def _frozen(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.search(r"^fleetkeeper_gc_frozen_objects (\S+)$", text, re.M)
    assert found, "no fleetkeeper_gc_frozen_objects in /metrics"
    return float(found.group(1))


@pytest.mark.parametrize("freeze_seconds", [0.2, 0])
def test_gc_freeze_seconds_moves_survivors_out_of_the_young_generations(
    tmp_path: Path, freeze_seconds: float
) -> None:
    with running_server(tmp_path, extra_config={"gcFreezeSeconds": freeze_seconds}) as server:
        deadline = time.monotonic() + 30
        while _frozen(server.url) == 0:  # the start-up freeze, once the first pass is done
            assert time.monotonic() < deadline, "nothing frozen after start-up"
            time.sleep(0.1)
        at_start = _frozen(server.url)
        tokens = {n: server.register(n) for n in ("node-a", "node-b", "node-c")}
        for node, token in tokens.items():  # new long-lived objects: nodes, reports, tokens
            with server.client(token) as c:
                report = {"node": node, "generation": 1, "workloads": []}
                assert c.post(f"/v1/nodes/{node}/status", json=report).status_code == 200
        time.sleep(1.0)
        later = _frozen(server.url)
    if freeze_seconds:
        assert later > at_start
    else:
        assert later <= at_start  # frozen once; those that died since were freed all the same
