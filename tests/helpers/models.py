"""Tiny real models made by the tests: no hub, no downloads.

``write_gguf`` writes a random-weight llama-architecture GGUF with a byte-level BPE vocab
that llama.cpp loads and serves; ``write_mlx_model`` saves a random-weight MLX llama model
directory (config.json, model.safetensors, tokenizer.json) that ``mlx_lm.server`` serves;
``pack_mlx_model`` turns such a directory into the .tar.gz artifact the mlx-lm runtime
expects. ``corrupt_gguf`` keeps the GGUF magic but garbles the rest, so the checksum of the
garbage can be published in a release and the runtime itself must reject the file.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# A small ASCII vocab keeps the files a few hundred KB: every byte is a token (GPT-2's
# byte-to-unicode mapping, as llama.cpp's "gpt2" tokenizer expects) plus a few merges.
_SPECIALS = ("<s>", "</s>")


@dataclass(frozen=True)
class ModelFile:
    path: Path
    sha256: str
    size: int


def describe(path: Path) -> ModelFile:
    """Path, SHA-256 and size of a model artifact."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return ModelFile(path=path, sha256=h.hexdigest(), size=path.stat().st_size)


def _byte_tokens() -> list[str]:
    """GPT-2 bytes_to_unicode: every byte as a printable unicode character, in byte order."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs, strict=True))
    return [chr(table[b]) for b in range(256)]


_MERGES = ("Ġ t", "h e", "Ġ a", "i n")


def _vocab() -> tuple[list[str], list[str]]:
    tokens = _byte_tokens()
    for m in _MERGES:
        tokens.append(m.replace(" ", ""))
    return tokens + list(_SPECIALS), list(_MERGES)


def write_gguf(
    path: Path,
    *,
    seed: int = 0,
    embedding: int = 64,
    layers: int = 2,
    heads: int = 4,
    feed_forward: int = 128,
    context: int = 512,
    name: str = "tiny-llama",
) -> ModelFile:
    """A random-weight llama GGUF (f32); the defaults give ~500 KB. Different seeds, different
    bytes (so two versions of "the same" model have different SHA-256s). One function (~60
    lines): the tensors of the file, in the order the GGUF writer needs them."""
    import gguf

    tokens, merges = _vocab()
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context)
    writer.add_embedding_length(embedding)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(embedding // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    types = [gguf.TokenType.NORMAL] * (n_vocab - len(_SPECIALS))
    writer.add_token_types(types + [gguf.TokenType.CONTROL] * len(_SPECIALS))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(n_vocab - 2)
    writer.add_eos_token_id(n_vocab - 1)
    writer.add_add_bos_token(True)
    # ggml's shapes are (columns, rows); numpy's are the reverse.
    writer.add_tensor("token_embd.weight", w(n_vocab, embedding))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(embedding, np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"blk.{i}.{t}.weight", w(embedding, embedding))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(embedding, np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", w(feed_forward, embedding))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", w(feed_forward, embedding))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", w(embedding, feed_forward))
    writer.add_tensor("output_norm.weight", np.ones(embedding, np.float32))
    writer.add_tensor("output.weight", w(n_vocab, embedding))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return describe(path)


def write_large_gguf(path: Path, *, mib: int = 200, seed: int = 0) -> ModelFile:
    """A random-weight GGUF of about ``mib`` MiB (for the swap benchmark)."""
    embedding, feed_forward = 1024, 4096
    per_layer = (4 * embedding * embedding + 3 * embedding * feed_forward) * 4
    layers = max(1, round(mib * (1 << 20) / per_layer))
    return write_gguf(
        path,
        seed=seed,
        embedding=embedding,
        layers=layers,
        heads=16,
        feed_forward=feed_forward,
        name="large-llama",
    )


def corrupt_gguf(path: Path, *, seed: int = 0) -> ModelFile:
    """A file that starts like a GGUF (magic + version) but is garbage after that."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = rng.integers(0, 256, size=64 * 1024, dtype=np.uint8).tobytes()
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + body)
    return describe(path)


def _tokenizer_json() -> dict[str, object]:
    tokens, merges = _vocab()
    n = len(tokens)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": n - len(_SPECIALS) + i,
                "content": s,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for i, s in enumerate(_SPECIALS)
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ") for m in merges],
        },
    }


def write_mlx_model(
    directory: Path,
    *,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 128,
) -> Path:
    """A random-weight MLX llama model directory that ``mlx_lm`` loads offline."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    tokens, _ = _vocab()
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "rms_norm_eps": 1e-5,
        "vocab_size": len(tokens),
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": len(tokens) - 2,
        "eos_token_id": len(tokens) - 1,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]  # mlx-lm is untyped
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(directory / "model.safetensors"), weights)
    (directory / "config.json").write_text(json.dumps(config, indent=1), "utf-8")
    (directory / "tokenizer.json").write_text(json.dumps(_tokenizer_json()), "utf-8")
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": _SPECIALS[0],
        "eos_token": _SPECIALS[1],
        "model_max_length": 512,
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config), "utf-8")
    return directory


def pack_mlx_model(directory: Path, archive: Path) -> ModelFile:
    """The mlx-lm artifact: a .tar.gz whose members are the model files at the top level."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(directory.iterdir()):
            tar.add(item, arcname=item.name)
    return describe(archive)
