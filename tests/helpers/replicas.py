"""Several real ``fleetkeeper serve`` processes on one PostgreSQL database::

    with replica_set(tmp, repo, postgres_url, 3) as rs:
        leader = rs.wait_leader()
        rs.kill(leader)            # SIGKILL; rs.start(i) brings it back on the same port

Every replica has the same secrets, the same signing key (agents verify whichever one
answers), its own state directory (git mirror) and a fixed port, so a restarted replica
is where the agents' server lists expect it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.helpers.artifact_server import free_port
from tests.helpers.fleetrepo import FleetRepo
from tests.helpers.server import _launch, write_config

LEADER_METRIC = re.compile(r"^fleetkeeper_leader (\S+)$", re.MULTILINE)


@dataclass
class ReplicaSet:
    tmp: Path
    configs: list[Path]
    urls: list[str]
    admin_token: str
    bootstrap_token: str
    webhook_secret: str
    procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    starts: int = 0

    def start(self, i: int, *, ready: bool = True) -> None:
        self.starts += 1
        proc, url, _, stderr = _launch(
            self.configs[i], self.tmp / f"replica-{i}-{self.starts}", ready=ready
        )
        assert url == self.urls[i], (url, self.urls[i])
        self.procs[i] = proc
        self.logs.append(stderr)

    def alive(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(sig)
        proc.wait(timeout=15)
        self.procs[i] = None

    def leads(self, i: int) -> bool | None:
        """What replica ``i``'s /metrics says (None: it does not answer)."""
        try:
            r = httpx.get(f"{self.urls[i]}/metrics", timeout=10)
        except httpx.TransportError:
            return None
        m = LEADER_METRIC.search(r.text)
        return m is not None and float(m.group(1)) == 1.0

    def leaders(self) -> list[int]:
        return [i for i in self.alive() if self.leads(i)]

    def wait_leader(self, timeout: float = 15.0, *, other_than: int | None = None) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [i for i in self.leaders() if i != other_than]
            if len(found) == 1:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no single leader within {timeout}s: {self.leaders()}\n{self.tail()}")

    def admin(self, i: int) -> httpx.Client:
        return httpx.Client(
            base_url=self.urls[i],
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )

    def fleet(self, i: int) -> dict[str, Any]:
        with self.admin(i) as c:
            r = c.get("/v1/fleet")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def audit(self, i: int) -> list[dict[str, Any]]:
        with self.admin(i) as c:
            r = c.get("/v1/audit", params={"limit": 10000})
        assert r.status_code == 200, r.text
        events: list[dict[str, Any]] = r.json()["events"]
        return events

    def tail(self, lines: int = 30) -> str:
        out = []
        for log in self.logs[-4:]:
            text = log.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop_all(self) -> None:
        for i in self.alive():
            self.kill(i, signal.SIGTERM)


def signing_key(tmp: Path) -> Path:
    key = tmp / "signing_key"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetkeeper", "-f", str(key)],
            check=True,
        )
    return key


@contextlib.contextmanager
def replica_set(
    tmp: Path,
    repo: FleetRepo,
    database: str,
    n: int,
    *,
    extra_config: Mapping[str, Any] | None = None,
    repo_url: str | None = None,
) -> Iterator[ReplicaSet]:
    """``n`` replicas, all ready (``/readyz`` 200) when yielded; SIGTERM on exit.
    ``repo_url`` (e.g. ``file://...``): each replica mirrors the repo instead of reading it."""
    base, secrets = write_config(tmp / "config", repo_url or str(repo.path), extra=extra_config)
    doc = yaml.safe_load(base.read_text())
    doc.update(
        {"database": database, "signingKeyFile": str(signing_key(tmp)), "leaderLeaseSeconds": 2}
    )
    doc.update(extra_config or {})
    configs, urls = [], []
    for i in range(n):
        port = free_port()
        path = tmp / "config" / f"replica-{i}.yaml"
        path.write_text(
            yaml.safe_dump(
                {**doc, "stateDir": str(tmp / f"state-{i}"), "listen": f"127.0.0.1:{port}"}
            )
        )
        configs.append(path)
        urls.append(f"http://127.0.0.1:{port}")
    rs = ReplicaSet(
        tmp,
        configs,
        urls,
        secrets["admin"],
        secrets["bootstrap"],
        secrets["webhook"],
        procs=[None] * n,
    )
    try:
        for i in range(n):
            rs.start(i)
        yield rs
    finally:
        rs.stop_all()


def client_ports(pid: int, server_port: int) -> set[int]:
    """Local ports of process ``pid``'s TCP connections to ``server_port`` (its database
    connections), read from /proc: which backends to terminate to cut it off."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == server_port:
            ports.add(int(local.split(":")[1], 16))
    return ports
