"""Cross-file rules for models (``models/<name>/<version>.yaml``, kind Model).

Same shape as ``reconciler.validate.rules``: each rule is ``(ctx) -> Iterable[Violation]``
and ``RULES`` lists them; ``PER_FILE`` maps each to its per-file form (see ``rules``). Add
model-specific rules here.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from reconciler.plan.select import NodeFacts
from reconciler.spec import Deployable
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


def model_memory(ctx: RuleContext) -> Iterator[Violation]:
    """A model file larger than a node's memoryGiB cannot be served there."""
    return ctx.each_deployable(model_memory_of)


def model_memory_of(scope: Scope, d: Deployable, loaded: LoadedFile) -> Iterator[Violation]:
    if not scope.nodes_complete or d.kind != "model":
        return
    for node in scope.targeted(d):
        art = d.artifact_for(node.platform)
        if art is None or art.size is None or node.memory_gib is None:
            continue
        if art.size > node.memory_gib * GIB:
            index = d.artifacts.index(art)
            yield violation(
                loaded,
                d.path,
                ("artifacts", index, "size"),
                f"model file is {art.size / GIB:.1f} GiB but node {node.name} has "
                f"memoryGiB {node.memory_gib:g}; narrow the targets or use a smaller "
                "quantisation",
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
