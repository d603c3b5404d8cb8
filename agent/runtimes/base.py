"""The runtime seam: how one kind of workload is started, health-checked and version-probed.

A runtime is chosen per workload document by :func:`agent.runtimes.runtime_for` (``kind``
and ``model.runtime``). It only *describes* the workload; starting, stopping and
supervising the process is the supervisor's job (``agent.supervise.supervisor``), and the
restart step (``agent.restart``, judged by ``agent.prove``) decides what counts as proof.

To add a runtime (e.g. ``llama-cpp``): create ``agent/runtimes/<module>.py`` defining a class
that satisfies :class:`Runtime` and a module attribute ``RUNTIME`` holding an instance; list
the key and module in ``agent.runtimes.BUILTIN`` (or call ``register_runtime`` at import).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

WorkloadDoc = Mapping[str, Any]
"""One entry of ``workloads`` in a desired-state document (schema/desired-state.schema.json)."""


@dataclass(frozen=True)
class HealthResult:
    """Outcome of one health check: ``ok`` is the verdict, ``message`` says why, for people."""

    ok: bool
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionProbe:
    """Outcome of a version probe.

    ``configured`` is False when the workload has no probe (nothing to prove with it);
    ``output`` is what the probe printed (stdout + stderr, stripped), ``ok`` whether it ran
    and exited 0. Whether the output names the target version is decided by the caller.
    """

    configured: bool
    ok: bool
    output: str
    message: str = ""


class Runtime(Protocol):
    """How a kind of workload runs. Implementations must be stateless and thread-safe."""

    name: str

    def command(
        self, workload: WorkloadDoc, version_dir: Path, state_dir: Path
    ) -> tuple[list[str], dict[str, str]]:
        """argv and *extra* environment to start ``workload`` from ``version_dir``.

        ``version_dir`` is the resolved ``<installRoot>/<name>/versions/<version>``; the
        process is started with that directory as its working directory. ``state_dir`` is a
        per-workload directory the runtime may use for caches. Raise
        ``agent.errors.WorkloadError`` when the document cannot be run (missing file, bad args).
        """
        ...

    def check_health(self, workload: WorkloadDoc, timeout: float) -> HealthResult:
        """One health check, finishing within ``timeout`` seconds (no retry loop here)."""
        ...

    def probe_version(
        self, workload: WorkloadDoc, version_dir: Path, timeout: float
    ) -> VersionProbe:
        """Ask the program in ``version_dir`` which version it is (``versionProbe``)."""
        ...
