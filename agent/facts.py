"""Facts a node reports when it registers (schema/register.schema.json)."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def platform_of(system: str, machine: str) -> str:
    """``linux/amd64`` style from platform.system() and platform.machine() (pure)."""
    return f"{system.lower()}/{ARCH.get(machine.lower(), machine.lower())}"


def accelerator_of(platform_name: str, nvidia_smi_output: str | None) -> str:
    """cuda when nvidia-smi lists a GPU; metal on macOS arm64; else cpu (pure)."""
    if nvidia_smi_output and any(
        line.strip().startswith("GPU ") for line in nvidia_smi_output.splitlines()
    ):
        return "cuda"
    if platform_name == "darwin/arm64":
        return "metal"
    return "cpu"


def nvidia_smi() -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        return subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None


def memory_gib() -> float | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None
    return round(total / (1 << 30), 1)


def runtimes() -> dict[str, bool]:
    """Which model runtimes can start here, keyed ``llama-cpp`` / ``mlx-lm`` (as the
    register schema says). Checked by importing their native parts in a subprocess: a
    package that is present but cannot load (mlx on Linux without its CPU backend) is
    not a runtime."""
    from agent.runtimes.model_server import installed_runtimes

    return installed_runtimes()


def detect(
    node: str, roles: Sequence[str], labels: Mapping[str, str], agent_version: str
) -> dict[str, Any]:
    plat = platform_of(platform.system(), platform.machine())
    facts: dict[str, Any] = {
        "node": node,
        "platform": plat,
        "accelerator": accelerator_of(plat, nvidia_smi()),
        "roles": list(roles),
        "labels": dict(labels),
        "agentVersion": agent_version,
        "hostname": socket.gethostname()[:255],
        "runtimes": runtimes(),
    }
    mem = memory_gib()
    if mem is not None:
        facts["memoryGiB"] = mem
    return facts
