"""Shared set-up for the API benchmarks: a fleet repo, a config, ``fleetkeeper serve``.

Not a benchmark itself (the leading underscore); ``poll.py`` and ``latency.py`` use it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@fleet.test",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@fleet.test",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_ALLOW_PROTOCOL": "file",
}


def git(cwd: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": os.devnull}
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout.strip()


def write_yaml(path: Path, doc: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def merge_change(work: Path, files: dict[str, object], message: str, n: int) -> str:
    """Commit ``files`` on a topic branch and merge it into main with --no-ff (approved)."""
    git(work, "checkout", "-q", "-b", f"topic-{n}")
    for rel, doc in files.items():
        write_yaml(work / rel, doc)
    git(work, "add", "-A")
    git(work, "commit", "-q", "--no-verify", "-m", message)
    git(work, "checkout", "-q", "main")
    git(
        work,
        "merge",
        "-q",
        "--no-ff",
        "--no-edit",
        "-m",
        f"Merge topic-{n}: {message}",
        f"topic-{n}",
    )
    return git(work, "rev-parse", "HEAD")


def fleet_repo(tmp: Path) -> tuple[Path, Path]:
    """A bare repo (what the reconciler reads) and a work tree that pushes to it."""
    bare = tmp / "fleet.git"
    work = tmp / "fleet-work"
    bare.mkdir(parents=True)
    git(bare, "init", "-q", "--bare", "--initial-branch=main")
    work.mkdir()
    git(work, "init", "-q", "--initial-branch=main")
    (work / "README.md").write_text("bench fleet\n")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "initial")
    fleet = {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Fleet",
        "name": "bench",
        "allowInsecureURLs": True,
        # the benchmark's nodes have no file in nodes/: they join with a scoped join token
        "registration": {"unlisted": "allow"},
    }
    merge_change(work, {"fleet.yaml": fleet}, "fleet settings", 0)
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "-q", "origin", "main")
    return bare, work


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    bootstrap: str
    admin: str
    log: Path

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start(
    tmp: Path,
    repo: Path,
    *,
    poll_interval: float = 60,
    extra: dict[str, object] | None = None,
    unsigned: bool = False,
) -> Server:
    """``fleetkeeper serve`` on ``repo`` with its state in ``tmp``; ``extra``: config keys;
    ``unsigned``: with signing turned off (``_unsigned_serve.py``, a baseline)."""
    tmp.mkdir(parents=True, exist_ok=True)
    bootstrap, admin = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    (tmp / "bootstrap.token").write_text(bootstrap)
    (tmp / "admin.token").write_text(admin)
    config = {
        "repo": str(repo),
        "stateDir": str(tmp / "state"),
        "listen": "127.0.0.1:0",
        "bootstrapTokenFile": str(tmp / "bootstrap.token"),
        "adminTokenFile": str(tmp / "admin.token"),
        "pollIntervalSeconds": poll_interval,
        "heartbeatTTLSeconds": 90,
        **(extra or {}),
    }
    write_yaml(tmp / "reconciler.yaml", config)
    out, log = tmp / "serve.out", tmp / "serve.log"
    with out.open("wb") as o, log.open("wb") as e:
        proc = subprocess.Popen(
            [
                sys.executable,
                *(
                    [str(Path(__file__).with_name("_unsigned_serve.py"))]
                    if unsigned
                    else ["-m", "reconciler.cli"]
                ),
                "--log-level",
                "WARNING",
                "serve",
                "--config",
                str(tmp / "reconciler.yaml"),
            ],
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
            cwd=tmp,
        )
    deadline = time.monotonic() + 30
    url = None
    while url is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("fleetkeeper serve did not start:\n" + log.read_text())
        for line in out.read_text().splitlines():
            if line.startswith("listening on "):
                url = line.removeprefix("listening on ").strip()
        time.sleep(0.02)
    with httpx.Client(base_url=url) as c:
        while c.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit("fleetkeeper serve not ready:\n" + log.read_text())
            time.sleep(0.05)
    return Server(url, proc, bootstrap, admin, log)


def join_token(server: Server, uses: int) -> str:
    """A join token for ``uses`` registrations of nodes with role ``inference``."""
    r = httpx.post(
        f"{server.url}/v1/tokens",
        json={"roles": ["inference"], "uses": uses},
        headers={"Authorization": f"Bearer {server.admin}"},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["token"])


def register_body(node: str) -> dict[str, object]:
    return {
        "node": node,
        "platform": "linux/amd64",
        "accelerator": "cpu",
        "roles": ["inference"],
        "agentVersion": "0.1.0",
        "memoryGiB": 16,
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]
