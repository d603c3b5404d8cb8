"""Cross-file rules for models (``models/<name>/<version>.yaml``, kind Model).

Same shape as ``reconciler.validate.rules``: each rule is ``(ctx) -> Iterable[Violation]``
and ``RULES`` lists them; ``PER_FILE`` maps each to its per-file form (see ``rules``). Add
model-specific rules here.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from reconciler.plan.select import NodeFacts
from reconciler.spec import Artifact, Deployable
from reconciler.validate.loader import LoadedFile
from reconciler.validate.rules import (
    FileRule,
    Rule,
    RuleContext,
    Scope,
    for_deployables,
    node_path,
    violation,
)
from reconciler.validate.violations import Violation

GIB = 1024**3


def _mlx_capable(node: NodeFacts) -> bool:
    """MLX runs on Apple Silicon with Metal, or on Linux with the CPU backend when the
    node opts in with the label mlx-cpu: "true"."""
    if node.platform == "darwin/arm64" and node.accelerator == "metal":
        return True
    return node.platform.startswith("linux/") and node.labels.get("mlx-cpu") == "true"


def mlx_nodes(ctx: RuleContext) -> Iterator[Violation]:
    return ctx.each_deployable(mlx_nodes_of)


def mlx_nodes_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    if not scope.nodes_complete or d.kind != "model" or d.runtime != "mlx-lm":
        return
    unfit = [n for n in scope.targeted(d) if not _mlx_capable(n)]
    if unfit:
        shown = ", ".join(f"{n.name} ({n.platform}, {n.accelerator})" for n in unfit)
        yield violation(
            loaded,
            d.path,
            ("runtime",),
            f"runtime mlx-lm runs only on darwin/arm64 nodes with accelerator metal, or "
            f'Linux nodes labelled mlx-cpu: "true"; the targets select {shown}',
            related=[node_path(n.name) for n in unfit],
        )


# The context llama-cpp-python's server allocates when args.contextSize is unset (n_ctx).
DEFAULT_CONTEXT = {"llama-cpp": 2048}
KV_BYTES_PER_ELEMENT = 2  # llama.cpp keeps the KV cache in f16 unless told otherwise


@dataclass(frozen=True)
class MemoryEstimate:
    """What serving a model takes: its weights (the file) plus, with a ``gguf:`` block, the KV
    cache for ``context`` tokens (keys and values, every layer and KV head, f16)."""

    weights: int
    kv_cache: int
    context: int | None

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache

    def describe(self) -> str:
        if self.context is None:
            return f"{human(self.total)} (the file; no gguf: facts for the KV cache)"
        return (
            f"{human(self.total)} (weights {human(self.weights)} + KV cache "
            f"{human(self.kv_cache)} at contextSize {self.context})"
        )


def human(size: int) -> str:
    """Bytes as GiB with two decimals, or MiB below a tenth of a GiB."""
    return f"{size / GIB:.2f} GiB" if size >= GIB // 10 else f"{size / 1024**2:.1f} MiB"


def memory_estimate(d: Deployable, art: Artifact) -> MemoryEstimate | None:
    """Pure: the memory ``d`` needs when served from ``art``; None without a known size."""
    if art.size is None:
        return None
    facts = d.gguf
    if facts is None:
        return MemoryEstimate(art.size, 0, None)
    ctx = d.args.get("contextSize")
    if not isinstance(ctx, int):
        ctx = DEFAULT_CONTEXT.get(d.runtime or "", facts.context_length or 0)
    per_token = facts.layers * facts.kv_heads * (facts.key_length + facts.value_length)
    return MemoryEstimate(art.size, per_token * ctx * KV_BYTES_PER_ELEMENT, ctx)


def model_memory(ctx: RuleContext) -> Iterator[Violation]:
    """A model whose weights (plus its KV cache, when its GGUF facts are recorded) need more
    than a node's memoryGiB cannot be served there."""
    return ctx.each_deployable(model_memory_of)


def model_memory_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    if not scope.nodes_complete or d.kind != "model":
        return
    for node in scope.targeted(d):
        art = d.artifact_for(node.platform)
        if art is None or node.memory_gib is None:
            continue
        need = memory_estimate(d, art)
        if need is not None and need.total > node.memory_gib * GIB:
            index = d.artifacts.index(art)
            if need.context is None:
                what = f"model file is {need.weights / GIB:.1f} GiB"
                fix = "narrow the targets or use a smaller quantisation"
            else:
                what = f"model needs {need.describe()}"
                fix = "narrow the targets, lower args.contextSize or use a smaller quantisation"
            yield violation(
                loaded,
                d.path,
                ("artifacts", index, "size"),
                f"{what} but node {node.name} has memoryGiB {node.memory_gib:g}; {fix}",
                related=[node_path(node.name)],
            )


# What each runtime loads: llama.cpp one .gguf file; mlx-lm a model directory, shipped as a
# gzip'd tarball that the agent unpacks.
ARTIFACT_SUFFIXES = {"llama-cpp": (".gguf",), "mlx-lm": (".tar.gz", ".tgz")}


def model_artifact_kind(ctx: RuleContext) -> Iterator[Violation]:
    """A llama-cpp model is a single .gguf file; an mlx-lm model a .tar.gz of its directory."""
    return ctx.each_deployable(model_artifact_kind_of)


def model_artifact_kind_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    if d.kind != "model" or d.runtime not in ARTIFACT_SUFFIXES:
        return
    wanted = ARTIFACT_SUFFIXES[d.runtime]
    for index, art in enumerate(d.artifacts):
        path = urlsplit(art.url).path.lower()
        if not path.endswith(wanted):
            shown = " or ".join(wanted)
            what = (
                "a single .gguf file"
                if d.runtime == "llama-cpp"
                else (
                    "a .tar.gz of the MLX model directory (config.json, *.safetensors, "
                    "tokenizer files)"
                )
            )
            yield violation(
                loaded,
                d.path,
                ("artifacts", index, "url"),
                f"runtime {d.runtime} loads {what}; the artifact URL must end in {shown}",
            )


RULES: list[Rule] = [mlx_nodes, model_memory, model_artifact_kind]

PER_FILE: dict[Rule, FileRule] = {
    mlx_nodes: for_deployables(mlx_nodes_of),
    model_memory: for_deployables(model_memory_of),
    model_artifact_kind: for_deployables(model_artifact_kind_of),
}
