"""Small fleet repos as ``{path: text}`` for validation tests, written out as YAML text so
line and column numbers in expected messages can be read off the strings here."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from reconciler.validate import Report, validate_files

SHA_A = "a" * 64
SHA_B = "b" * 64
DEFAULT_COMMAND = '[bin/infer, --port, "${node.labels.port}"]'

FLEET = """\
apiVersion: fleetkeeper/v1
kind: Fleet
name: lab
"""


def node(name: str, platform: str = "linux/amd64", accelerator: str = "cuda", **extra: str) -> str:
    roles = extra.pop("roles", "[inference]")
    labels = extra.pop("labels", '{port: "8080"}')
    memory = extra.pop("memory", "")
    return (
        "apiVersion: fleetkeeper/v1\n"
        "kind: Node\n"
        f"name: {name}\n"
        f"platform: {platform}\n"
        f"accelerator: {accelerator}\n"
        f"roles: {roles}\n"
        f"labels: {labels}\n" + (f"memoryGiB: {memory}\n" if memory else "")
    )


def release(agent: str = "infer", version: str = "1.0.0", *, tail: str = "", **over: str) -> str:
    """A valid release. Line numbers: 1 apiVersion, 2 kind, 3 agent, 4 version,
    5 artifacts:, 6-9 first artifact (platform, url, sha256, size), 10 run:, 11 command,
    12 targets:, 13 roles; ``tail`` is appended from line 14."""
    url = over.get("url", f"https://dl.example.org/{agent}-{version}.tar.gz")
    platform = over.get("platform", "linux/amd64")
    return (
        "apiVersion: fleetkeeper/v1\n"
        "kind: Release\n"
        f"agent: {over.get('agent_field', agent)}\n"
        f"version: {over.get('version_field', version)}\n"
        "artifacts:\n"
        f"  - platform: {platform}\n"
        f"    url: {url}\n"
        f"    sha256: {over.get('sha256', SHA_A)}\n"
        f"    size: {over.get('size', '1024')}\n"
        "run:\n"
        f"  command: {over.get('command', DEFAULT_COMMAND)}\n"
        "targets:\n"
        f"  roles: {over.get('roles', '[inference]')}\n" + tail
    )


def basic_fleet() -> dict[str, str]:
    """fleet.yaml, one CUDA node gpu-1, one release of ``infer`` that targets it."""
    return {
        "fleet.yaml": FLEET,
        "nodes/gpu-1.yaml": node("gpu-1"),
        "releases/infer/1.0.0.yaml": release(),
    }


def run(files: Mapping[str, str | bytes]) -> Report:
    return validate_files({p: t.encode() if isinstance(t, str) else t for p, t in files.items()})


def lines(report: Report) -> list[str]:
    return [str(v) for v in report.violations]


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root
