"""Pure decisions for service-manager supervisors: did a restart really replace the process?

A service manager can report success while the old binary keeps running (a reload that
did nothing, a unit that still points at the old path). The verdict therefore needs a new
main PID *and* an executable that resolves into the new version directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class UnitSnapshot:
    """What the service manager says about a unit at one moment."""

    active: bool
    main_pid: int | None
    started_marker: str | None = None  # a start timestamp or counter, when the manager has one


@dataclass(frozen=True)
class RestartVerdict:
    ok: bool
    reason: str


def parse_systemctl_show(text: str) -> UnitSnapshot:
    """Parse ``systemctl show -p ActiveState -p MainPID -p ExecMainStartTimestampMonotonic``."""
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    pid = int(values.get("MainPID", "0") or 0)
    marker = values.get("ExecMainStartTimestampMonotonic") or None
    return UnitSnapshot(values.get("ActiveState") == "active", pid or None, marker)


def parse_launchctl_print(text: str) -> UnitSnapshot:
    """Parse ``launchctl print <domain>/<label>``: ``state = running`` and ``pid = N``."""
    state, pid, runs = "", None, None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("state = "):
            state = line.split("=", 1)[1].strip()
        elif line.startswith("pid = "):
            pid = int(line.split("=", 1)[1].strip())
        elif line.startswith("runs = "):
            runs = line.split("=", 1)[1].strip()
    return UnitSnapshot(state == "running", pid, runs)


def verify_restart(
    before: UnitSnapshot,
    after: UnitSnapshot,
    *,
    executable: Path | None,
    expected_dir: Path,
) -> RestartVerdict:
    """Judge a restart. ``executable`` and ``expected_dir`` must already be resolved paths
    (``executable``: where the new main process's program resolves, None if unknown)."""
    if not after.active or after.main_pid is None:
        return RestartVerdict(False, "the unit is not running after the restart")
    same_pid = before.main_pid is not None and after.main_pid == before.main_pid
    if same_pid and before.started_marker in (None, after.started_marker):
        return RestartVerdict(
            False,
            f"the restart did nothing: main PID is still {after.main_pid} "
            "(the old binary keeps running)",
        )
    if executable is None:
        return RestartVerdict(False, f"cannot tell what main PID {after.main_pid} runs")
    if executable != expected_dir and expected_dir not in executable.parents:
        return RestartVerdict(
            False,
            f"main PID {after.main_pid} runs {executable}, not the new version in {expected_dir}",
        )
    return RestartVerdict(True, f"main PID {after.main_pid} runs {executable}")
