"""The packaged files agree with what an install gives and with the README's setup.

- Every ``Documentation=`` of the systemd units names a file that installing the package
  into ``/opt/fleetkeeper/venv`` (the units' own ``ExecStart`` prefix) really creates.
- ``packaging/agent.yaml.example`` talks to the reconciler the way the README's TLS proxy
  serves it (``https://<server_name>``, the port nginx listens on).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "packaging" / "systemd").glob("*.service"))
PREFIX = "/opt/fleetkeeper/venv"


def test_unit_documentation_points_at_installed_files(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "tests", "*.pyc"))
    root = tmp_path / "root"
    proc = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "install"]
        + ["--root", str(root), "--prefix", PREFIX, "--single-version-externally-managed"],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    assert UNITS
    for unit in UNITS:
        (line,) = re.findall(r"^Documentation=(.*)$", unit.read_text(), re.M)
        urls = line.split()
        assert urls, unit
        for url in urls:
            assert url.startswith(f"file://{PREFIX}/"), f"{unit.name}: {url}"
            installed = root / url.removeprefix("file:///")
            assert installed.is_file(), f"{unit.name}: {url} is not installed by the package"
        assert re.search(rf"^ExecStart={re.escape(PREFIX)}/bin/", unit.read_text(), re.M)


def test_agent_example_matches_the_readme_tls_setup() -> None:
    readme = (ROOT / "README.md").read_text()
    nginx = readme[readme.index("```nginx") :]
    nginx = nginx[: nginx.index("```", 3)]
    (host,) = re.findall(r"server_name\s+([^;\s]+);", nginx)
    (port,) = re.findall(r"listen\s+(\d+)\s+ssl;", nginx)
    (upstream,) = re.findall(r"proxy_pass\s+http://([^;]+);", nginx)
    example = yaml.safe_load((ROOT / "packaging" / "agent.yaml.example").read_text())
    servers = example["server"] if isinstance(example["server"], list) else [example["server"]]
    want = f"https://{host}" if port == "443" else f"https://{host}:{port}"
    assert servers == [want], f"agent.yaml.example says {servers}; the README serves {want}"
    assert upstream.endswith(":8700")  # the proxy forwards to the reconciler's own listen
