"""The mlx-lm runtime: an MLX model directory (shipped as .tar.gz) served by mlx_lm.server.

Runs ``<python> -m mlx_lm server --model <versions/<v>[/<dir>]> --host 127.0.0.1 --port
<port>`` plus ``extra`` verbatim. ``contextSize``, ``gpuLayers`` and ``threads`` have no
mlx_lm.server flag and are ignored; ``chatFormat`` is passed as ``--chat-template``.

The server scans the Hugging Face hub cache for ``/v1/models`` and fails when it is
missing, and must never reach a hub: ``HF_HUB_CACHE`` points at an empty cache in the
workload's state directory and ``HF_HUB_OFFLINE=1``. Weights load lazily on the first
request, which the health check's one-token completion makes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.errors import WorkloadError
from agent.runtimes.base import WorkloadDoc
from agent.runtimes.model_server import HANDOFF_MODULE, ModelServerRuntime


def find_model_dir(workload: WorkloadDoc, version_dir: Path) -> Path:
    """The unpacked model directory: the version dir itself, or its one subdirectory,
    holding ``config.json``."""
    if (version_dir / "config.json").is_file():
        return version_dir
    subdirs = [p for p in version_dir.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    if len(subdirs) == 1:
        return subdirs[0]
    raise WorkloadError(
        f"model {workload.get('name')!r}: runtime mlx-lm needs an MLX model directory "
        f"(config.json, *.safetensors, tokenizer files) at the top of the .tar.gz or in one "
        f"folder inside it; {version_dir} has none"
    )


def mlx_argv(
    python: str, model: Path, port: int, args: dict[str, Any], *, handoff: bool = False
) -> list[str]:
    """The server command line (pure); ``handoff`` as for llama-cpp (SO_REUSEPORT)."""
    launch = [HANDOFF_MODULE, "mlx-lm"] if handoff else ["mlx_lm", "server"]
    argv = [python, "-m", *launch, "--model", str(model)]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    if args.get("chatFormat") is not None:
        argv += ["--chat-template", str(args["chatFormat"])]
    return argv


def mlx_env(state_dir: Path) -> dict[str, str]:
    """Offline, with a hub cache of its own (created: the server fails without one)."""
    hub = state_dir / "hf-hub"
    hub.mkdir(parents=True, exist_ok=True)
    return {
        "PYTHONUNBUFFERED": "1",
        "HF_HOME": str(state_dir / "hf-home"),
        "HF_HUB_CACHE": str(hub),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


class MlxLmRuntime(ModelServerRuntime):
    name = "mlx-lm"
    install_hint = (
        "install it with: pip install 'fleetkeeper[mlx]' (Apple Silicon, or Linux with the "
        "CPU backend)"
    )
    single_file = False

    def model_path(self, workload: WorkloadDoc, version_dir: Path) -> Path:
        return find_model_dir(workload, version_dir)

    def server_argv(
        self, model_path: Path, port: int, args: dict[str, Any], *, handoff: bool
    ) -> list[str]:
        return mlx_argv(self.python, model_path, port, args, handoff=handoff)

    def server_env(self, state_dir: Path) -> dict[str, str]:
        return mlx_env(state_dir)


RUNTIME = MlxLmRuntime()
