"""What a .gguf file's header says about serving it, read with the ``gguf`` package (the
llama.cpp project's own reader; it maps the file and reads only the header and the tensor
index). ``gguf`` comes with the ``authoring`` extra."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from reconciler.errors import FleetkeeperError
from reconciler.spec import GgufFacts

AUTHORING_HINT = "pip install 'fleetkeeper[authoring]'"


class GgufError(FleetkeeperError):
    reason = "GgufError"


def _value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_facts(path: Path) -> GgufFacts:
    try:
        import gguf
    except ImportError as exc:
        raise GgufError(f"reading GGUF headers needs the gguf package: {AUTHORING_HINT}") from exc
    try:
        reader = gguf.GGUFReader(str(path))
    except OSError as exc:
        raise GgufError(f"cannot read {path}: {exc.strerror}") from exc
    except (ValueError, KeyError, IndexError) as exc:
        raise GgufError(f"{path}: not a GGUF file ({exc})") from exc
    arch = _value(reader, "general.architecture")
    if not isinstance(arch, str):
        raise GgufError(f"{path}: the GGUF header has no general.architecture")

    def need(key: str) -> int:
        value = _value(reader, f"{arch}.{key}")
        if not isinstance(value, int):
            raise GgufError(f"{path}: the GGUF header has no {arch}.{key}")
        return value

    heads = need("attention.head_count")
    kv_heads = _value(reader, f"{arch}.attention.head_count_kv")
    head_dim = need("embedding_length") // heads
    key_length = _value(reader, f"{arch}.attention.key_length")
    value_length = _value(reader, f"{arch}.attention.value_length")
    context = _value(reader, f"{arch}.context_length")
    return GgufFacts(
        parameters=sum(int(t.n_elements) for t in reader.tensors),
        layers=need("block_count"),
        kv_heads=kv_heads if isinstance(kv_heads, int) else heads,
        key_length=key_length if isinstance(key_length, int) else head_dim,
        value_length=value_length if isinstance(value_length, int) else head_dim,
        quantization=_quantization(gguf, reader),
        context_length=context if isinstance(context, int) else None,
        architecture=arch,
    )


def _quantization(gguf: Any, reader: Any) -> str | None:
    """general.file_type's name (MOSTLY_Q4_K_M -> Q4_K_M), else the commonest tensor type."""
    file_type = _value(reader, "general.file_type")
    if isinstance(file_type, int):
        try:
            name: str = gguf.LlamaFileType(file_type).name
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return types.most_common(1)[0][0] if types else None
