"""Commit-time rules for kind Model: where mlx-lm may run, memory, what the artifact must be."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.validate import validate_files
from tests.helpers.fleetfiles import FLEET, SHA_B, lines, node, run

EXAMPLE = Path(__file__).resolve().parents[2] / "example-fleet-repo"
M = "models/llm/1.0.0.yaml"


def model(runtime: str, url: str, size: int | None = 1 << 30, selector: str = "") -> str:
    size_line = f"    size: {size}\n" if size is not None else ""
    return (
        "apiVersion: fleetkeeper/v1\n"
        "kind: Model\n"
        "name: llm\n"
        "version: 1.0.0\n"
        f"runtime: {runtime}\n"
        "artifacts:\n"
        "  - platform: any\n"
        f"    url: {url}\n"
        f"    sha256: {SHA_B}\n" + size_line + "args:\n"
        "  port: 8081\n"
        "targets:\n"
        f"  {selector or 'roles: [inference]'}\n"
    )


GGUF = "https://dl.example.org/m.gguf"
TGZ = "https://dl.example.org/m.tar.gz"
MAC = node("mac", "darwin/arm64", "metal")
MAC_CPU = node("mac", "darwin/arm64", "cpu")
LINUX = node("box", "linux/amd64", "cpu")
LINUX_OPT_IN = node("box", "linux/arm64", "cpu", labels='{mlx-cpu: "true"}')
LINUX_OPT_OUT = node("box", "linux/amd64", "cpu", labels='{mlx-cpu: "false"}')


def errors(nodes: dict[str, str], model_text: str) -> list[str]:
    files = {"fleet.yaml": FLEET, **nodes, M: model_text}
    return [v for v in lines(run(files)) if "warning" not in v]


@pytest.mark.parametrize(
    ("nodes", "want_unfit"),
    [
        ({"nodes/mac.yaml": MAC}, []),
        ({"nodes/box.yaml": LINUX_OPT_IN}, []),
        ({"nodes/mac.yaml": MAC_CPU}, ["mac (darwin/arm64, cpu)"]),
        ({"nodes/box.yaml": LINUX}, ["box (linux/amd64, cpu)"]),
        ({"nodes/box.yaml": LINUX_OPT_OUT}, ["box (linux/amd64, cpu)"]),
        ({"nodes/mac.yaml": MAC, "nodes/box.yaml": LINUX}, ["box (linux/amd64, cpu)"]),
    ],
)
def test_mlx_lm_only_on_apple_silicon_or_opted_in_linux(
    nodes: dict[str, str], want_unfit: list[str]
) -> None:
    got = errors(nodes, model("mlx-lm", TGZ))
    if not want_unfit:
        assert got == []
        return
    (line,) = got
    assert line.startswith(f"{M}:5:10: runtime mlx-lm runs only on darwin/arm64")
    assert line.endswith("the targets select " + ", ".join(want_unfit))


def test_llama_cpp_runs_anywhere() -> None:
    nodes = {"nodes/mac.yaml": MAC, "nodes/box.yaml": LINUX}
    assert errors(nodes, model("llama-cpp", GGUF)) == []


@pytest.mark.parametrize(
    ("size", "memory", "want"),
    [
        (3 << 30, "2", ["gpu"]),  # larger than the node
        (2 << 30, "2", []),  # exactly fits
        (3 << 30, "", []),  # node declares no memory
    ],
)
def test_model_larger_than_node_memory_names_the_node(
    size: int | None, memory: str, want: list[str]
) -> None:
    nodes = {
        "nodes/gpu.yaml": node("gpu", memory=memory),
        "nodes/big.yaml": node("big", memory="64"),
    }
    got = errors(nodes, model("llama-cpp", GGUF, size=size))
    assert [g for g in got if "memoryGiB" in g] == [
        f"{M}:10:11: model file is 3.0 GiB but node {n} has memoryGiB {memory}; narrow the "
        "targets or use a smaller quantisation"
        for n in want
    ]
    assert len(got) == len(want)


def test_memory_rule_ignores_nodes_not_targeted() -> None:
    nodes = {"nodes/gpu.yaml": node("gpu", memory="1"), "nodes/mac.yaml": MAC}
    text = model("mlx-lm", TGZ, size=3 << 30, selector="accelerators: [metal]")
    assert errors(nodes, text) == []


@pytest.mark.parametrize(
    ("runtime", "url", "ok"),
    [
        ("llama-cpp", GGUF, True),
        ("llama-cpp", "https://dl.example.org/M.GGUF?download=1", True),
        ("llama-cpp", TGZ, False),
        ("llama-cpp", "https://dl.example.org/m.safetensors", False),
        ("mlx-lm", TGZ, True),
        ("mlx-lm", "file:///srv/models/m.tgz", True),
        ("mlx-lm", GGUF, False),
    ],
)
def test_artifact_must_be_what_the_runtime_loads(runtime: str, url: str, ok: bool) -> None:
    got = errors({"nodes/mac.yaml": MAC}, model(runtime, url))
    got = [g for g in got if "allowInsecureURLs" not in g and "https://" not in g]
    if ok:
        assert got == []
    else:
        (line,) = got
        assert line.startswith(f"{M}:8:10: runtime {runtime} loads ")
        assert "the artifact URL must end in" in line


def test_example_fleet_repo_models_are_valid() -> None:
    files = {
        str(p.relative_to(EXAMPLE)): p.read_bytes()
        for p in EXAMPLE.rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".age", ".recipients")  # secrets/ (issue 17)
    }
    assert any(p.startswith("models/") for p in files)
    report = validate_files(files)
    assert [str(v) for v in report.violations] == []
    runtimes = {d["runtime"] for p, d in report.documents.items() if p.startswith("models/")}
    assert runtimes == {"llama-cpp", "mlx-lm"}


GGUF_FACTS = (
    "gguf:\n  parameters: 1000\n  layers: 32\n  kvHeads: 8\n  keyLength: 128\n  valueLength: 128\n"
)


@pytest.mark.parametrize(
    ("facts", "context", "want"),
    [
        # 1 GiB file on a 2 GiB node: KV cache 32*8*256*2 = 128 KiB per token
        ("", "", []),  # no gguf: facts: the file alone is weighed (fits)
        (GGUF_FACTS, "", []),  # llama-cpp default context 2048: 256 MiB of KV cache
        (GGUF_FACTS, "  contextSize: 4096\n", []),  # 512 MiB: 1.5 GiB in all, fits
        (GGUF_FACTS, "  contextSize: 16384\n", ["3.00 GiB", "KV cache 2.00 GiB", "16384"]),
    ],
)
def test_memory_counts_the_kv_cache_at_the_configured_context(
    facts: str, context: str, want: list[str]
) -> None:
    text = model("llama-cpp", GGUF, size=1 << 30).replace(
        "  port: 8081\n", "  port: 8081\n" + context
    )
    got = [g for g in errors({"nodes/gpu.yaml": node("gpu", memory="2")}, text + facts)]
    if not want:
        assert got == []
        return
    (line,) = got
    assert "but node gpu has memoryGiB 2; narrow the targets, lower args.contextSize" in line
    for needle in want:
        assert needle in line
