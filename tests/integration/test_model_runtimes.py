"""The runtime adapters' own commands started as real servers on tiny generated models.

Each test lays out ``<root>/<name>/versions/<version>/`` with the agent's layout code, starts
exactly the argv + env the runtime builds, and asks the runtime's health check: the server
must list the model from that version directory and answer a one-token completion.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import procinfo
from agent.errors import WorkloadError
from agent.runtimes import runtime_for
from agent.runtimes.llama_cpp import LlamaCppRuntime
from agent.runtimes.mlx_lm import MlxLmRuntime
from tests.helpers.artifact_server import free_port
from tests.helpers.model_servers import (
    RunningServer,
    install_version,
    model_doc,
    runtime_available,
    wait_healthy,
)
from tests.helpers.models import corrupt_gguf, pack_mlx_model, write_gguf, write_mlx_model

pytestmark = pytest.mark.models

needs_llama = pytest.mark.skipif(
    not runtime_available("llama_cpp"),
    reason="llama-cpp-python is not installed (pip install -e '.[llama]'; make test does)",
)
needs_mlx = pytest.mark.skipif(
    not runtime_available("mlx_lm") or not runtime_available("mlx"),
    reason="mlx-lm with an mlx backend is not installed (pip install -e '.[mlx]'; make test does)",
)


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for s in started:
        s.stop()


def _start(
    servers: list[RunningServer], doc: dict[str, object], vdir: Path, tmp_path: Path
) -> RunningServer:
    runtime = runtime_for(doc)
    argv, env = runtime.command(doc, vdir, tmp_path / "state" / str(doc["name"]))
    server = RunningServer(argv, env, vdir, tmp_path / f"{doc['name']}-{doc['version']}.log")
    servers.append(server)
    return server


@needs_llama
def test_llama_cpp_serves_a_completion_and_names_the_loaded_file(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    model = write_gguf(tmp_path / "src" / "tiny.gguf", seed=1)
    vdir = install_version(tmp_path / "root", "tiny", "1.0.0", model.path)
    doc = model_doc(
        "tiny", "1.0.0", "llama-cpp", free_port(), model, contextSize=128, threads=1, swap="restart"
    )
    server = _start(servers, doc, vdir, tmp_path)
    assert server.proc.args[1:5] == ["-m", "llama_cpp.server", "--model", str(vdir / "tiny.gguf")]

    result = wait_healthy(runtime_for(doc), doc, server, 60)

    assert result.ok, f"{result.message}\n{server.output()[-2000:]}"
    assert result.details["sha256"] == model.sha256
    assert result.details["fileSha256"] == model.sha256
    assert result.details["modelPath"] == str((vdir / "tiny.gguf").resolve())
    assert isinstance(result.details["completion"], str)
    # Another version's document does not accept what this server lists.
    other = {**doc, "version": "2.0.0"}
    stale = runtime_for(other).check_health(other, 5)
    assert not stale.ok and "not the expected model" in stale.message


@needs_llama
def test_corrupt_gguf_fails_with_the_runtimes_error(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    bad = corrupt_gguf(tmp_path / "src" / "bad.gguf")
    vdir = install_version(tmp_path / "root", "tiny", "1.0.1", bad.path)
    doc = model_doc("tiny", "1.0.1", "llama-cpp", free_port(), bad)
    server = _start(servers, doc, vdir, tmp_path)

    result = wait_healthy(runtime_for(doc), doc, server, 60)

    assert not result.ok
    assert server.proc.wait(30) != 0
    assert "Failed to load model from file" in server.output()


@needs_mlx
def test_mlx_lm_serves_a_completion_on_cpu_offline(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    archive = pack_mlx_model(
        write_mlx_model(tmp_path / "src" / "mlx-tiny", seed=2), tmp_path / "src" / "mlx.tar.gz"
    )
    vdir = install_version(tmp_path / "root", "mlx-tiny", "0.1.0", archive.path)
    doc = model_doc("mlx-tiny", "0.1.0", "mlx-lm", free_port(), archive, swap="restart")
    server = _start(servers, doc, vdir, tmp_path)
    assert server.proc.args[1:6] == ["-m", "mlx_lm", "server", "--model", str(vdir.resolve())]

    result = wait_healthy(runtime_for(doc), doc, server, 90)

    assert result.ok, f"{result.message}\n{server.output()[-2000:]}"
    assert result.details["sha256"] == archive.sha256
    assert result.details["modelPath"] == str(vdir.resolve())
    # It ran offline against a hub cache of its own, inside the state directory.
    assert (tmp_path / "state" / "mlx-tiny" / "hf-hub").is_dir()


def test_missing_runtime_is_a_clear_error_not_a_crash_loop(tmp_path: Path) -> None:
    """An interpreter without the runtime installed: command() refuses, saying what to do."""
    model = write_gguf(tmp_path / "tiny.gguf")
    vdir = install_version(tmp_path / "root", "tiny", "1.0.0", model.path)
    doc = model_doc("tiny", "1.0.0", "llama-cpp", free_port(), model)
    bare = sys._base_executable  # the interpreter under the venv: no llama_cpp, no mlx
    for runtime in (LlamaCppRuntime(), MlxLmRuntime()):
        runtime.python = bare
        with pytest.raises(WorkloadError, match="not installed on this node") as exc:
            runtime.command(doc, vdir, tmp_path / "state")
        assert "pip install 'fleetkeeper[" in str(exc.value)
        assert runtime.availability().ok is False


@pytest.mark.parametrize(
    "runtime_name",
    [pytest.param("llama-cpp", marks=needs_llama), pytest.param("mlx-lm", marks=needs_mlx)],
)
def test_handoff_servers_share_the_port_so_a_swap_has_no_gap(
    tmp_path: Path, servers: list[RunningServer], runtime_name: str
) -> None:
    """Blue/green: v2 starts beside v1 on the same port; after v1 stops, v2 serves alone."""
    port = free_port()
    docs, started = [], []
    for i, version in enumerate(("1.0.0", "2.0.0")):
        if runtime_name == "llama-cpp":
            model = write_gguf(tmp_path / "src" / f"tiny-{version}.gguf", seed=i)
        else:
            src = write_mlx_model(tmp_path / "src" / version, seed=i)
            model = pack_mlx_model(src, tmp_path / "src" / f"tiny-{version}.tar.gz")
        vdir = install_version(tmp_path / "root", "tiny", version, model.path)
        doc = model_doc("tiny", version, runtime_name, port, model, contextSize=64, threads=1)
        server = _start(servers, doc, vdir, tmp_path)
        assert server.proc.args[1:4] == ["-m", "agent.runtimes.handoff_serve", runtime_name]
        result = wait_healthy(runtime_for(doc), doc, server, 90)  # retried until v2 answers
        assert result.ok, f"{result.message}\n{server.output()[-2000:]}"
        docs.append(doc)
        started.append(server)
    runtime = runtime_for(docs[1])
    assert isinstance(runtime, LlamaCppRuntime | MlxLmRuntime)
    old_info = procinfo.read(started[0].proc.pid)
    assert runtime.can_handoff(started[1].proc.args, old_info)
    assert not runtime.can_handoff(["python", "-m", "llama_cpp.server"], old_info)
    assert started[0].proc.poll() is None and started[1].proc.poll() is None
    started[0].stop()
    for _ in range(5):  # every new connection now reaches v2
        result = runtime.check_health(docs[1], 30)
        assert result.ok and "/versions/2.0.0" in result.details["modelPath"], result.message
