"""Pure judgement: does the observed process prove that a version runs? (No I/O here.)"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.runtimes.base import VersionProbe


def names_version(output: str, version: str) -> bool:
    """True when ``output`` names ``version`` as a whole token: ``v1.2.3`` and ``app 1.2.3``
    match 1.2.3; ``1.2.30``, ``11.2.3`` and ``1.2.3-rc1`` do not."""
    pattern = rf"(?<![0-9A-Za-z.+-]){re.escape(version)}(?![0-9A-Za-z+-]|\.[0-9A-Za-z])"
    pattern_v = rf"(?<![0-9A-Za-z.+-])v{re.escape(version)}(?![0-9A-Za-z+-]|\.[0-9A-Za-z])"
    return re.search(pattern, output) is not None or re.search(pattern_v, output) is not None


def locate_version(
    evidence: Sequence[tuple[str, Path]], versions_dir: Path
) -> tuple[str | None, str]:
    """Which ``versions/<v>`` the process runs from, using resolved evidence paths in order
    of strength (exe, argv, cwd). Returns (version or None, the evidence used)."""
    for kind, path in evidence:
        if versions_dir in path.parents:
            name = path.relative_to(versions_dir).parts[0]
            if not name.startswith("."):
                return name, f"{kind} {path}"
    shown = ", ".join(f"{k} {p}" for k, p in evidence) or "no readable evidence"
    return None, f"not under {versions_dir} ({shown})"


@dataclass(frozen=True)
class Proof:
    ok: bool
    reason: str


def judge_process(
    *,
    target: str,
    old_pid: int | None,
    pid: int | None,
    located: str | None,
    evidence: str,
) -> Proof:
    """The process half of a proof: a new PID whose program resolves into the target dir."""
    if pid is None:
        return Proof(False, "the process is not running")
    if old_pid is not None and pid == old_pid:
        return Proof(False, f"the PID did not change ({pid}): the old process still runs")
    if located != target:
        return Proof(False, f"pid {pid} runs version {located or '?'} ({evidence}), not {target}")
    return Proof(True, f"pid {pid} runs {target} ({evidence})")


def judge_probe(*, target: str, configured: bool, ok: bool, output: str, message: str) -> Proof:
    """The versionProbe half: when configured, it must succeed and name the target version."""
    if not configured:
        return Proof(True, "no versionProbe configured")
    if not ok:
        return Proof(False, f"versionProbe failed: {message} {output[:200]!r}".strip())
    if not names_version(output, target):
        return Proof(False, f"versionProbe printed {output[:200]!r}, which does not name {target}")
    return Proof(True, f"versionProbe printed {output[:100]!r}")


def judge_version_probe(target: str, probe: VersionProbe) -> Proof:
    """:func:`judge_probe` on what a runtime's ``probe_version`` returned."""
    return judge_probe(
        target=target,
        configured=probe.configured,
        ok=probe.ok,
        output=probe.output,
        message=probe.message,
    )
