"""Pure parts of the model runtimes: server command lines, ports, which listed model counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.errors import WorkloadError
from agent.runtimes.llama_cpp import llama_argv
from agent.runtimes.mlx_lm import mlx_argv
from agent.runtimes.model_server import (
    GIB,
    accepts_version,
    model_port,
    swap_mode,
    version_marker,
)
from agent.runtimes.openai_health import listed_ids

MODEL = Path("/opt/fk/tiny/versions/1.0.0/tiny.gguf")


@pytest.mark.parametrize(
    ("args", "want_tail"),
    [
        ({"port": 8081}, []),
        (
            {"port": 8081, "contextSize": 512, "gpuLayers": -1, "threads": 2},
            ["--n_ctx", "512", "--n_gpu_layers", "-1", "--n_threads", "2"],
        ),
        ({"port": 8081, "chatFormat": "chatml"}, ["--chat_format", "chatml"]),
    ],
)
def test_llama_argv(args: dict[str, Any], want_tail: list[str]) -> None:
    argv = llama_argv("/py", MODEL, 8081, args)
    head = ["/py", "-m", "llama_cpp.server", "--model", str(MODEL)]
    assert argv == [*head, "--host", "127.0.0.1", "--port", "8081", *want_tail]


def test_handoff_argv_runs_the_same_server_through_the_launcher() -> None:
    plain = llama_argv("/py", MODEL, 1, {"contextSize": 64})
    shared = llama_argv("/py", MODEL, 1, {"contextSize": 64}, handoff=True)
    assert shared[:4] == ["/py", "-m", "agent.runtimes.handoff_serve", "llama-cpp"]
    assert shared[4:] == plain[3:]
    mlx = mlx_argv("/py", Path("/m"), 1, {}, handoff=True)
    assert mlx[:4] == ["/py", "-m", "agent.runtimes.handoff_serve", "mlx-lm"]
    assert mlx[4:] == mlx_argv("/py", Path("/m"), 1, {})[4:]


@pytest.mark.parametrize(
    ("args", "size", "memory", "cuda", "want"),
    [
        ({}, 1 * GIB, 16.0, False, "overlap"),  # two copies fit in 80% of 16 GiB
        ({}, 7 * GIB, 16.0, False, "restart"),  # 14 GiB > 12.8 GiB
        ({}, None, 16.0, False, "restart"),  # unknown size: play safe
        ({}, 1 * GIB, None, False, "restart"),  # unknown memory
        ({"gpuLayers": -1}, 1 * GIB, 64.0, True, "restart"),  # VRAM is not visible
        ({"gpuLayers": 0}, 1 * GIB, 64.0, True, "overlap"),  # CPU inference on a CUDA box
        ({"gpuLayers": -1}, 1 * GIB, 64.0, False, "overlap"),  # Metal: unified memory
        ({"swap": "restart"}, 1, 64.0, False, "restart"),
        ({"swap": "overlap"}, 60 * GIB, 64.0, True, "overlap"),
    ],
)
def test_swap_mode(
    args: dict[str, Any], size: int | None, memory: float | None, cuda: bool, want: str
) -> None:
    assert swap_mode(args, size, memory, cuda) == want


@pytest.mark.parametrize(
    ("args", "want_tail"),
    [
        ({"port": 9000, "contextSize": 512, "threads": 4}, []),  # no such mlx_lm flags
        ({"port": 9000, "chatFormat": "{{ messages }}"}, ["--chat-template", "{{ messages }}"]),
    ],
)
def test_mlx_argv(args: dict[str, Any], want_tail: list[str]) -> None:
    argv = mlx_argv("/py", Path("/m"), 9000, args)
    head = ["/py", "-m", "mlx_lm", "server", "--model", "/m", "--host", "127.0.0.1"]
    assert argv == [*head, "--port", "9000", *want_tail]


@pytest.mark.parametrize(
    ("port", "want"),
    [
        (8081, 8081),
        ("8082", 8082),
        (None, None),
        ("", None),
        (0, None),
        (70000, None),
        (True, None),
    ],
)
def test_model_port(port: object, want: int | None) -> None:
    doc = {"name": "m", "kind": "model", "model": {"runtime": "llama-cpp", "args": {"port": port}}}
    if want is None:
        with pytest.raises(WorkloadError, match="model.args.port"):
            model_port(doc)
    else:
        assert model_port(doc) == want


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("/r/m/versions/1.0.0/x.gguf", "/r/m/versions/1.0.0"),
        ("/r/m/versions/1.0.0/sub/dir", "/r/m/versions/1.0.0"),
        ("/r/m/versions/1.0.0", "/r/m/versions/1.0.0"),
        ("/r/m/current/x.gguf", None),
    ],
)
def test_version_marker(path: str, want: str | None) -> None:
    got = version_marker(Path(path))
    assert (str(got) if got else None) == want


@pytest.mark.parametrize(
    ("model_id", "want"),
    [
        ("/root/tiny/versions/1.0.0/tiny.gguf", True),
        ("/root/tiny/versions/1.0.0", True),  # mlx lists the directory
        ("/root/tiny/versions/0.9.0/tiny.gguf", False),  # old version still loaded
        ("/root/other/versions/1.0.0/tiny.gguf", False),  # another workload's file
        ("tiny", False),  # an alias proves nothing
        ("/root/tiny/versions/1.0.0/../0.9.0/tiny.gguf", False),
    ],
)
def test_accepts_version(model_id: str, want: bool) -> None:
    doc = {"name": "tiny", "version": "1.0.0", "kind": "model"}
    assert accepts_version(doc, model_id) is want


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ({"object": "list", "data": [{"id": "a"}, {"id": "b"}]}, ("a", "b")),
        ({"data": [{"name": "x"}, "junk", {"id": 3}]}, ("3",)),
        ({"data": "nope"}, ()),
        ([], ()),
    ],
)
def test_listed_ids(body: object, want: tuple[str, ...]) -> None:
    assert listed_ids(body) == want
