#!/usr/bin/env python3
"""`make demo`: fleetkeeper end to end on this machine, told with real git commands.

A bare fleet repo built from example-fleet-repo/, a reconciler on SQLite, three agents with
their own install roots, and locally served artifacts, all under one temp folder. The story:

1. the fleet arrives through a merged pull request; the agents install 0.8.3;
2. a direct push of release 0.8.4 is refused as unapproved (then reverted through a PR);
3. the same change merged with --no-ff rolls out batch by batch (canary first);
4. 0.8.5 with a wrong checksum halts with the reason while 0.8.4 keeps running;
5. the fixed 0.8.6 supersedes it;
6. the reconciler restarts in signed-tag mode and an SSH-signed tag approves 0.8.7.

Everything started here is stopped on exit, on Ctrl-C and on SIGTERM (process groups).
Run it with the project's venv python: `.venv/bin/python scripts/demo.py` (`make demo`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from demo_fleet import (
    AGENT,
    DEMO_NODES,
    ArtifactServer,
    build_artifact,
    release_doc,
    write_fleet,
    write_release,
)
from rich.console import Console
from rich.rule import Rule

from reconciler.report.client import AdminClient
from reconciler.report.tables import fleet_view

SOAK_SECONDS = 2
STEP_TIMEOUT = 45.0
BIN = Path(sys.executable).parent
console = Console(width=max(150, Console().width) if not Console().is_terminal else None)


class DemoFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def say(text: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{text}", align="left"))


def note(text: str) -> None:
    console.print(f"[cyan]»[/] {text}")


def _command(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    module = "reconciler.cli" if name == "fleetkeeper" else "agent.cli"
    return [sys.executable, "-m", module]


class Processes:
    """Children in their own process groups, stopped group by group, newest first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> None:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env),
                start_new_session=True,
                cwd=self.root,
            )
        self.procs[name] = (proc, log)

    def check(self) -> None:
        for name, (proc, log) in self.procs.items():
            if proc.poll() is not None:
                raise DemoFailed(f"{name} exited with {proc.returncode}; its log:\n{tail(log)}")

    def stop(self, name: str) -> None:
        proc, _ = self.procs.pop(name)
        _stop_group(proc)

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)
        _kill_strays(self.root)


def _stop_group(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)
    # workloads the agent started may sit in the same group after the agent exited
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_strays(root: Path) -> None:
    """Workloads started by the agents in their own sessions: found by their install root."""
    if not Path("/proc").is_dir():
        return
    mark = str(root).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if mark in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Git:
    """Real git commands in the operator's clone, echoed as they run."""

    def __init__(self, cwd: Path, env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self.env = dict(env)

    def __call__(self, *args: str, quiet: bool = False) -> str:
        if not quiet:
            console.print(f"$ git {shlex.join(args)}", style="dim", markup=False, soft_wrap=True)
        proc = subprocess.run(
            ["git", *args], cwd=self.cwd, env=self.env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise DemoFailed(f"git {' '.join(args)} failed:\n{proc.stderr}")
        return proc.stdout.strip()

    def head(self) -> str:
        return self("rev-parse", "HEAD", quiet=True)


def _release(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The current rollout of the demo agent (a superseded one is listed before it)."""
    rows = [r for r in status.get("releases") or [] if r.get("agent") == AGENT]
    return dict(rows[-1]) if rows else None


def _running(status: Mapping[str, Any]) -> dict[str, str | None]:
    out = {}
    for n in status.get("nodes") or []:
        for w in n.get("workloads") or []:
            if w.get("name") == AGENT:
                out[str(n.get("node"))] = w.get("running")
    return out


class Fleet:
    """Watches the reconciler through its admin API and prints the table as things move."""

    def __init__(self, client: AdminClient, procs: Processes) -> None:
        self.client = client
        self.procs = procs

    def show(self, status: Mapping[str, Any]) -> None:
        console.print(fleet_view(status, time.time()))

    def wait(
        self,
        what: str,
        done: Callable[[Mapping[str, Any]], bool],
        timeout: float = STEP_TIMEOUT,
        tables: bool = True,
    ) -> Mapping[str, Any]:
        """Poll until ``done``; a line per node change, the table per batch/phase change."""
        deadline = time.monotonic() + timeout
        last_rel: object = None
        last_nodes: object = None
        status: Mapping[str, Any] = {}
        while time.monotonic() < deadline:
            self.procs.check()
            with contextlib.suppress(Exception):
                status = self.client.fleet()
                rel = _release(status) or {}
                rel_key = (rel.get("version"), rel.get("phase"), rel.get("batch"))
                nodes_key = progress_line(status)
                if tables and rel_key != last_rel and last_rel is not None:
                    self.show(status)
                elif nodes_key != last_nodes:
                    console.print(nodes_key, highlight=False)
                last_rel, last_nodes = rel_key, nodes_key
                if done(status):
                    return status
            time.sleep(0.3)
        if status:
            self.show(status)
        raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {what}")

    def wait_release(
        self, version: str, phases: Sequence[str], tables: bool = True
    ) -> Mapping[str, Any]:
        def done(status: Mapping[str, Any]) -> bool:
            rel = _release(status)
            if rel is None or rel.get("version") != version or rel.get("phase") not in phases:
                return False
            if "Succeeded" in phases and rel.get("phase") == "Succeeded":
                return all(v == version for v in _running(status).values()) and len(
                    _running(status)
                ) == len(DEMO_NODES)
            return True

        return self.wait(f"{AGENT} {version} to be {'/'.join(phases)}", done, tables=tables)

    def wait_audit(self, revision: str, kinds: Sequence[str]) -> Mapping[str, Any]:
        deadline = time.monotonic() + STEP_TIMEOUT
        while time.monotonic() < deadline:
            self.procs.check()
            with contextlib.suppress(Exception):
                for e in self.client.audit(limit=1000):
                    if e.get("revision") == revision and e.get("kind") in kinds:
                        return dict(e)
            time.sleep(0.3)
        raise DemoFailed(f"no {'/'.join(kinds)} audit event for {revision[:10]}")


def progress_line(status: Mapping[str, Any]) -> str:
    """ "  0.8.4 Progressing 1/2 | gpu-1 0.8.3->0.8.4 Downloading, vps-1 0.8.3 Healthy, ..." """
    rel = _release(status) or {}
    cells = []
    for n in sorted(status.get("nodes") or [], key=lambda n: str(n.get("node"))):
        for w in n.get("workloads") or []:
            if w.get("name") != AGENT:
                continue
            running, desired = w.get("running") or "-", w.get("desired") or "-"
            version = running if running == desired else f"{running}->{desired}"
            cells.append(f"{n.get('node')} {version} {w.get('phase')}")
    head = f"{rel.get('version', '-')} {rel.get('phase', '-')} {rel.get('batch') or ''}".strip()
    return f"  {head:<26} | " + ", ".join(cells)


def secret_leaks(root: Path, secret_files: Sequence[Path]) -> list[str]:
    """Logs (reconciler, agents) that contain a token or the webhook secret."""
    secrets_ = {p.name: p.read_text().strip() for p in secret_files}
    for token in (root / "nodes").glob("*/state/node.token"):
        secrets_[f"node token of {token.parts[-3]}"] = token.read_text().strip()
    found = [] if len(secrets_) == len(secret_files) + len(DEMO_NODES) else ["(node tokens?)"]
    for log in sorted((root / "logs").glob("*.log")):
        text = log.read_text(errors="replace")
        found += [f"{name} in {log.name}" for name, value in secrets_.items() if value in text]
    return found


def run_cli(env: Mapping[str, str], *args: str) -> int:
    """Run ``fleetkeeper ARGS`` as a user would and show its output; returns the exit code."""
    proc = subprocess.run(
        [*_command("fleetkeeper"), *args],
        env={**env, "COLUMNS": str(console.width)},
        capture_output=True,
        text=True,
    )
    console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    if proc.returncode not in (0, 1, 4) or proc.stderr.strip():
        console.print(proc.stderr.rstrip(), markup=False, highlight=False, style="red")
    return proc.returncode


def write_yaml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path


def write_secret(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo like Ctrl-C does: through the finally blocks."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def story(root: Path, keep_open: float) -> int:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dana Operator",
        "GIT_AUTHOR_EMAIL": "dana@fleet.demo",
        "GIT_COMMITTER_NAME": "Dana Operator",
        "GIT_COMMITTER_EMAIL": "dana@fleet.demo",
        "GIT_CONFIG_GLOBAL": str(root / "gitconfig"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    for key in [k for k in env if k.startswith("FLEETKEEPER_")]:
        del env[key]
    (root / "gitconfig").write_text("")
    procs = Processes(root)
    artifacts = ArtifactServer(root / "artifacts")
    (root / "artifacts").mkdir()
    artifacts.start()
    try:
        return _story(root, env, procs, artifacts, keep_open)
    finally:
        procs.stop_all()
        artifacts.stop()


def _story(
    root: Path,
    env: dict[str, str],
    procs: Processes,
    artifacts: ArtifactServer,
    keep_open: float,
) -> int:
    started = time.monotonic()
    say("Setting up under " + str(root))
    ports = {node: free_port() for node in DEMO_NODES}
    api_port = free_port()
    server = f"http://127.0.0.1:{api_port}"
    secrets_dir = root / "secrets"
    admin = write_secret(secrets_dir / "admin.token")
    bootstrap = write_secret(secrets_dir / "bootstrap.token")
    webhook = write_secret(secrets_dir / "webhook.secret")
    arts = {v: build_artifact(root / "artifacts", v) for v in ("0.8.3", "0.8.4", "0.8.5")}
    arts["0.8.6"] = build_artifact(root / "artifacts", "0.8.6")
    arts["0.8.7"] = build_artifact(root / "artifacts", "0.8.7")
    note(f"artifacts for 0.8.3 to 0.8.7 built and served at {artifacts.url}")

    # the forge: a bare repo; the operator works in a clone
    bare = root / "fleet.git"
    work = root / "operator-clone"
    subprocess.run(
        ["git", "init", "-q", "--bare", "--initial-branch=main", str(bare)], env=env, check=True
    )
    work.mkdir()
    git = Git(work, env)
    git("init", "-q", "--initial-branch=main", quiet=True)
    git("remote", "add", "origin", str(bare), quiet=True)
    (work / "README.md").write_text("# homelab fleet\n")
    git("add", "README.md", quiet=True)
    git("commit", "-q", "-m", "Start the fleet repo", quiet=True)
    git("push", "-q", "origin", "main", quiet=True)

    say("1. The fleet arrives through a merged pull request")
    changes = write_fleet(work, ports, SOAK_SECONDS)
    note("the demo's copy of example-fleet-repo/ differs from it, so it runs on this machine:")
    for c in changes:
        console.print(f"   - {c}")
    git("checkout", "-q", "-b", "add-fleet")
    write_release(work, release_doc(arts["0.8.3"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Add the homelab fleet with inference-agent 0.8.3")
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "add-fleet", "-m", "Merge pull request #1 from add-fleet")
    git("push", "-q", "origin", "main")

    config = {
        "repo": str(bare),
        "branch": "main",
        "approval": {"mode": "merged-pr"},
        "stateDir": str(root / "reconciler"),
        "database": f"sqlite:///{root / 'reconciler' / 'state.db'}",
        "listen": f"127.0.0.1:{api_port}",
        "bootstrapTokenFile": str(bootstrap),
        "adminTokenFile": str(admin),
        "webhookSecretFile": str(webhook),
        "heartbeatTTLSeconds": 10,
        "pollIntervalSeconds": 1,
    }
    cfg_path = write_yaml(root / "reconciler.yaml", config)
    procs.start("reconciler", [*_command("fleetkeeper"), "serve", "--config", str(cfg_path)], env)
    for node in DEMO_NODES:
        agent_cfg = {
            "server": server,
            "node": node,
            "bootstrapTokenFile": str(bootstrap),
            "installRoot": str(root / "nodes" / node / "opt"),
            "stateDir": str(root / "nodes" / node / "state"),
            "roles": ["inference"],
            "labels": {"port": str(ports[node])},
            "heartbeatSeconds": 1,
            "pollWaitSeconds": 5,
        }
        path = write_yaml(root / "nodes" / node / "agent.yaml", agent_cfg)
        procs.start(
            f"agent-{node}", [*_command("fleetkeeper-agent"), "run", "--config", str(path)], env
        )
    note(f"reconciler (SQLite) on {server}; agents {', '.join(DEMO_NODES)} started")
    console.print(f"[bold green]Dashboard:[/] {server}/  (log in with the token in {admin})")
    client = AdminClient(server, admin.read_text().strip(), timeout=5)
    fleet = Fleet(client, procs)
    fleet.wait_release("0.8.3", ["Succeeded"], tables=False)
    note("every node runs 0.8.3 (installed, started, proven by --version and /healthz)")

    say("2. A direct push of a release is refused as unapproved")
    write_release(work, release_doc(arts["0.8.4"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.4 (pushed straight to main)")
    direct = git.head()
    git("push", "-q", "origin", "main")
    event = fleet.wait_audit(direct, ["refused", "unapproved"])
    console.print(f"[bold red]refused:[/] {event.get('message')}")
    console.print("$ fleetkeeper status", style="dim", markup=False)
    code = run_cli(env, "status", "--server", server, "--token-file", str(admin))
    note(f"fleetkeeper status exit code {code}: a release is Unapproved (scripts can tell)")
    note("nothing changed on the nodes; the operator reverts the push through a pull request")
    git("checkout", "-q", "-b", "revert-direct-push")
    git("revert", "--no-edit", direct)
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "revert-direct-push", "-m", "Merge pull request #2: revert")
    git("push", "-q", "origin", "main")

    say("3. The same change, merged with --no-ff, rolls out batch by batch")
    git("checkout", "-q", "-b", "release-0.8.4")
    write_release(work, release_doc(arts["0.8.4"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.4")
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "release-0.8.4", "-m", "Merge pull request #3: 0.8.4")
    git("push", "-q", "origin", "main")
    fleet.wait_release("0.8.4", ["Succeeded"])
    note("0.8.4 went to the canary gpu-1 first, then to vps-1 and lab-1 together")

    say("4. A release whose artifact has a wrong checksum halts")
    git("checkout", "-q", "-b", "release-0.8.5")
    wrong = "0" * 64
    write_release(work, release_doc(arts["0.8.5"], artifacts.url, sha256=wrong))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.5")
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "release-0.8.5", "-m", "Merge pull request #4: 0.8.5")
    git("push", "-q", "origin", "main")
    status = fleet.wait_release("0.8.5", ["Halted"])
    rel = _release(status) or {}
    console.print(f"[bold red]halted:[/] {rel.get('reason')}")
    running = _running(status)
    note(f"still running: {', '.join(f'{n} {v}' for n, v in sorted(running.items()))}")
    if any(v != "0.8.4" for v in running.values()):
        raise DemoFailed(f"the old version should keep running after the halt: {running}")

    say("5. A fixed release supersedes the halted one")
    git("checkout", "-q", "-b", "release-0.8.6")
    write_release(work, release_doc(arts["0.8.6"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.6 (fixes the 0.8.5 checksum)")
    git("checkout", "-q", "main")
    git("merge", "-q", "--no-ff", "release-0.8.6", "-m", "Merge pull request #5: 0.8.6")
    git("push", "-q", "origin", "main")
    fleet.wait_release("0.8.6", ["Succeeded"])

    say("6. Signed-tag mode: an SSH-signed tag approves 0.8.7")
    keys = root / "keys"
    keys.mkdir()
    key = keys / "dana"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dana@fleet.demo", "-f", str(key)],
        check=True,
        env=env,
    )
    signers = keys / "allowed_signers"
    pub = (keys / "dana.pub").read_text().split()
    signers.write_text(f'dana@fleet.demo namespaces="git" {pub[0]} {pub[1]}\n')
    note(f"pinned {pub[0]} key of dana@fleet.demo in {signers} (reconciler config, not the repo)")
    procs.stop("reconciler")
    config["approval"] = {
        "mode": "signed-tag",
        "tagPattern": "deploy/*",
        "allowedSigners": str(signers),
    }
    write_yaml(cfg_path, config)
    procs.start("reconciler", [*_command("fleetkeeper"), "serve", "--config", str(cfg_path)], env)
    note("reconciler restarted with approval.mode: signed-tag; the agents reconnect by themselves")
    write_release(work, release_doc(arts["0.8.7"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.7")
    git("push", "-q", "origin", "main")
    time.sleep(3)
    console.print(progress_line(client.fleet()), highlight=False)
    note("pushed to main, but in signed-tag mode that alone approves nothing; now the tag:")
    git(
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={key}",
        "tag",
        "-s",
        "deploy/0.8.7",
        "-m",
        "Deploy inference-agent 0.8.7",
    )
    git("push", "-q", "origin", "deploy/0.8.7")
    fleet.wait_release("0.8.7", ["Succeeded"], tables=False)

    leaks = secret_leaks(root, [admin, bootstrap, webhook])
    if leaks:
        raise DemoFailed(f"secrets appear in logs: {leaks}")
    note("checked: no token or webhook secret appears in any reconciler or agent log")

    say("Who approved what, what was refused, what halted (fleetkeeper audit --kind ...)")
    run_cli(
        env,
        "audit",
        "--server",
        server,
        "--token-file",
        str(admin),
        "--kind",
        "approved,refused,halted,succeeded,superseded",
    )
    say("Final status (fleetkeeper status)")
    code = run_cli(env, "status", "--server", server, "--token-file", str(admin))
    if code != 0:
        raise DemoFailed(f"fleetkeeper status exited {code}, expected 0")
    note(f"fleetkeeper status exit code {code}: every release Succeeded")
    if keep_open > 0:
        console.print(f"[bold green]Dashboard[/] stays up {keep_open:.0f}s more at {server}/")
        time.sleep(keep_open)
    else:
        note(
            "to explore the dashboard afterwards: .venv/bin/python scripts/demo.py --keep-open 600"
        )
    console.print(f"[bold]demo finished in {time.monotonic() - started:.0f}s[/]")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--keep-open", type=float, default=0, help="seconds to keep it running")
    parser.add_argument("--keep-files", action="store_true", help="leave the temp folder")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("git", "ssh-keygen") if shutil.which(tool) is None]
    if missing:
        console.print(f"[bold red]the demo needs {' and '.join(missing)}[/] (make sysdeps)")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="fleetkeeper-demo-"))
    code = 1
    try:
        with signals_raise():
            code = story(tmp, args.keep_open)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started has been stopped[/]")
        code = 130
    except DemoFailed as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        for log in sorted((tmp / "logs").glob("*.log")):
            console.print(Rule(str(log.name)))
            console.print(tail(log), markup=False, highlight=False)
        code = 1
    finally:
        if args.keep_files or code == 1:
            console.print(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
