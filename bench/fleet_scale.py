"""Benchmark: one ``fleetkeeper serve`` holding N simulated agents (issue 12).

    .venv/bin/python bench/fleet_scale.py [--agents 1000 2000 4000 8000] [--steady 30]
        [--replicas N --database URL [--kills K]] [--signed] [--gc-freeze S]

Per size, a fresh fleet repo (bare, watched) and a fresh ``fleetkeeper serve`` on SQLite
(or ``--database``), then simulated agents that behave like ``fleetkeeper-agent`` on the
wire, each with two raw HTTP/1.1 keep-alive connections (asyncio streams; no HTTP client
library, so the generator stays light):

- register (one join token scoped to role ``inference`` with ``uses: N``, see
  ``register_all``), then on connection 1 hold
  ``GET /v1/nodes/N/desired?wait=30`` with ``If-None-Match``, over and over;
- on connection 2 post a status report every 15 s (first one at a random point of the
  first 15 s, so the load is spread), and at once when a new document names a new
  version: that version, ``Healthy`` (a converged agent).

Phases and what is printed for each size:

1. registration rate (64 registrations in flight);
2. steady state over ``--steady`` seconds after a warm-up of one heartbeat interval:
   heartbeat p50/p99, server CPU seconds per wall second (utime+stime of the server
   processes from /proc), CPU per heartbeat, RSS (VmRSS), and the server's garbage
   collections in the window by generation (``fleetkeeper_gc_pause_seconds`` from
   /metrics: count, CPU in all, the bucket bounds holding the p99 and the longest);
3. first rollout: a merged release targeting every node, ``batchSize: 10%`` (10
   batches), ``soakSeconds: 0``; time from ``git push`` until the release is
   ``Succeeded`` (every agent holds it and reported it healthy);
4. merge -> every agent holds the new document: a new version with ``batchSize: 100%``
   (and the first agent's time, and the reconcile passes that ran meanwhile); then,
   one heartbeat interval later, the RSS again (in the table in brackets: every node
   now holds a release, and the rollouts' transient objects are gone);
5. with ``--replicas N --kills K``: K times, SIGKILL the leader (``fleetkeeper_leader 1``)
   and push a new version at once; time until another replica leads, and until every
   agent of the surviving replicas holds the new document; the killed one restarts on
   its port (its agents get connection errors meanwhile, counted below);
6. every error by kind (timeouts, connection errors, HTTP status other than 200/304).
   A keep-alive connection the server closed while idle is reopened and counted apart
   (``reconnects``), as a real HTTP client does.

With ``--signed`` every size runs twice in the same run: first a server with signing turned
off (``_unsigned_serve.py``: the code before issue 13) and agents asking for the plain
document, then the real ``serve`` (it always signs) with agents that ask for the batch-signed
envelope (``Accept: application/vnd.fleetkeeper.signed+json; proofs=merkle``, as
``fleetkeeper-agent`` does) and read the document from it; the table then gives
merge -> all hold for both and the ratio. Without ``--signed`` only the second run: the
real ``serve`` and agents that take the envelope (agents that asked for the plain document
of a signing server made it keep both forms, which no real fleet does).

RLIMIT_NOFILE is raised to its hard limit for this process and the server (two sockets
per agent on both sides: 8,000 agents need 16,000 descriptors each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import random
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _serve import (  # noqa: E402
    Server,
    fleet_repo,
    git,
    join_token,
    merge_change,
    percentile,
    register_body,
    start,
)

from fleetkeeper_common.signing import BATCH_TYPE  # noqa: E402

AGENT = "bench-agent"
HEARTBEAT = 15.0
WAIT = 30
CONNECT_LIMIT = 64  # connections opened at once (the server's listen backlog is 2048)
REQUEST_TIMEOUT = 20.0  # a status report or registration slower than this is an error
CLK_TCK = os.sysconf("SC_CLK_TCK")


class HttpError(Exception):
    """A failed exchange, with the kind it is counted under."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def host_port(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


class Conn:
    """One HTTP/1.1 keep-alive connection over asyncio streams (Content-Length bodies)."""

    def __init__(self, host: str, port: int, stats: Stats, gate: asyncio.Semaphore) -> None:
        self.host, self.port, self.stats, self.gate = host, port, stats, gate
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        async with self.gate:
            try:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                raise HttpError(f"connect: {exc.strerror or type(exc).__name__}") from exc

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        # A connection the server closed while idle (its keep-alive timeout) fails on
        # first use: reopen once, as an HTTP client's pool does.
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self.open()
            try:
                return await self._exchange(method, path, headers, body)
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                self.close()
                if fresh or attempt == 1:
                    raise HttpError(f"connection: {type(exc).__name__}") from exc
                self.stats.reconnects += 1
        raise AssertionError("unreachable")

    async def _exchange(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.reader is not None and self.writer is not None
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        got: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                got[k.strip().lower()] = v.strip()
        length = int(got.get("content-length", "0"))
        data = await self.reader.readexactly(length) if length else b""
        if got.get("connection", "").lower() == "close":
            self.close()
        return status, got, data


@dataclass
class Stats:
    heartbeats: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, ms)
    errors: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1


def versions(doc: dict[str, object]) -> tuple[str, ...]:
    items = doc.get("workloads")
    return tuple(
        str(w.get("version"))
        for w in (items if isinstance(items, list) else [])
        if isinstance(w, dict) and w.get("name") == AGENT
    )


class Agent:
    """One simulated fleetkeeper-agent: a long-poll loop and a heartbeat loop."""

    def __init__(
        self,
        node: str,
        token: str,
        server: Server,
        stats: Stats,
        gate: asyncio.Semaphore,
        home: int = 0,
        signed: bool = False,
    ):
        self.node, self.stats = node, stats
        self.home = home  # the index of its replica (--replicas)
        self.auth = {"Authorization": f"Bearer {token}"}
        self.signed = signed  # asks for the envelope, as fleetkeeper-agent does
        self.poll_headers = {**self.auth, **({"Accept": BATCH_TYPE} if signed else {})}
        self.poll_conn = Conn(*host_port(server), stats, gate)
        self.status_conn = Conn(*host_port(server), stats, gate)
        self.status_lock = asyncio.Lock()
        self.etag = '"none"'
        self.generation = 0
        self.held: tuple[str, ...] = ()  # versions in the document the agent holds
        self.got_at: dict[str, float] = {}  # version -> when a document first named it
        self.running: str | None = None  # the version it reports running

    def report(self) -> bytes:
        workloads = []
        if self.running is not None:
            workloads.append(
                {
                    "name": AGENT,
                    "version": self.running,
                    "desiredVersion": self.running,
                    "phase": "Healthy",
                    "healthy": True,
                }
            )
        doc = {
            "node": self.node,
            "generation": self.generation,
            "agentVersion": "0.1.0",
            "workloads": workloads,
        }
        return json.dumps(doc).encode()

    async def send_report(self, measured: bool) -> None:
        async with self.status_lock:
            started = time.monotonic()
            try:
                status, _, _ = await asyncio.wait_for(
                    self.status_conn.request(
                        "POST", f"/v1/nodes/{self.node}/status", self.auth, self.report()
                    ),
                    REQUEST_TIMEOUT,
                )
            except HttpError as exc:
                self.stats.error(f"status {exc.kind}")
                return
            except TimeoutError:
                self.status_conn.close()
                self.stats.error("status timeout")
                return
            if status != 200:
                self.stats.error(f"status HTTP {status}")
                return
            if measured:
                self.stats.heartbeats.append((started, (time.monotonic() - started) * 1000))

    async def heartbeats(self, stop: asyncio.Event) -> None:
        # on a fixed schedule (not 15 s after the last answer): a slow answer must not
        # bunch later heartbeats together, nor hide load (coordinated omission)
        due = time.monotonic() + random.uniform(0, HEARTBEAT)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            if stop.is_set():
                return
            await self.send_report(measured=True)
            due += HEARTBEAT

    async def poll(self, stop: asyncio.Event) -> None:
        path = f"/v1/nodes/{self.node}/desired?wait={WAIT}"
        while not stop.is_set():
            headers = {**self.poll_headers, "If-None-Match": self.etag}
            try:
                status, got, body = await asyncio.wait_for(
                    self.poll_conn.request("GET", path, headers), WAIT + REQUEST_TIMEOUT
                )
            except HttpError as exc:
                self.stats.error(f"desired {exc.kind}")
                await asyncio.sleep(1)
                continue
            except TimeoutError:
                self.poll_conn.close()
                self.stats.error("desired timeout")
                continue
            if status == 304:
                continue
            if status != 200:
                self.stats.error(f"desired HTTP {status}")
                await asyncio.sleep(1)
                continue
            doc = json.loads(body)
            if self.signed:
                if "signed" not in doc:  # the server did not sign: not what is measured
                    self.stats.error("desired unsigned")
                    await asyncio.sleep(1)
                    continue
                doc = doc["signed"]
            self.etag = got.get("etag", self.etag)
            self.generation = int(doc.get("generation", 0))
            self.held = versions(doc)
            now = time.monotonic()
            for v in self.held:
                self.got_at.setdefault(v, now)
            new = self.held[0] if self.held else None
            if new != self.running:  # "converged" at once: report the new version healthy
                self.running = new
                await self.send_report(measured=False)

    async def connect(self) -> None:
        for conn in (self.poll_conn, self.status_conn):
            try:
                await conn.open()
            except HttpError as exc:
                self.stats.error(exc.kind)  # the loops open it again on first use

    def close(self) -> None:
        self.poll_conn.close()
        self.status_conn.close()


def release(version: str, batch_size: str) -> dict[str, object]:
    return {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Release",
        "agent": AGENT,
        "version": version,
        "artifacts": [
            {
                "platform": "linux/amd64",
                "url": f"https://artifacts.fleet.test/{AGENT}-{version}.tar.gz",
                "sha256": hashlib.sha256(version.encode()).hexdigest(),
                "size": 1024,
            }
        ],
        "run": {"command": [f"bin/{AGENT}"]},
        "targets": {"roles": ["inference"]},
        "rollout": {"batchSize": batch_size, "soakSeconds": 0, "timeoutSeconds": 600},
    }


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


async def loop_lag(samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    """The generator's own event-loop lag: how late a 10 ms sleep wakes (monotonic, ms).
    A late wake-up delays every heartbeat it measures, whatever the server did."""
    while not stop.is_set():
        due = time.monotonic() + 0.01
        await asyncio.sleep(0.01)
        now = time.monotonic()
        samples.append((now, (now - due) * 1000))


async def register_all(
    servers: Sequence[Server], nodes: Sequence[str], stats: Stats
) -> dict[str, str]:
    # One join token per server, scoped to the role the agents claim, with one use per
    # node, under ``registration: {unlisted: allow}`` (set by ``fleet_repo``): how an
    # operator enrols a fleet of identical machines without a file per node, as Teleport's
    # multi-use join tokens do. The alternative (8,000 files in nodes/ and the bootstrap
    # token) would change the fleet repo the "before" figures were measured with, and
    # make every revision parse 8,000 node files; per heartbeat the server does the same
    # work either way (admission is a flag on the node's record, read by the planner).
    join_secrets = [join_token(s, len(nodes)) for s in servers]
    tokens: dict[str, str] = {}
    queue = list(enumerate(nodes))
    gate = asyncio.Semaphore(CONNECT_LIMIT)

    async def worker(w: int) -> None:
        conns = {i: Conn(*host_port(s), stats, gate) for i, s in enumerate(servers)}
        while queue:
            i, node = queue.pop()
            body = json.dumps(register_body(node)).encode()
            headers = {"Authorization": f"Bearer {join_secrets[i % len(servers)]}"}
            try:
                status, _, data = await asyncio.wait_for(
                    conns[i % len(servers)].request(
                        "POST", f"/v1/nodes/{node}/register", headers, body
                    ),
                    REQUEST_TIMEOUT,
                )
            except HttpError as exc:
                stats.error(f"register {exc.kind}")
                continue
            except TimeoutError:
                conns[i % len(servers)].close()
                stats.error("register timeout")
                continue
            if status != 200:
                stats.error(f"register HTTP {status}")
                continue
            tokens[node] = json.loads(data)["token"]
        for c in conns.values():
            c.close()

    await asyncio.gather(*(worker(w) for w in range(CONNECT_LIMIT)))
    return tokens


async def admin_get(server: Server, path: str) -> dict[str, object]:
    conn = Conn(*host_port(server), Stats(), asyncio.Semaphore(1))
    try:
        status, _, body = await conn.request(
            "GET", path, {"Authorization": f"Bearer {server.admin}"}
        )
    finally:
        conn.close()
    if status != 200:
        raise SystemExit(f"GET {path}: HTTP {status}")
    doc: dict[str, object] = json.loads(body)
    return doc


async def wait_until(
    check: Callable[[], bool | Awaitable[bool]], timeout: float, what: str
) -> float:
    """Poll ``check()`` (sync or async) every 50 ms; seconds until true."""
    started = time.monotonic()
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def release_phase(server: Server, version: str) -> str | None:
    doc = await admin_get(server, "/v1/releases")
    rows = doc.get("releases")
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and row.get("agent") == AGENT and row.get("version") == version:
            return str(row.get("phase"))
    return None


@dataclass
class Result:
    agents: int
    signed: bool = True  # this run's mode: False, signing off (--signed's first run)
    registration_rate: float = 0.0
    registration_cpu_ms: float = 0.0  # server CPU per registration
    p50: float = 0.0
    p99: float = 0.0
    cpu_per_s: float = 0.0
    cpu_ms_per_heartbeat: float = 0.0
    rss_mib: float = 0.0
    rss_after_mib: float = 0.0  # steady again after the rollouts (every node holds more)
    first_rollout: float | None = None
    fanout: float | None = None  # the median over --repeat fan-outs
    fanouts: list[float] = field(default_factory=list)
    fanout_cpu: float | None = None  # server CPU seconds from push to all hold (median)
    errors: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    generator_cpu_per_s: float = 0.0
    generator_lag_p99: float = 0.0  # the generator's own loop lag (ms), see loop_lag
    generator_lag_max: float = 0.0
    load_average: float = 0.0  # 1-minute, at the end of the steady window
    # the server's collections in the steady window, per generation (see gc_summary)
    gc: dict[str, dict[str, float]] = field(default_factory=dict)
    # --kills: leader SIGKILLed -> another replica leads / every surviving agent holds
    # the version pushed at the kill
    elected_p50: float | None = None
    elected_p99: float | None = None
    failover_p50: float | None = None
    failover_p99: float | None = None


async def run_size(n: int, args: argparse.Namespace, tmp: Path, signed: bool = True) -> Result:
    res = Result(agents=n, signed=signed)
    bare, work = fleet_repo(tmp)
    extra: dict[str, object] = {}
    if args.database:
        extra["database"] = args.database
    if args.gc_freeze is not None:
        extra["gcFreezeSeconds"] = args.gc_freeze
    servers = [
        start(tmp / f"server-{i}", bare, poll_interval=60, extra=extra, unsigned=not signed)
        for i in range(args.replicas)
    ]
    stats = Stats()
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    agents: list[Agent] = []
    try:
        nodes = [f"node-{i:05d}" for i in range(n)]
        pids = [s.proc.pid for s in servers]
        t0, cpu0 = time.monotonic(), cpu_seconds(pids)
        tokens = await register_all(servers, nodes, stats)
        res.registration_rate = len(tokens) / (time.monotonic() - t0)
        # the server's CPU per registration: what the rate would be on a core of its own
        res.registration_cpu_ms = (cpu_seconds(pids) - cpu0) * 1000 / max(1, len(tokens))
        print(
            f"  {n}: registered {len(tokens)} in {time.monotonic() - t0:.1f}s "
            f"({res.registration_cpu_ms:.2f} ms server CPU each)",
            flush=True,
        )
        gate = asyncio.Semaphore(CONNECT_LIMIT)
        for i, node in enumerate(nodes):
            if node in tokens:
                home = i % len(servers)
                agents.append(Agent(node, tokens[node], servers[home], stats, gate, home, signed))
        # The generator must not pause itself: its collections stop its event loop and
        # show up as server latency. Measured (gc.callbacks) at 8,000 agents with only the
        # full ones off: generation-1 collections of 120-150 ms every few seconds that
        # freed nothing, each the slowest heartbeats of its run; so none at all until
        # this size is over (the generator's garbage is not cyclic: nothing was freed).
        gc.freeze()
        gc.disable()
        # both connections of every agent first (64 handshakes in flight), then the loops:
        # connection set-up is not part of the steady state
        t0 = time.monotonic()
        await asyncio.gather(*(a.connect() for a in agents))
        print(f"  {n}: {2 * len(agents)} connections in {time.monotonic() - t0:.1f}s", flush=True)
        t_loops = time.monotonic()
        lags: list[tuple[float, float]] = []
        tasks.append(asyncio.create_task(loop_lag(lags, stop)))
        for a in agents:
            tasks.append(asyncio.create_task(a.poll(stop)))
            tasks.append(asyncio.create_task(a.heartbeats(stop)))

        # steady state: after one heartbeat interval every agent has reported once
        await asyncio.sleep(HEARTBEAT + 2)
        drops0 = listen_overflows()
        gc0 = await gc_buckets(servers)
        cpu0, gen0, w0 = cpu_seconds(pids), time.process_time(), time.monotonic()
        await asyncio.sleep(args.steady)
        cpu1, gen1, w1 = cpu_seconds(pids), time.process_time(), time.monotonic()
        res.gc = gc_summary(gc0, await gc_buckets(servers))
        print(f"  {n}: server GC pauses in the steady window: {gc_text(res.gc)}", flush=True)
        window = [ms for t, ms in stats.heartbeats if w0 <= t < w1]
        if args.dump:  # every heartbeat: seconds since the agents started, latency in ms
            args.dump.write_text(
                "".join(f"{t - t_loops:.3f} {ms:.2f}\n" for t, ms in stats.heartbeats)
            )
        slow = sorted(((ms, t - w0) for t, ms in stats.heartbeats if w0 <= t < w1), reverse=True)
        print(f"  {n}: steady window from {time.strftime('%H:%M:%S')} minus {w1 - w0:.0f}s")
        print(
            f"  {n}: steady: {sum(ms > 100 for ms, _ in slow)} heartbeats over 100 ms; slowest "
            + ", ".join(f"{ms:.0f} ms at +{at:.1f}s" for ms, at in slow[:5])
            + f"; SYNs dropped by a full accept queue: {listen_overflows() - drops0}",
            flush=True,
        )
        lag = sorted(ms for t, ms in lags if w0 <= t < w1)
        if lag:
            res.generator_lag_p99 = percentile(lag, 99)
            res.generator_lag_max = lag[-1]
            print(
                f"  {n}: generator loop lag p50 {percentile(lag, 50):.1f} ms, p99 "
                f"{res.generator_lag_p99:.1f} ms, max {lag[-1]:.0f} ms; over 50 ms at "
                + ", ".join(f"+{t - w0:.1f}s" for t, ms in lags if w0 <= t < w1 and ms > 50)[:300],
                flush=True,
            )
        res.cpu_per_s = (cpu1 - cpu0) / (w1 - w0)
        res.generator_cpu_per_s = (gen1 - gen0) / (w1 - w0)
        res.cpu_ms_per_heartbeat = (cpu1 - cpu0) * 1000 / max(1, len(window))
        res.p50, res.p99 = (percentile(window, 50), percentile(window, 99)) if window else (0, 0)
        res.rss_mib = sum(s.rss_kib() for s in servers) / 1024
        res.load_average = os.getloadavg()[0]
        print(
            f"  {n}: steady {len(window)} heartbeats: p50 {res.p50:.1f} ms p99 {res.p99:.1f} ms, "
            f"server {res.cpu_per_s:.2f} CPU s/s ({res.cpu_ms_per_heartbeat:.2f} ms per "
            f"heartbeat), RSS {res.rss_mib:.0f} MiB; generator {res.generator_cpu_per_s:.2f} "
            f"CPU s/s; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )

        # first rollout: 10 batches, soak 0
        merge_change(work, {f"releases/{AGENT}/1.0.0.yaml": release("1.0.0", "10%")}, "1.0.0", 1)
        t0 = time.monotonic()
        git(work, "push", "-q", "origin", "main")

        async def succeeded(version: str) -> bool:
            if not all(version in a.held for a in agents):
                return False
            return await release_phase(servers[0], version) == "Succeeded"

        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: succeeded("1.0.0"), args.timeout, "first rollout")
            res.first_rollout = time.monotonic() - t0
        print(f"  {n}: first rollout (10 batches) {fmt(res.first_rollout)}", flush=True)

        # merge -> every agent holds the new document (batchSize 100%), --repeat times: the
        # time is the last agent's first sight of the version (its own clock reading, not
        # the 50 ms polling of wait_until); server CPU over the same span
        cpus: list[float] = []
        for k in range(args.repeat):
            version = f"1.0.{k + 1}"
            change = {f"releases/{AGENT}/{version}.yaml": release(version, "100%")}
            merge_change(work, change, version, 100 + k)
            await asyncio.sleep(1)  # the previous fan-out's status reports settle
            passes0 = await pass_seconds(servers)
            t0, cpu0 = time.monotonic(), cpu_seconds(pids)
            git(work, "push", "-q", "origin", "main")
            try:
                await wait_until(
                    lambda v=version: all(v in a.held for a in agents), args.timeout, "fan-out"
                )
            except TimeoutError:
                print(f"  {n}: merge -> all hold {version}: timeout", flush=True)
                continue
            took = max(a.got_at[version] for a in agents) - t0
            res.fanouts.append(took)
            cpus.append(cpu_seconds(pids) - cpu0)
            first = min(a.got_at[version] for a in agents) - t0
            passes = await pass_seconds(servers)
            print(
                f"  {n}: merge -> first agent holds {version} {fmt(first, 's', 3)}, "
                f"all {fmt(took, 's', 3)}; reconcile passes meanwhile "
                f"{passes[1] - passes0[1]:.0f}, {passes[0] - passes0[0]:.2f} s in all",
                flush=True,
            )
        if res.fanouts:
            res.fanout = percentile(res.fanouts, 50)
            res.fanout_cpu = percentile(cpus, 50)
        print(
            f"  {n}: merge -> all hold the new document {fmt(res.fanout)} (median of "
            f"{len(res.fanouts)}), server CPU {fmt(res.fanout_cpu)}",
            flush=True,
        )
        # steady again: each node's rollout history and documents are larger now, and
        # the rollouts' transient objects are gone
        await asyncio.sleep(HEARTBEAT)
        res.rss_after_mib = sum(s.rss_kib() for s in servers) / 1024
        print(f"  {n}: RSS after the rollouts {res.rss_after_mib:.0f} MiB", flush=True)
        if args.kills and len(servers) > 1:
            await failovers(res, args, servers, agents, bare, work, tmp, extra)
    finally:
        gc.enable()
        stop.set()
        for a in agents:
            a.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in servers:
            code = s.stop()
            if code != 0:
                stats.error(f"server exit {code}")
            warnings = [line for line in s.log.read_text().splitlines() if "WARNING" in line]
            for line in warnings[-20:]:
                print(f"  server: {line}", flush=True)
    res.errors = dict(stats.errors)
    res.reconnects = stats.reconnects
    print(f"  {n}: idle keep-alive connections reopened: {stats.reconnects}", flush=True)
    return res


# fleetkeeper_gc_pause_seconds{generation} (reconciler/gcpauses.py) in /metrics
GC_SAMPLE = re.compile(
    r'^fleetkeeper_gc_pause_seconds_(?:bucket|(sum))\{generation="(\d)"(?:,le="([^"]+)")?\} '
    r"(\S+)$",
    re.M,
)


PASS_SAMPLE = re.compile(r"^fleetkeeper_reconcile_duration_seconds_(sum|count) (\S+)$", re.M)


async def metrics_text(server: Server) -> str:
    conn = Conn(*host_port(server), Stats(), asyncio.Semaphore(1))
    try:
        status, _, body = await asyncio.wait_for(conn.request("GET", "/metrics", {}), 10)
    finally:
        conn.close()
    if status != 200:
        raise SystemExit(f"GET /metrics: HTTP {status}")
    return body.decode()


async def pass_seconds(servers: Sequence[Server]) -> tuple[float, float]:
    """Seconds spent in reconcile passes so far, and their number (all servers)."""
    spent = count = 0.0
    for server in servers:
        for kind, value in PASS_SAMPLE.findall(await metrics_text(server)):
            if kind == "sum":
                spent += float(value)
            else:
                count += float(value)
    return spent, count


async def gc_buckets(servers: Sequence[Server]) -> dict[int, dict[str, float]]:
    """Each generation's cumulative pause buckets (``le`` -> count), summed over servers."""
    got: dict[int, dict[str, float]] = {}
    for server in servers:
        for is_sum, gen, le, value in GC_SAMPLE.findall(await metrics_text(server)):
            row = got.setdefault(int(gen), {})
            key = "sum" if is_sum else le
            row[key] = row.get(key, 0.0) + float(value)
    return got


def gc_summary(
    before: dict[int, dict[str, float]], after: dict[int, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per generation over a window: collections, their total CPU seconds, and the bucket
    bounds (seconds) that hold the 99th percentile and the longest pause (a histogram
    knows no exact max)."""
    out: dict[str, dict[str, float]] = {}
    for gen, row in sorted(after.items()):
        spent = row.pop("sum", 0.0) - before.get(gen, {}).get("sum", 0.0)
        bounds = sorted(row, key=lambda le: float(le))  # "+Inf" sorts last
        counts = [row[le] - before.get(gen, {}).get(le, 0.0) for le in bounds]
        total = counts[-1]
        if total <= 0:
            out[str(gen)] = {"count": 0, "sum": 0.0, "p99": 0.0, "max": 0.0}
            continue
        p99 = next(float(le) for le, c in zip(bounds, counts, strict=True) if c >= 0.99 * total)
        top = next(float(le) for le, c in zip(bounds, counts, strict=True) if c >= total)
        out[str(gen)] = {"count": total, "sum": spent, "p99": p99, "max": top}
    return out


def gc_text(summary: dict[str, dict[str, float]]) -> str:
    def ms(v: float) -> str:
        return "inf" if v == float("inf") else f"{v * 1000:g}"

    return "; ".join(
        f"gen {g}: {s['count']:.0f}"
        + (
            f" ({s['sum'] * 1000:.0f} ms CPU) p99<={ms(s['p99'])} max<={ms(s['max'])} ms"
            if s["count"]
            else ""
        )
        for g, s in summary.items()
    )


async def leads(server: Server) -> bool:
    """What the replica's /metrics says (False when it does not answer)."""
    if server.proc.poll() is not None:
        return False
    conn = Conn(*host_port(server), Stats(), asyncio.Semaphore(1))
    try:
        status, _, body = await asyncio.wait_for(conn.request("GET", "/metrics", {}), 10)
    except (HttpError, TimeoutError):
        return False
    finally:
        conn.close()
    return status == 200 and b"\nfleetkeeper_leader 1.0\n" in body


async def failovers(
    res: Result,
    args: argparse.Namespace,
    servers: list[Server],
    agents: Sequence[Agent],
    bare: Path,
    work: Path,
    tmp: Path,
    extra: dict[str, object],
) -> None:
    """``--kills`` times: SIGKILL the leader and push a new version at once; time until
    another replica leads, and until every agent of the surviving replicas holds the new
    document (rollouts progress again); the killed replica restarts on its port."""
    elected: list[float] = []
    progressed: list[float] = []
    for k in range(args.kills):
        found: list[int] = []

        async def one_leader(found: list[int] = found) -> bool:
            found[:] = [i for i, s in enumerate(servers) if await leads(s)]
            return len(found) == 1

        await wait_until(one_leader, args.timeout, "a leader")
        dead = found[0]
        version = f"2.0.{k}"
        merge_change(
            work, {f"releases/{AGENT}/{version}.yaml": release(version, "100%")}, version, 10 + k
        )
        servers[dead].proc.kill()
        servers[dead].proc.wait()
        t0 = time.monotonic()
        git(work, "push", "-q", "origin", "main")

        async def another_leads(dead: int = dead) -> bool:
            return any([await leads(s) for i, s in enumerate(servers) if i != dead])

        survivors = [a for a in agents if a.home != dead]
        try:
            await wait_until(another_leads, args.timeout, "a new leader")
            elected.append(time.monotonic() - t0)
            await wait_until(
                lambda v=version, ss=survivors: all(v in a.held for a in ss),
                args.timeout,
                "progress",
            )
            progressed.append(time.monotonic() - t0)
        except TimeoutError as exc:
            res.errors[f"failover {exc}"] = res.errors.get(f"failover {exc}", 0) + 1
        print(
            f"  kill {k + 1}: new leader {fmt(elected[-1] if elected else None)}, "
            f"agents hold {version} {fmt(progressed[-1] if progressed else None)}",
            flush=True,
        )
        host, port = host_port(servers[dead])
        servers[dead] = start(
            tmp / f"server-{dead}-{k}",
            bare,
            poll_interval=60,
            extra={**extra, "listen": f"{host}:{port}"},
        )
    if elected:
        res.elected_p50, res.elected_p99 = percentile(elected, 50), percentile(elected, 99)
    if progressed:
        res.failover_p50, res.failover_p99 = percentile(progressed, 50), percentile(progressed, 99)
    print(
        f"  failover over {len(progressed)} kills: new leader p50 {fmt(res.elected_p50)} "
        f"p99 {fmt(res.elected_p99)}; rollouts progress again p50 {fmt(res.failover_p50)} "
        f"p99 {fmt(res.failover_p99)}",
        flush=True,
    )


def mode(r: Result) -> str:
    return "on, envelope" if r.signed else "off"


def fmt(v: float | None, unit: str = "s", digits: int = 1) -> str:
    return "timeout" if v is None else f"{v:.{digits}f} {unit}"


def table(results: Sequence[Result]) -> str:
    rows = [
        "| agents | signing | registration (CPU each) | heartbeat p50 / p99 | server CPU s/s "
        "| CPU per heartbeat | RSS (after the rollouts) | first rollout, 10 batches, soak 0 "
        "| merge -> all hold new doc | errors | server GC pauses, steady | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.errors.items())) or "0"
        rows.append(
            f"| {r.agents:,} | {mode(r)} "
            f"| {r.registration_rate:,.0f} nodes/s ({r.registration_cpu_ms:.2f} ms) "
            f"| {r.p50:.1f} ms / {r.p99:.1f} ms "
            f"| {r.cpu_per_s:.2f} | {r.cpu_ms_per_heartbeat:.2f} ms "
            f"| {r.rss_mib:.0f} ({r.rss_after_mib:.0f}) MiB "
            f"| {fmt(r.first_rollout)} | {fmt(r.fanout)} | {errors} | {gc_text(r.gc)} "
            f"| {r.load_average:.1f} |"
        )
    for n in sorted({r.agents for r in results}):
        plain = [r for r in results if r.agents == n and not r.signed]
        signed = [r for r in results if r.agents == n and r.signed]
        if plain and signed and plain[0].fanout and signed[0].fanout:
            p, q = plain[0], signed[0]
            assert p.fanout and q.fanout
            rows.append(
                f"\n{n:,} agents, merge -> all hold the new document (median of "
                f"{len(p.fanouts)} / {len(q.fanouts)}): unsigned {p.fanout:.3f} s, signed "
                f"{q.fanout:.3f} s, ratio {q.fanout / p.fanout:.3f} (target: under 1.05); "
                f"each: {', '.join(f'{x:.2f}' for x in p.fanouts)} / "
                f"{', '.join(f'{x:.2f}' for x in q.fanouts)}"
            )
            if p.fanout_cpu and q.fanout_cpu:
                rows.append(
                    f"{n:,} agents, server CPU over the fan-out: unsigned {p.fanout_cpu:.2f} s, "
                    f"signed {q.fanout_cpu:.2f} s, ratio {q.fanout_cpu / p.fanout_cpu:.3f}"
                )
    small, large = min(results, key=lambda r: r.agents), max(results, key=lambda r: r.agents)
    if large.agents > small.agents and small.cpu_ms_per_heartbeat > 0:
        ratio = large.cpu_ms_per_heartbeat / small.cpu_ms_per_heartbeat
        rows.append(
            f"\nCPU per heartbeat {small.agents:,} -> {large.agents:,} agents: "
            f"{small.cpu_ms_per_heartbeat:.2f} -> {large.cpu_ms_per_heartbeat:.2f} ms, "
            f"ratio {ratio:.2f} (target: within 2x)"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    ap.add_argument("--steady", type=float, default=30.0, help="steady-state window (s)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per rollout phase (s)")
    ap.add_argument("--replicas", type=int, default=1, help="servers sharing --database")
    ap.add_argument("--database", help="database URL (default: SQLite in the state dir)")
    ap.add_argument(
        "--kills", type=int, default=0, help="with --replicas: SIGKILL the leader this often"
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep each size's temp dir (logs)")
    ap.add_argument("--dump", type=Path, help="write every heartbeat's time and latency here")
    ap.add_argument(
        "--repeat", type=int, default=1, help="merge -> all hold this often per size (median)"
    )
    ap.add_argument(
        "--gc-freeze",
        type=float,
        help="the server's gcFreezeSeconds (default: its default; 0: freeze only at start)",
    )
    ap.add_argument(
        "--signed",
        action="store_true",
        help="each size twice: signing off (plain documents), then on (agents get the envelope)",
    )
    args = ap.parse_args()
    if args.replicas > 1 and not (args.database or "").startswith("postgres"):
        ap.error("--replicas N needs --database postgresql://... (one SQLite file has one writer)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the servers
    need = max(args.agents) * 2 // args.replicas + 200
    if hard < need:
        ap.error(f"RLIMIT_NOFILE hard limit {hard} < {need} needed for {max(args.agents)} agents")
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    results = []
    modes = [False, True] if args.signed else [True]
    for n, signed in ((n, s) for n in args.agents for s in modes):
        tmp = Path(tempfile.mkdtemp(prefix=f"fk-bench-scale-{n}-"))
        try:
            print(f"{n} agents, signing {mode(Result(n, signed))} ...", flush=True)
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results.append(runner.run(run_size(n, args, tmp, signed)))
        finally:
            if args.keep:
                print(f"  kept {tmp}", flush=True)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        print(table(results[-1:]), flush=True)
    print()
    print(f"load average {os.getloadavg()[0]:.1f} (the generator shares the cores)")
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))


if __name__ == "__main__":
    main()
