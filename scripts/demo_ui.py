"""What `make demo` shows: headings, notes, echoed git commands, fleetkeeper CLI runs."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from demo_procs import DemoFailed
from rich.console import Console
from rich.rule import Rule

BIN = Path(sys.executable).parent
console = Console(width=max(150, Console().width) if not Console().is_terminal else None)


def say(text: str) -> None:
    console.print()
    console.print(Rule(f"[bold]{text}", align="left"))


def note(text: str) -> None:
    console.print(f"[cyan]»[/] {text}")


def cli(name: str) -> list[str]:
    exe = BIN / name
    if exe.exists():
        return [str(exe)]
    module = "reconciler.cli" if name == "fleetkeeper" else "agent.cli"
    return [sys.executable, "-m", module]


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

    def merge_pull_request(self, branch: str, commit: str, merge: str) -> None:
        """Commit what is written on ``branch``, merge it into main with --no-ff, push."""
        self("add", "-A")
        self("commit", "-q", "-m", commit)
        self("checkout", "-q", "main")
        self("merge", "-q", "--no-ff", branch, "-m", merge)
        self("push", "-q", "origin", "main")


def run_cli(env: Mapping[str, str], *args: str) -> int:
    """Run ``fleetkeeper ARGS`` as a user would and show its output; returns the exit code."""
    proc = subprocess.run(
        [*cli("fleetkeeper"), *args],
        env={**env, "COLUMNS": str(console.width)},
        capture_output=True,
        text=True,
    )
    console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    if proc.returncode not in (0, 1, 4) or proc.stderr.strip():
        console.print(proc.stderr.rstrip(), markup=False, highlight=False, style="red")
    return proc.returncode
