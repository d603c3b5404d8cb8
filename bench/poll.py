"""Benchmark: conditional GETs of desired state (the 304 path), ours vs nginx.

    .venv/bin/python bench/poll.py [--nodes 10000] [--agents 1000] [--seconds 10]

1. Starts ``fleetkeeper serve`` (one process) on a local fleet repo and registers
   ``--nodes`` nodes; prints the reconciler's RSS (VmRSS) with all of them registered.
2. ``--agents`` of them poll their desired state with ``If-None-Match`` and ``wait=0``
   (every answer is a 304) as fast as ``wrk`` can send, while a Python process sends
   their heartbeats (one status report per agent every ``--heartbeat`` seconds).
3. The same request pattern (same paths, same ETags, same heartbeat stream) against
   nginx (one worker) serving the same documents as static files with ETags.
Prints requests/s, p50/p99 latency for both and the ratio ours/nginx.
Needs ``wrk`` and ``nginx`` (Debian packages; installed with apt-get when missing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import Server, fleet_repo, join_token, register_body, start  # noqa: E402

WRK_SCRIPT = r"""
local rows = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do
    local path, etag, token = line:match("^([^\t]+)\t([^\t]+)\t?([^\t]*)$")
    rows[#rows + 1] = {path, etag, token}
  end
  math.randomseed(os.time() + tonumber(tostring(rows):sub(8), 16) % 1000)
  i = math.random(#rows)
end
request = function()
  i = i % #rows + 1
  local r = rows[i]
  local h = {["If-None-Match"] = r[2]}
  if r[3] ~= "" then h["Authorization"] = "Bearer " .. r[3] end
  return wrk.format("GET", r[1], h)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""

# The floor for any uvicorn app on this machine: answers 304 with no logic at all.
BARE_APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 304, "headers": [(b"etag", b'"0"')]})
    await send({"type": "http.response.body", "body": b""})
"""

NGINX_CONF = """
daemon off;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    etag on;
    default_type application/json;
  }}
}}
"""


def ensure_tools() -> None:
    missing = [
        p for p, exe in (("wrk", "wrk"), ("nginx", "/usr/sbin/nginx")) if not shutil.which(exe)
    ]
    if missing:
        print(f"installing {' '.join(missing)} with apt-get", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def register_all(server: Server, nodes: list[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    sem = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {join_token(server, len(nodes))}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as c:

        async def one(node: str) -> None:
            async with sem:
                r = await c.post(f"/v1/nodes/{node}/register", json=register_body(node))
                r.raise_for_status()
                tokens[node] = r.json()["token"]

        await asyncio.gather(*(one(n) for n in nodes))
    return tokens


async def report_all(url: str, tokens: dict[str, str]) -> None:
    """One status report per agent: later heartbeats repeat it (the steady state)."""
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(node: str, token: str) -> None:
            async with sem:
                body = {"node": node, "generation": 1, "workloads": []}
                r = await c.post(
                    f"/v1/nodes/{node}/status",
                    json=body,
                    headers={"Authorization": f"Bearer {token}"},
                )
                r.raise_for_status()

        await asyncio.gather(*(one(n, t) for n, t in tokens.items()))


async def fetch_all(url: str, tokens: dict[str, str]) -> dict[str, tuple[str, bytes]]:
    out: dict[str, tuple[str, bytes]] = {}
    sem = asyncio.Semaphore(32)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def one(node: str, token: str) -> None:
            async with sem:
                r = await c.get(
                    f"/v1/nodes/{node}/desired", headers={"Authorization": f"Bearer {token}"}
                )
                r.raise_for_status()
                out[node] = (r.headers["etag"], r.content)

        await asyncio.gather(*(one(n, t) for n, t in tokens.items()))
    return out


def heartbeats(
    url: str, tokens: dict[str, str], interval: float, stop_at: float, sent: multiprocessing.Value
) -> None:  # type: ignore[type-arg]
    """One status report per agent per ``interval`` seconds, spread evenly, until stop_at."""

    async def run() -> None:
        items = list(tokens.items())
        gap = interval / max(1, len(items))
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            i = 0
            next_at = time.monotonic()
            pending: set[asyncio.Task[object]] = set()
            while time.monotonic() < stop_at:
                node, token = items[i % len(items)]
                i += 1
                body = {"node": node, "generation": 1, "workloads": []}
                pending.add(
                    asyncio.create_task(
                        c.post(
                            f"/v1/nodes/{node}/status",
                            json=body,
                            headers={"Authorization": f"Bearer {token}"},
                        )
                    )
                )
                pending = {t for t in pending if not t.done()}
                next_at += gap
                await asyncio.sleep(max(0.0, min(next_at, stop_at) - time.monotonic()))
            await asyncio.gather(*pending, return_exceptions=True)
            sent.value = i

    asyncio.run(run())


def run_wrk(
    base: str, rows_file: Path, script: Path, seconds: int, connections: int
) -> dict[str, float]:
    proc = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "-s",
            str(script),
            base,
            "--",
            str(rows_file),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) (\d+)", proc.stdout)
    if not m:
        raise SystemExit("wrk gave no result:\n" + proc.stdout + proc.stderr)
    requests, duration_us, p50, p99, errors = (int(x) for x in m.groups())
    return {
        "rps": requests / (duration_us / 1e6),
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "errors": errors,
        "requests": requests,
    }


def poll_counts(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics").text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'fleetkeeper_desired_polls_total\{result="(\d+)"\} ([0-9.e+]+)', text)
    }


def measure(
    name: str,
    base: str,
    rows: Path,
    script: Path,
    args: argparse.Namespace,
    hb_url: str,
    tokens: dict[str, str],
) -> dict[str, float]:
    sent = multiprocessing.Value("i", 0)
    stop_at = time.monotonic() + args.seconds + 1
    hb = multiprocessing.Process(
        target=heartbeats, args=(hb_url, tokens, args.heartbeat, stop_at, sent)
    )
    hb.start()
    result = run_wrk(base, rows, script, args.seconds, args.connections)
    hb.join()
    result["heartbeats"] = sent.value
    print(
        f"{name:>8}: {result['rps']:9.0f} conditional GETs/s   p50 {result['p50_ms']:6.2f} ms"
        f"   p99 {result['p99_ms']:6.2f} ms   errors {result['errors']}"
        f"   heartbeats sent {sent.value}"
    )
    return result


def start_bare(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A bare uvicorn app (no logic) on the same loop and parser settings as ours."""
    port = free_port()
    (tmp / "bare_app.py").write_text(BARE_APP)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bare_app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}")
            return proc, port
        except httpx.TransportError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("bare uvicorn did not start") from None
            time.sleep(0.05)


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10000, help="nodes to register (RSS check)")
    ap.add_argument("--agents", type=int, default=1000, help="agents polling and heartbeating")
    ap.add_argument("--seconds", type=int, default=10, help="duration of each load run")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat interval (s)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs; medians reported")
    args = ap.parse_args()
    ensure_tools()
    tmp = Path(tempfile.mkdtemp(prefix="fk-bench-poll-"))
    bare, _work = fleet_repo(tmp)
    server = start(tmp, bare)
    nginx = None
    try:
        nodes = [f"node-{i:05d}" for i in range(args.nodes)]
        t0 = time.monotonic()
        tokens = asyncio.run(register_all(server, nodes))
        took = time.monotonic() - t0
        print(f"registered {len(tokens)} nodes in {took:.1f}s ({len(tokens) / took:.0f}/s)")
        time.sleep(2)  # let the reconcile loop write every node's desired document
        docs = asyncio.run(fetch_all(server.url, tokens))
        rss = server.rss_kib()
        print(
            f"reconciler RSS with {len(tokens)} registered nodes: {rss / 1024:.1f} MiB "
            f"(target < 250 MiB): {'OK' if rss < 250 * 1024 else 'OVER'}"
        )

        agents = nodes[: args.agents]
        agent_tokens = {n: tokens[n] for n in agents}
        asyncio.run(report_all(server.url, agent_tokens))
        time.sleep(1)  # the loop has planned from the first reports
        ours_rows = tmp / "ours.tsv"
        ours_rows.write_text(
            "".join(f"/v1/nodes/{n}/desired?wait=0\t{docs[n][0]}\t{tokens[n]}\n" for n in agents)
        )
        script = tmp / "poll.lua"
        script.write_text(WRK_SCRIPT)

        root = tmp / "static"
        for n in agents:
            p = root / "v1" / "nodes" / n / "desired"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(docs[n][1])
        port = free_port()
        prefix = tmp / "nginx"
        prefix.mkdir()
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=port, root=root))
        nginx = subprocess.Popen(
            ["/usr/sbin/nginx", "-c", str(prefix / "nginx.conf"), "-p", str(prefix)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nginx_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{nginx_url}/v1/nodes/{agents[0]}/desired")
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise SystemExit("nginx did not start") from None
                time.sleep(0.05)
        nginx_rows = tmp / "nginx.tsv"
        nginx_etags = {}
        with httpx.Client(base_url=nginx_url) as c:
            for n in agents:
                nginx_etags[n] = c.get(f"/v1/nodes/{n}/desired").headers["etag"]
            check = c.get(
                f"/v1/nodes/{agents[0]}/desired", headers={"If-None-Match": nginx_etags[agents[0]]}
            )
            assert check.status_code == 304, check.status_code
        nginx_rows.write_text(
            "".join(
                f"/v1/nodes/{n}/desired?wait=0\t{nginx_etags[n]}\t{tokens[n]}\n" for n in agents
            )
        )

        print(
            f"load: {args.agents} agents, wrk 1 thread x {args.connections} connections, "
            f"{args.seconds}s per server, heartbeat every {args.heartbeat:g}s per agent; "
            f"{os.cpu_count()} CPUs shared by server, wrk and the heartbeat sender"
        )
        bare = start_bare(tmp)
        bare_url = f"http://127.0.0.1:{bare[1]}"
        print(
            f"load average before: {os.getloadavg()[0]:.2f} (other work on the machine skews runs)"
        )
        runs: dict[str, list[dict[str, float]]] = {"ours": [], "nginx": [], "uvicorn": []}
        try:
            for _ in range(args.rounds):
                before = poll_counts(server.url)
                runs["ours"].append(
                    measure("ours", server.url, ours_rows, script, args, server.url, agent_tokens)
                )
                after = poll_counts(server.url)
                got_200 = after.get("200", 0) - before.get("200", 0)
                got_304 = after.get("304", 0) - before.get("304", 0)
                print(f"          server counted {got_304:.0f} x 304 and {got_200:.0f} x 200")
                runs["nginx"].append(
                    measure("nginx", nginx_url, nginx_rows, script, args, nginx_url, agent_tokens)
                )
                runs["uvicorn"].append(
                    measure("uvicorn", bare_url, nginx_rows, script, args, bare_url, agent_tokens)
                )
        finally:
            bare[0].terminate()
            bare[0].wait(timeout=10)
        ours, theirs, floor = (median_run(runs[k]) for k in ("ours", "nginx", "uvicorn"))
        ratio = ours["rps"] / theirs["rps"]
        for name, r in (("ours", ours), ("nginx", theirs), ("uvicorn", floor)):
            print(
                f"median {name:>7}: {r['rps']:7.0f} req/s  p50 {r['p50_ms']:.2f} ms  "
                f"p99 {r['p99_ms']:.2f} ms"
            )
        print(
            f"bare uvicorn (no logic) / nginx: {floor['rps'] / theirs['rps']:.2f}: the ceiling "
            f"for any uvicorn app here; ours reaches {ours['rps'] / floor['rps']:.0%} of it"
        )
        print(
            f"ratio ours/nginx: {ratio:.2f} (target >= 0.3)   "
            f"ours >= 2000 req/s: {'OK' if ours['rps'] >= 2000 else 'LOW'}"
        )
        print(
            json.dumps(
                {
                    "ours": ours,
                    "nginx": theirs,
                    "bare_uvicorn": floor,
                    "ratio": ratio,
                    "rss_mib": rss / 1024,
                    "nodes": len(tokens),
                    "agents": args.agents,
                }
            )
        )
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(timeout=10)
        code = server.stop()
        if code != 0:
            print(f"fleetkeeper serve exited with {code}; log: {server.log}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
