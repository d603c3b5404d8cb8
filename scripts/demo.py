#!/usr/bin/env python3
"""`make demo`: fleetkeeper end to end on this machine, told with real git commands.

A bare fleet repo built from example-fleet-repo/, a reconciler on SQLite, three agents with
their own install roots, and locally served artifacts, all under one temp folder. The story:

1. the fleet arrives through a merged pull request; the agents install 0.8.3;
2. a direct push of release 0.8.4 is refused as unapproved (then reverted through a PR);
3. the same change merged with --no-ff rolls out batch by batch (canary first);
4. 0.8.5 with a wrong checksum halts with the reason while 0.8.4 keeps running;
5. the fixed 0.8.6 supersedes it;
6. the reconciler restarts in signed-tag mode and an SSH-signed tag approves 0.8.7, while
   an operator has paused the agent's rollouts (`fleetkeeper rollout pause`): 0.8.7 waits
   until `fleetkeeper rollout resume`;
7. a fake server offers gpu-1 a forged release, which the node refuses;
8. an API key, encrypted to vps-1's own age identity, reaches its workload while the
   reconciler only ever holds ciphertext.

Everything started here is stopped on exit, on Ctrl-C and on SIGTERM (process groups).
Run it with the project's venv python: `.venv/bin/python scripts/demo.py` (`make demo`).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from demo_fleet import (
    DEMO_NODES,
    ArtifactServer,
    build_artifact,
    release_doc,
    write_fleet,
    write_release,
)
from demo_forged import forged_document_refused
from demo_procs import DemoFailed, Processes, free_port, signals_raise, tail
from demo_secret import secret_reaches_workload
from demo_ui import Git, cli, console, note, run_cli, say
from demo_watch import Fleet, current_release, progress_line, running_versions
from rich.rule import Rule

from reconciler.views.client import AdminClient

SOAK_SECONDS = 2


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


def write_yaml(path: Path, doc: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False))
    return path


def write_secret(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    return path


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
    git.merge_pull_request(
        "add-fleet",
        "Add the homelab fleet with inference-agent 0.8.3",
        "Merge pull request #1 from add-fleet",
    )

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
    procs.start("reconciler", [*cli("fleetkeeper"), "serve", "--config", str(cfg_path)], env)
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
            # the demo serves artifacts over plain http on 127.0.0.1: the agent's own
            # policy must allow it (fleet.yaml cannot)
            "allowInsecureURLs": True,
        }
        path = write_yaml(root / "nodes" / node / "agent.yaml", agent_cfg)
        procs.start(
            f"agent-{node}",
            [*cli("fleetkeeper-agent"), "run", "--config", str(path)],
            env,
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
    git.merge_pull_request(
        "release-0.8.4", "Release inference-agent 0.8.4", "Merge pull request #3: 0.8.4"
    )
    fleet.wait_release("0.8.4", ["Succeeded"])
    note("0.8.4 went to the canary gpu-1 first, then to vps-1 and lab-1 together")

    say("4. A release whose artifact has a wrong checksum halts")
    git("checkout", "-q", "-b", "release-0.8.5")
    wrong = "0" * 64
    write_release(work, release_doc(arts["0.8.5"], artifacts.url, sha256=wrong))
    git.merge_pull_request(
        "release-0.8.5", "Release inference-agent 0.8.5", "Merge pull request #4: 0.8.5"
    )
    status = fleet.wait_release("0.8.5", ["Halted"])
    rel = current_release(status) or {}
    console.print(f"[bold red]halted:[/] {rel.get('reason')}")
    running = running_versions(status)
    note(f"still running: {', '.join(f'{n} {v}' for n, v in sorted(running.items()))}")
    if any(v != "0.8.4" for v in running.values()):
        raise DemoFailed(f"the old version should keep running after the halt: {running}")

    say("5. A fixed release supersedes the halted one")
    git("checkout", "-q", "-b", "release-0.8.6")
    write_release(work, release_doc(arts["0.8.6"], artifacts.url))
    git.merge_pull_request(
        "release-0.8.6",
        "Release inference-agent 0.8.6 (fixes the 0.8.5 checksum)",
        "Merge pull request #5: 0.8.6",
    )
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
    procs.start("reconciler", [*cli("fleetkeeper"), "serve", "--config", str(cfg_path)], env)
    note("reconciler restarted with approval.mode: signed-tag; the agents reconnect by themselves")
    write_release(work, release_doc(arts["0.8.7"], artifacts.url))
    git("add", "-A")
    git("commit", "-q", "-m", "Release inference-agent 0.8.7")
    git("push", "-q", "origin", "main")
    time.sleep(3)
    # the restarted reconciler may still be starting on a loaded machine: wait for it
    status = fleet.wait("the restarted reconciler to answer", lambda _s: True, tables=False)
    console.print(progress_line(status), highlight=False)
    note("pushed to main, but in signed-tag mode that alone approves nothing")
    note("an operator pauses inference-agent first (a change freeze), then signs the tag:")
    rollout_control(env, server, admin, "pause", "change freeze: watch 0.8.7 before it ships")
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
    status = fleet.wait_release("0.8.7", ["Progressing", "Pending"], tables=False)
    time.sleep(2)  # a few passes and heartbeats: nobody is given 0.8.7 while paused
    status = client.fleet()
    console.print(progress_line(status), highlight=False)
    rel = current_release(status) or {}
    console.print(f"[bold yellow]paused:[/] {rel.get('reason')}")
    if any(v != "0.8.6" for v in running_versions(status).values()):
        raise DemoFailed(f"a paused rollout gave a node 0.8.7: {running_versions(status)}")
    note("0.8.7 is approved, but no node was given it while paused")
    rollout_control(env, server, admin, "resume", "freeze over")
    fleet.wait_release("0.8.7", ["Succeeded"], tables=False)

    def approve(tag: str) -> None:
        """Sign ``tag`` on main's tip with dana's key and push it (signed-tag mode)."""
        git("-c", "gpg.format=ssh", "-c", f"user.signingkey={key}", "tag", "-s", tag, "-m", tag)
        git("push", "-q", "origin", tag)

    say("7. A fake server offers gpu-1 a release no one approved")

    def restart_gpu1(config: Path) -> None:
        procs.stop("agent-gpu-1")
        procs.start("agent-gpu-1", [*cli("fleetkeeper-agent"), "run", "--config", str(config)], env)

    forged_document_refused(root / "nodes" / "gpu-1", ports["gpu-1"], restart_gpu1, note)

    say("8. A secret reaches a workload; the reconciler only ever holds ciphertext")
    secret_reaches_workload(
        root,
        work,
        git,
        env,
        client,
        artifacts,
        approve,
        lambda what, done: fleet.wait(what, done, tables=False),
    )

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


def rollout_control(
    env: Mapping[str, str], server: str, admin: Path, action: str, why: str
) -> None:
    """``fleetkeeper rollout ACTION inference-agent --reason WHY``, shown as typed."""
    args = ["rollout", action, "inference-agent", "--reason", why, "--by", "operator"]
    console.print(f"$ fleetkeeper {' '.join(args[:3])} --reason {why!r}", style="dim", markup=False)
    for _ in range(20):  # the reconciler may still be starting its first pass
        if run_cli(env, *args, "--server", server, "--token-file", str(admin)) == 0:
            return
        time.sleep(0.5)
    raise DemoFailed(f"fleetkeeper rollout {action} failed")


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
