"""Supervisors that hand workloads to the OS service manager: systemd (Linux), launchd (macOS).

They cannot be exercised in the test sandbox; what they run is spelled out here and the
decision whether a restart worked (``restart_check``) is unit-tested. A restart is a
success only when a new main PID runs an executable inside the new version directory.
"""

from __future__ import annotations

import logging
import os
import plistlib
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import procinfo
from agent.errors import SupervisorError
from agent.procinfo import ProcInfo
from agent.supervise.restart_check import (
    UnitSnapshot,
    parse_launchctl_print,
    parse_systemctl_show,
    verify_restart,
)
from agent.supervise.supervisor import LaunchSpec

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], str]
SETTLE_SECONDS = 10.0


def run_command(argv: Sequence[str]) -> str:
    """Run a service-manager command; its stdout, or SupervisorError with exit code and stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SupervisorError(f"{shlex.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise SupervisorError(
            f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[:500]}"
        )
    return proc.stdout


def _no_env_secrets(spec: LaunchSpec) -> None:
    # a unit file or plist would write the values to disk outside the secrets directory
    if spec.env_file is not None:
        raise SupervisorError(
            f"{spec.name}: secrets with as: env need the child supervisor; "
            "use as: file with systemd or launchd"
        )


def systemd_unit(spec: LaunchSpec, log_file: Path) -> str:
    """The unit file for a workload (pure)."""
    _no_env_secrets(spec)
    env = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in sorted(spec.env.items()))
    user = f"User={spec.user}\n" if spec.user else ""  # systemd also sets its groups
    return (
        "[Unit]\n"
        f"Description=fleetkeeper workload {spec.name}\n"
        "[Service]\n"
        f"ExecStart={shlex.join(spec.argv)}\n"
        f"WorkingDirectory={spec.cwd}\n"
        f"{user}"
        f"{env}"
        f"StandardOutput=append:{log_file}\n"
        "StandardError=inherit\n"
        "KillMode=control-group\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def launchd_plist(label: str, spec: LaunchSpec, log_file: Path) -> bytes:
    """The launchd job for a workload (pure)."""
    _no_env_secrets(spec)
    job: dict[str, object] = {"UserName": spec.user} if spec.user else {}
    return plistlib.dumps(
        {
            **job,
            "Label": label,
            "ProgramArguments": list(spec.argv),
            "WorkingDirectory": str(spec.cwd),
            "EnvironmentVariables": dict(spec.env),
            "StandardOutPath": str(log_file),
            "StandardErrorPath": str(log_file),
            "KeepAlive": {"SuccessfulExit": False},
            "RunAtLoad": True,
        }
    )


def _resolved_program(info: ProcInfo | None) -> Path | None:
    if info is None:
        return None
    for _, path in procinfo.evidence_paths(info):
        return Path(os.path.realpath(path))
    return None


class _ServiceSupervisor:
    """Shared restart-and-verify logic; subclasses say how to install, restart and inspect."""

    def __init__(self, log_dir: Path, runner: Runner = run_command) -> None:
        self.log_dir = log_dir
        self.run = runner

    def install(self, spec: LaunchSpec) -> None:
        raise NotImplementedError

    def snapshot(self, name: str) -> UnitSnapshot:
        raise NotImplementedError

    def kick(self, name: str) -> None:
        raise NotImplementedError

    def halt(self, name: str) -> None:
        raise NotImplementedError

    def log_file(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def restart(self, spec: LaunchSpec) -> ProcInfo:
        before = self.snapshot(spec.name)
        self.install(spec)
        self.kick(spec.name)
        expected = Path(os.path.realpath(spec.cwd))
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            after = self.snapshot(spec.name)
            info = procinfo.read(after.main_pid) if after.main_pid else None
            # The versionDir is the cwd; the main program may be an interpreter, so look at
            # every piece of evidence, not only the executable.
            exe = None
            if info is not None:
                for _, path in procinfo.evidence_paths(info):
                    real = Path(os.path.realpath(path))
                    if real == expected or expected in real.parents:
                        exe = real
                        break
                else:
                    exe = _resolved_program(info)
            verdict = verify_restart(before, after, executable=exe, expected_dir=expected)
            if verdict.ok and info is not None:
                return info
            if time.monotonic() > deadline:
                raise SupervisorError(f"restart of {spec.name} not verified: {verdict.reason}")
            time.sleep(0.2)

    def start(self, spec: LaunchSpec) -> ProcInfo:
        return self.restart(spec)

    def stop(self, name: str) -> None:
        self.halt(name)

    def running(self, name: str) -> ProcInfo | None:
        try:
            snap = self.snapshot(name)
        except SupervisorError:
            return None
        return procinfo.read(snap.main_pid) if snap.active and snap.main_pid else None

    def adopt(self, name: str, belongs: Callable[[ProcInfo], bool]) -> ProcInfo | None:
        info = self.running(name)
        if info is not None and not belongs(info):
            self.halt(name)
            return None
        return info

    def set_auto_restart(self, name: str, on: bool) -> None:
        """The service manager restarts crashes itself (Restart=on-failure / KeepAlive)."""

    def tick(self) -> None:
        """Nothing to do: the service manager watches the process."""

    def crash_note(self, name: str) -> str | None:
        return None


class SystemdSupervisor(_ServiceSupervisor):
    """Units ``fleetkeeper-<name>.service`` in ``unit_dir`` (default /etc/systemd/system)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        unit_dir: Path = Path("/etc/systemd/system"),
        user: bool = False,
        runner: Runner = run_command,
    ) -> None:
        super().__init__(log_dir, runner)
        self.unit_dir = unit_dir
        self.base = ["systemctl", "--user"] if user else ["systemctl"]

    @staticmethod
    def unit(name: str) -> str:
        return f"fleetkeeper-{name}.service"

    def install(self, spec: LaunchSpec) -> None:
        path = self.unit_dir / self.unit(spec.name)
        text = systemd_unit(spec, self.log_file(spec.name))
        if not path.exists() or path.read_text("utf-8") != text:
            path.write_text(text, "utf-8")
            self.run([*self.base, "daemon-reload"])

    def snapshot(self, name: str) -> UnitSnapshot:
        props = ["-p", "ActiveState", "-p", "MainPID", "-p", "ExecMainStartTimestampMonotonic"]
        return parse_systemctl_show(self.run([*self.base, "show", *props, self.unit(name)]))

    def kick(self, name: str) -> None:
        self.run([*self.base, "restart", self.unit(name)])

    def halt(self, name: str) -> None:
        self.run([*self.base, "stop", self.unit(name)])


class LaunchdSupervisor(_ServiceSupervisor):
    """Jobs ``org.fleetkeeper.<name>`` in the system domain (plists in /Library/LaunchDaemons)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        plist_dir: Path = Path("/Library/LaunchDaemons"),
        domain: str = "system",
        runner: Runner = run_command,
    ) -> None:
        super().__init__(log_dir, runner)
        self.plist_dir, self.domain = plist_dir, domain

    @staticmethod
    def label(name: str) -> str:
        return f"org.fleetkeeper.{name}"

    def install(self, spec: LaunchSpec) -> None:
        label = self.label(spec.name)
        path = self.plist_dir / f"{label}.plist"
        data = launchd_plist(label, spec, self.log_file(spec.name))
        if path.exists() and path.read_bytes() == data:
            return
        if path.exists():
            try:
                self.run(["launchctl", "bootout", f"{self.domain}/{label}"])
            except SupervisorError as exc:
                log.info("bootout of %s: %s", label, exc)
        path.write_bytes(data)
        self.run(["launchctl", "bootstrap", self.domain, str(path)])

    def snapshot(self, name: str) -> UnitSnapshot:
        try:
            out = self.run(["launchctl", "print", f"{self.domain}/{self.label(name)}"])
        except SupervisorError:
            return UnitSnapshot(False, None)
        return parse_launchctl_print(out)

    def kick(self, name: str) -> None:
        self.run(["launchctl", "kickstart", "-k", f"{self.domain}/{self.label(name)}"])

    def halt(self, name: str) -> None:
        self.run(["launchctl", "bootout", f"{self.domain}/{self.label(name)}"])
