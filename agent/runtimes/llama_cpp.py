"""The llama-cpp runtime: a single .gguf file served by llama-cpp-python's OpenAI server.

Runs ``<python> -m llama_cpp.server --model <versions/<v>/<file>.gguf> --host 127.0.0.1
--port <port>`` plus the mapped args: ``contextSize`` → ``--n_ctx``, ``gpuLayers`` →
``--n_gpu_layers``, ``threads`` → ``--n_threads``, ``chatFormat`` → ``--chat_format``,
then ``extra`` verbatim. The model is loaded at start-up, so a corrupt file makes the
process exit with llama.cpp's own error on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.errors import WorkloadError
from agent.runtimes.base import WorkloadDoc
from agent.runtimes.model_server import HANDOFF_MODULE, ModelServerRuntime

SERVER_MODULE = "llama_cpp.server"

_FLAGS = {
    "contextSize": "--n_ctx",
    "gpuLayers": "--n_gpu_layers",
    "threads": "--n_threads",
    "chatFormat": "--chat_format",
}


def find_gguf(workload: WorkloadDoc, version_dir: Path) -> Path:
    """The one .gguf file of the version (the artifact is a single file)."""
    found = sorted(p for p in version_dir.rglob("*.gguf") if p.is_file())
    if len(found) != 1:
        shown = [str(p.relative_to(version_dir)) for p in found] or "none"
        raise WorkloadError(
            f"model {workload.get('name')!r}: runtime llama-cpp needs exactly one .gguf file "
            f"in {version_dir}, found {shown}; publish the model as a single .gguf artifact"
        )
    return found[0]


def llama_argv(
    python: str, model: Path, port: int, args: dict[str, Any], *, handoff: bool = False
) -> list[str]:
    """The server command line (pure). ``handoff``: the same server and arguments through
    the launcher that binds the port with SO_REUSEPORT (blue/green swaps)."""
    launch = [HANDOFF_MODULE, "llama-cpp"] if handoff else [SERVER_MODULE]
    argv = [python, "-m", *launch, "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    for key, flag in _FLAGS.items():
        if args.get(key) is not None:
            argv += [flag, str(args[key])]
    return argv


class LlamaCppRuntime(ModelServerRuntime):
    name = "llama-cpp"
    install_hint = "install it with: pip install 'fleetkeeper[llama]'"
    single_file = True

    def model_path(self, workload: WorkloadDoc, version_dir: Path) -> Path:
        return find_gguf(workload, version_dir)

    def server_argv(
        self, model_path: Path, port: int, args: dict[str, Any], *, handoff: bool
    ) -> list[str]:
        return llama_argv(self.python, model_path, port, args, handoff=handoff)


RUNTIME = LlamaCppRuntime()
