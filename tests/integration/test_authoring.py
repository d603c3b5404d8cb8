"""``fleetkeeper release new`` and ``fleetkeeper model new`` on a copy of the example fleet:
digests of real files (local, or streamed from a real HTTP server on 127.0.0.1), fields
copied from the previous version, GGUF headers of models the tests write, and the memory
check with the KV cache at the configured context."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.artifacts import ArtifactServer
from tests.helpers.git import EXAMPLE_FLEET, copy_tree
from tests.helpers.models import write_gguf


def fk(fleet: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *argv],
        cwd=fleet,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    return copy_tree(EXAMPLE_FLEET, tmp_path / "fleet")


def allow_http(fleet: Path) -> None:
    text = (fleet / "fleet.yaml").read_text()
    (fleet / "fleet.yaml").write_text(
        text.replace("allowInsecureURLs: false", "allowInsecureURLs: true")
    )


def test_release_new_from_local_files_copies_the_previous_release(
    fleet: Path, tmp_path: Path
) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    amd, arm = dist / "ca-amd64.tar.gz", dist / "ca-arm64.tar.gz"
    amd.write_bytes(os.urandom(3000))
    arm.write_bytes(os.urandom(5000))
    url = "https://downloads.example.org/coding-agent/1.4.0"
    proc = fk(
        fleet,
        "release", "new", "coding-agent", "1.4.0",
        "--artifact", f"linux/amd64={url}/ca-amd64.tar.gz@{amd}",
        "--artifact", f"darwin/arm64={url}/ca-arm64.tar.gz@{arm}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = fleet / "releases/coding-agent/1.4.0.yaml"
    doc, previous = load(written), load(fleet / "releases/coding-agent/1.3.0.yaml")
    assert doc["version"] == "1.4.0"
    assert doc["artifacts"] == [
        {
            "platform": "linux/amd64",
            "url": f"{url}/ca-amd64.tar.gz",
            "sha256": hashlib.sha256(amd.read_bytes()).hexdigest(),
            "size": 3000,
        },
        {
            "platform": "darwin/arm64",
            "url": f"{url}/ca-arm64.tar.gz",
            "sha256": hashlib.sha256(arm.read_bytes()).hexdigest(),
            "size": 5000,
        },
    ]
    for key in ("run", "health", "versionProbe", "targets", "rollout"):
        assert doc[key] == previous[key], key
    assert written.read_text().startswith("# Written by `fleetkeeper release new` from 1.3.0")
    assert fk(fleet, "validate").returncode == 0


def test_release_new_downloads_the_url_to_hash_it(fleet: Path, tmp_path: Path) -> None:
    allow_http(fleet)
    served = tmp_path / "served"
    served.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    (served / "ia.tar.gz").write_bytes(payload)
    with ArtifactServer(served) as server:
        proc = fk(
            fleet,
            "release", "new", "inference-agent", "0.9.0",
            "--artifact", f"linux/amd64={server.url('ia.tar.gz')}",
            "--artifact", f"darwin/arm64={server.url('ia.tar.gz')}",
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert server.requests["ia.tar.gz"] == 2
    (art, _) = load(fleet / "releases/inference-agent/0.9.0.yaml")["artifacts"]
    assert art["sha256"] == hashlib.sha256(payload).hexdigest()
    assert art["size"] == len(payload)


def test_release_new_refuses_what_would_be_invalid_and_writes_nothing(
    fleet: Path, tmp_path: Path
) -> None:
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"x" * 10)
    # coding-agent targets darwin/arm64 nodes too: an amd64-only release leaves them out
    proc = fk(
        fleet, "release", "new", "coding-agent", "1.4.0",
        "--artifact", f"linux/amd64=https://dl.example.org/a.tar.gz@{f}",
    )  # fmt: skip
    assert proc.returncode == 1
    assert "releases/coding-agent/1.4.0.yaml:" in proc.stdout
    assert "darwin/arm64" in proc.stdout
    assert "not written" in proc.stderr
    assert not (fleet / "releases/coding-agent/1.4.0.yaml").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["coding-agent", "1.3.0", "--artifact", "linux/amd64=https://x/a.tar.gz@{f}"], "exists"),
        (["coding-agent", "1.4.0", "--artifact", "https://x/a.tar.gz"], "PLATFORM=URL[@FILE]"),
        (["coding-agent", "1.4.0", "--artifact", "linux/amd64=https://x/a@missing"], "no such"),
        (["new-agent", "1.0.0", "--artifact", "linux/amd64=https://x/a.tar.gz@{f}"], "by hand"),
        (["coding-agent", "1.4.0", "--artifact", "linux/amd64=http://127.0.0.1:1/a"], "download"),
    ],
)
def test_release_new_bad_input_says_what_and_where(
    fleet: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"x")
    before = sorted(p.name for p in (fleet / "releases/coding-agent").iterdir())
    proc = fk(fleet, "release", "new", *[a.replace("{f}", str(f)) for a in argv])
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in (fleet / "releases/coding-agent").iterdir()) == before


def tiny_parameters(vocab: int, emb: int = 64, layers: int = 2, ff: int = 128) -> int:
    """Elements of every tensor write_gguf writes (embeddings, blocks, output)."""
    block = emb + 4 * emb * emb + emb + 3 * ff * emb
    return 2 * vocab * emb + layers * block + emb


def test_model_new_reads_the_gguf_header_and_prints_the_estimate(
    fleet: Path, tmp_path: Path
) -> None:
    gguf_file = write_gguf(tmp_path / "tiny.gguf", context=512)
    proc = fk(
        fleet, "model", "new", "qwen2.5-7b-instruct", "1.1.0", "--file", str(gguf_file.path),
        "--url", "https://dl.example.org/qwen/tiny.gguf",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(fleet / "models/qwen2.5-7b-instruct/1.1.0.yaml")
    previous = load(fleet / "models/qwen2.5-7b-instruct/1.0.0.yaml")
    assert doc["artifacts"] == [
        {
            "platform": "any",
            "url": "https://dl.example.org/qwen/tiny.gguf",
            "sha256": gguf_file.sha256,
            "size": gguf_file.size,
        }
    ]
    for key in ("runtime", "args", "health", "targets", "rollout"):
        assert doc[key] == previous[key], key
    vocab = 256 + 4 + 2  # bytes, merges, specials (tests.helpers.models)
    assert doc["gguf"] == {
        "architecture": "llama",
        "parameters": tiny_parameters(vocab),
        "quantization": "F32",
        "contextLength": 512,
        "layers": 2,
        "kvHeads": 4,
        "keyLength": 16,
        "valueLength": 16,
    }
    # KV cache: 2 layers x 4 heads x (16 + 16) x 2 bytes per token, at contextSize 8192
    kv = 2 * 4 * 32 * 2 * 8192
    mib = 1024**2
    want = (
        f"memory on gpu-1: {(gguf_file.size + kv) / mib:.1f} MiB (weights "
        f"{gguf_file.size / mib:.1f} MiB + KV cache {kv / mib:.1f} MiB at contextSize 8192): "
        "fits in memoryGiB 24"
    )
    assert want in proc.stderr
    assert f"{tiny_parameters(vocab):,} parameters" in proc.stderr
    assert fk(fleet, "validate").returncode == 0


def test_model_new_blocks_a_context_that_does_not_fit(fleet: Path, tmp_path: Path) -> None:
    """The file is tiny, but the KV cache at the configured context is not: the check that
    weighed the file alone would have passed this model."""
    gguf_file = write_gguf(tmp_path / "tiny.gguf")
    base = load(fleet / "models/qwen2.5-7b-instruct/1.0.0.yaml")
    base["args"]["contextSize"] = 16_000_000  # 512 bytes per token: ~7.6 GiB of KV cache
    base["targets"] = {"nodes": ["vps-1"]}  # memoryGiB 4
    base["version"] = "1.0.0"
    (fleet / "models/tiny").mkdir()
    base["name"] = "tiny"
    (fleet / "models/tiny/1.0.0.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    proc = fk(
        fleet, "model", "new", "tiny", "1.1.0", "--file", str(gguf_file.path),
        "--url", "https://dl.example.org/tiny.gguf",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "models/tiny/1.1.0.yaml:" in proc.stdout
    assert "but node vps-1 has memoryGiB 4" in proc.stdout
    assert "at contextSize 16000000" in proc.stdout
    assert "memory on vps-1:" in proc.stderr and "does NOT fit" in proc.stderr
    assert not (fleet / "models/tiny/1.1.0.yaml").exists()


def test_model_new_without_previous_version_and_not_a_gguf(fleet: Path, tmp_path: Path) -> None:
    gguf_file = write_gguf(tmp_path / "tiny.gguf")
    proc = fk(
        fleet, "model", "new", "tiny", "1.0.0", "--file", str(gguf_file.path),
        "--url", "https://dl.example.org/tiny.gguf",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = load(fleet / "models/tiny/1.0.0.yaml")
    assert doc["runtime"] == "llama-cpp" and doc["args"] == {"port": 8081}
    assert "memory on vps-1:" in proc.stderr  # no targets yet: every node
    garbage = tmp_path / "not.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(64))
    bad = fk(
        fleet, "model", "new", "tiny", "1.1.0", "--file", str(garbage),
        "--url", "https://dl.example.org/tiny.gguf",
    )  # fmt: skip
    assert bad.returncode == 1
    assert f"{garbage}: not a GGUF file" in bad.stderr
    assert not (fleet / "models/tiny/1.1.0.yaml").exists()
