"""Runtimes (how a workload is described to the supervisor) and the registry choosing one.

``runtime_for(workload)`` picks by ``kind`` and, for models, ``model.runtime``:
``process`` → :mod:`agent.runtimes.process`, ``llama-cpp`` → ``agent.runtimes.llama_cpp``,
``mlx-lm`` → ``agent.runtimes.mlx_lm``. Runtime modules are imported lazily, so a node
without the model runtimes installed still runs plain processes. Each module exposes an
instance as ``RUNTIME``.
"""

from __future__ import annotations

import importlib
import threading

from agent.errors import WorkloadError
from agent.runtimes.base import HealthResult, Runtime, VersionProbe, WorkloadDoc

__all__ = [
    "BUILTIN",
    "HealthResult",
    "Runtime",
    "VersionProbe",
    "WorkloadDoc",
    "register_runtime",
    "runtime_for",
    "runtime_key",
]

BUILTIN: dict[str, str] = {
    "process": "agent.runtimes.process",
    "llama-cpp": "agent.runtimes.llama_cpp",
    "mlx-lm": "agent.runtimes.mlx_lm",
}

_registered: dict[str, Runtime] = {}
_lock = threading.Lock()


def register_runtime(key: str, runtime: Runtime) -> None:
    """Make ``runtime`` the one used for ``key`` (a ``model.runtime`` value or ``process``)."""
    with _lock:
        _registered[key] = runtime


def runtime_key(workload: WorkloadDoc) -> str:
    """``process`` for kind process; ``model.runtime`` for kind model."""
    if workload.get("kind", "process") == "model":
        model = workload.get("model") or {}
        key = model.get("runtime")
        if not key:
            raise WorkloadError(
                f"model workload {workload.get('name')!r} has no model.runtime "
                "(expected llama-cpp or mlx-lm)"
            )
        return str(key)
    return "process"


def runtime_for(workload: WorkloadDoc) -> Runtime:
    """The runtime for ``workload``; raises WorkloadError when it is unknown or not installed."""
    key = runtime_key(workload)
    with _lock:
        found = _registered.get(key)
    if found is not None:
        return found
    module_name = BUILTIN.get(key)
    if module_name is None:
        raise WorkloadError(f"unknown runtime {key!r} for workload {workload.get('name')!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WorkloadError(
            f"runtime {key!r} for workload {workload.get('name')!r} is not available on this "
            f"node ({module_name}: {exc})"
        ) from exc
    runtime: Runtime = module.RUNTIME
    register_runtime(key, runtime)
    return runtime
