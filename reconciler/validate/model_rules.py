"""Cross-file rules for models (``models/<name>/<version>.yaml``, kind Model).

Same shape as ``reconciler.validate.rules``: each rule is ``(ctx) -> Iterable[Violation]``
and ``RULES`` lists them. Add model-specific rules here.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

from reconciler.plan.select import NodeFacts
from reconciler.validate.report import Violation
from reconciler.validate.rules import Rule, RuleContext

GIB = 1024**3


def _mlx_capable(node: NodeFacts) -> bool:
    """MLX runs on Apple Silicon with Metal, or on Linux with the CPU backend when the
    node opts in with the label mlx-cpu: "true"."""
    if node.platform == "darwin/arm64" and node.accelerator == "metal":
        return True
    return node.platform.startswith("linux/") and node.labels.get("mlx-cpu") == "true"


def mlx_nodes(ctx: RuleContext) -> Iterator[Violation]:
    if not ctx.nodes_complete:
        return
    for d, _ in ctx.deployables():
        if d.kind != "model" or d.runtime != "mlx-lm":
            continue
        unfit = [n for n in ctx.targeted(d) if not _mlx_capable(n)]
        if unfit:
            shown = ", ".join(f"{n.name} ({n.platform}, {n.accelerator})" for n in unfit)
            yield ctx.violation(
                d.path,
                ("runtime",),
                f"runtime mlx-lm runs only on darwin/arm64 nodes with accelerator metal, or "
                f'Linux nodes labelled mlx-cpu: "true"; the targets select {shown}',
                related=[ctx.node_path(n.name) for n in unfit],
            )


def model_memory(ctx: RuleContext) -> Iterator[Violation]:
    """A model file larger than a node's memoryGiB cannot be served there."""
    if not ctx.nodes_complete:
        return
    for d, _ in ctx.deployables():
        if d.kind != "model":
            continue
        for node in ctx.targeted(d):
            art = d.artifact_for(node.platform)
            if art is None or art.size is None or node.memory_gib is None:
                continue
            if art.size > node.memory_gib * GIB:
                index = d.artifacts.index(art)
                yield ctx.violation(
                    d.path,
                    ("artifacts", index, "size"),
                    f"model file is {art.size / GIB:.1f} GiB but node {node.name} has "
                    f"memoryGiB {node.memory_gib:g}; narrow the targets or use a smaller "
                    "quantisation",
                    related=[ctx.node_path(node.name)],
                )


# What each runtime loads: llama.cpp one .gguf file; mlx-lm a model directory, shipped as a
# gzip'd tarball that the agent unpacks.
ARTIFACT_SUFFIXES = {"llama-cpp": (".gguf",), "mlx-lm": (".tar.gz", ".tgz")}


def model_artifact_kind(ctx: RuleContext) -> Iterator[Violation]:
    """A llama-cpp model is a single .gguf file; an mlx-lm model a .tar.gz of its directory."""
    for d, _ in ctx.deployables():
        if d.kind != "model" or d.runtime not in ARTIFACT_SUFFIXES:
            continue
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
                yield ctx.violation(
                    d.path,
                    ("artifacts", index, "url"),
                    f"runtime {d.runtime} loads {what}; the artifact URL must end in {shown}",
                )


RULES: list[Rule] = [mlx_nodes, model_memory, model_artifact_kind]
