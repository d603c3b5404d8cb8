"""Offline installs for the packaging tests: fleetkeeper's own wheel, and wheels of its base
dependencies repacked from what the test venv already has installed.

Tests may not download anything, so ``pip install --no-index --find-links DIR`` is fed with
wheels rebuilt from installed distributions: each one's RECORD lists its files (relative
to site-packages), its dist-info carries the WHEEL tags and the metadata pip resolves on.
Only the base requirements' closure is repacked, so an install that needed the server
extra (or anything else left out of the base) fails to resolve instead of passing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name

from tests.helpers.git import REPO_ROOT, commit_all, init_repo

# What a source checkout needs to build the package (README is its long description).
SOURCE_PARTS = ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml", "reconciler", "agent")
SOURCE_PARTS += ("schema", "fleetkeeper_common")
_SKIPPED_DIST_INFO = ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")


def pip_env(*find_links: Path) -> dict[str, str]:
    """The environment of an offline pip: no config file, no index, only ``find_links``."""
    # no PYTHONPATH either: the installed package must be the one that runs
    drop = ("PIP_", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_NO_CACHE_DIR="1")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if find_links:
        env["PIP_FIND_LINKS"] = " ".join(str(p) for p in find_links)
    return env


def source_checkout(dest: Path) -> Path:
    """A git repo holding this tree's package sources as one commit (what a user clones)."""
    init_repo(dest)
    for part in SOURCE_PARTS:
        src = REPO_ROOT / part
        if src.is_dir():
            shutil.copytree(
                src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(src, dest / part)
    commit_all(dest, "fleetkeeper sources")
    return dest


def build_tools_dir() -> Path:
    """Wheels for pip's isolated build (setuptools), as virtualenv bundles them offline."""
    from virtualenv.seed.wheels.embed import BUNDLE_FOLDER

    return Path(BUNDLE_FOLDER)


def build_wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps`` of ``source``, its build backend taken from ``build_tools_dir``."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        env=pip_env(build_tools_dir()),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"pip wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = out.glob("fleetkeeper-*.whl")
    return wheel


def base_requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a built wheel that apply without extras on this interpreter."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        text = zf.read(name).decode()
    reqs = [
        Requirement(line.split(":", 1)[1].strip())
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def closure(reqs: list[Requirement]) -> list[metadata.Distribution]:
    """The installed distributions that satisfy ``reqs`` and, recursively, theirs."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(reqs)
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        dist = metadata.distribution(req.name)
        seen[key] = dist
        for line in dist.requires or []:
            sub = Requirement(line)
            if sub.marker is None or any(
                sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)
            ):
                todo.append(sub)
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repack(dist: metadata.Distribution, out: Path) -> Path:
    """An installed distribution as a wheel file in ``out`` (scripts are left out: pip
    writes them again from entry_points.txt)."""
    root = Path(str(dist.locate_file("")))
    files = [f for f in dist.files or [] if not str(f).startswith("..")]
    info_dir = next(str(f).split("/")[0] for f in files if ".dist-info/" in str(f))
    wheel_meta = (root / info_dir / "WHEEL").read_text()
    tags = [
        line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:")
    ]
    supported = {str(t) for t in sys_tags()}
    tag = next(t for t in tags if t in supported)
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    path = out / f"{name}-{dist.version}-{tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            rel = str(f)
            parts = Path(rel).parts
            if "__pycache__" in parts or rel.endswith(".pyc"):
                continue
            if rel.startswith(info_dir + "/") and parts[-1] in _SKIPPED_DIST_INFO:
                continue
            if not (root / rel).is_file():
                continue
            data = (root / rel).read_bytes()
            zf.writestr(rel, data)
            record.append(f"{rel},{_record_hash(data)},{len(data)}")
        record.append(f"{info_dir}/RECORD,,")
        zf.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return path


def offline_index(wheel: Path, out: Path) -> list[str]:
    """Fill ``out`` with ``wheel`` and its base dependencies repacked; their names."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(wheel, out / wheel.name)
    dists = closure(base_requirements(wheel))
    for dist in dists:
        repack(dist, out)
    return [canonicalize_name(d.metadata["Name"]) for d in dists]


@dataclass(frozen=True)
class OfflineIndex:
    """A source checkout (a git repo), its wheel, and a find-links folder for offline pip."""

    source: Path
    wheel: Path
    wheels: Path
    names: tuple[str, ...]  # the base dependencies repacked


def prepare(tmp: Path) -> OfflineIndex:
    source = source_checkout(tmp / "src")
    wheel = build_wheel(source, tmp / "dist")
    names = offline_index(wheel, tmp / "wheels")
    return OfflineIndex(source, tmp / "wheels" / wheel.name, tmp / "wheels", tuple(names))


def fresh_venv(path: Path) -> Path:
    """A new virtualenv with no site packages of its own; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, env=pip_env())
    return path / "bin" / "python"
