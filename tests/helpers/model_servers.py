"""Model servers run for real from a runtime's own command, on models from ``models``.

``install_version`` lays a model out as the agent does; ``model_doc`` is the workload
document the reconciler would send; ``RunningServer`` and ``wait_healthy`` start and watch
the server process.
"""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

from agent.runtimes.base import HealthResult, Runtime
from tests.helpers.models import ModelFile, describe


def runtime_available(module: str) -> bool:
    """Whether a runtime's Python package is importable (for skip conditions)."""
    return importlib.util.find_spec(module) is not None


def install_version(root: Path, name: str, version: str, artifact: Path) -> Path:
    """Lay out ``<root>/<name>/versions/<version>/`` as the agent does (its own layout code):
    a single file is copied in, a .tar.gz is unpacked; the marker records the SHA-256."""
    import shutil

    from agent.layout import WorkloadLayout

    layout = WorkloadLayout(root, name)
    staging = layout.staging_dir()
    if artifact.name.endswith(".tar.gz"):
        with tarfile.open(artifact) as tar:
            tar.extractall(staging, filter="data")
    else:
        shutil.copy2(artifact, staging / artifact.name)
    return layout.commit_staged(staging, version, describe(artifact).sha256)


def model_doc(
    name: str, version: str, runtime: str, port: int, artifact: ModelFile, **args: object
) -> dict[str, object]:
    """A desired-state workload document for a model (as the reconciler sends it)."""
    return {
        "name": name,
        "kind": "model",
        "version": version,
        "artifact": {
            "platform": "any",
            "url": artifact.path.as_uri(),
            "sha256": artifact.sha256,
            "size": artifact.size,
        },
        "health": {"timeoutSeconds": 60},
        "model": {"runtime": runtime, "args": {"port": port, **args}},
    }


class RunningServer:
    """A model server started from a runtime's own command (a real process)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        import os
        import subprocess

        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, **env},
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> str:
        return self.log.read_text("utf-8", errors="replace")

    def stop(self) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()


def wait_healthy(
    runtime: Runtime, doc: dict[str, object], server: RunningServer, timeout: float
) -> HealthResult:
    """Poll the runtime's health check until healthy, the process exits, or ``timeout``;
    returns the last HealthResult."""
    import time

    deadline = time.monotonic() + timeout
    result = HealthResult(False, "not checked")
    while time.monotonic() < deadline:
        result = runtime.check_health(doc, 5.0)
        if result.ok or server.proc.poll() is not None:
            return result
        time.sleep(0.1)
    return result
