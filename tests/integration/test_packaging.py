"""Lean installs, for real: the built wheel in a fresh venv with its base dependencies only.

``pip install fleetkeeper`` must give the agent, the validator and the CLI client and no web
server; ``fleetkeeper serve`` without the server extra says what to install.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.git import EXAMPLE_FLEET, copy_tree, fleet_repo_from_example
from tests.helpers.wheels import fresh_venv, pip_env, prepare

SERVER_ONLY = ("starlette", "uvicorn", "uvloop", "httptools", "watchfiles", "prometheus-client")


@dataclass(frozen=True)
class LeanInstall:
    bin: Path
    installed: frozenset[str]


@pytest.fixture(scope="module")
def lean(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeanInstall]:
    tmp = tmp_path_factory.mktemp("lean")
    index = prepare(tmp)
    python = fresh_venv(tmp / "venv")
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(index.wheel)],
        env=pip_env(index.wheels),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"offline install failed:\n{proc.stdout}\n{proc.stderr}"
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        env=pip_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = frozenset(line.split("==")[0].lower().replace("_", "-") for line in listed.split())
    yield LeanInstall(python.parent, names)


def _run(
    lean: LeanInstall, *argv: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(lean.bin / argv[0]), *argv[1:]],
        env=pip_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_base_install_has_no_web_server(lean: LeanInstall) -> None:
    assert "fleetkeeper" in lean.installed
    assert {"httpx", "pygit2", "pyyaml", "rich"} <= lean.installed
    assert lean.installed.isdisjoint(SERVER_ONLY), lean.installed & set(SERVER_ONLY)


def test_validate_works_without_server_extra(lean: LeanInstall, tmp_path: Path) -> None:
    fleet = copy_tree(EXAMPLE_FLEET, tmp_path / "fleet")
    ok = _run(lean, "fleetkeeper", "validate", cwd=fleet)
    assert ok.returncode == 0, ok.stderr
    (fleet / "nodes" / "gpu-1.yaml").write_text("apiVersion: fleetkeeper/v1\nkind: Node\n")
    bad = _run(lean, "fleetkeeper", "validate", cwd=fleet)
    assert bad.returncode == 1
    assert "nodes/gpu-1.yaml:" in bad.stdout


def test_agent_and_client_commands_work_without_server_extra(lean: LeanInstall) -> None:
    agent = _run(lean, "fleetkeeper-agent", "run", "--help")
    assert agent.returncode == 0, agent.stderr
    assert "--config" in agent.stdout
    for command in ("status", "plan", "audit"):
        client = _run(lean, "fleetkeeper", command, "--help")
        assert client.returncode == 0, f"{command}: {client.stderr}"


def test_client_paths_run_without_server_extra(lean: LeanInstall, tmp_path: Path) -> None:
    """Not only --help: plan, schema export and release new import no server module."""
    fleet = fleet_repo_from_example(tmp_path / "fleet")
    plan = _run(lean, "fleetkeeper", "plan", "--preview", "HEAD", "--format", "markdown", cwd=fleet)
    assert plan.returncode == 0, plan.stderr
    assert "| coding-agent (process) | 1.3.0 +config " in plan.stdout
    exported = _run(lean, "fleetkeeper", "schema", "export", str(tmp_path / "schemas"))
    assert exported.returncode == 0, exported.stderr
    artifact = tmp_path / "a.tar.gz"
    artifact.write_bytes(b"build")
    url = "https://dl.example.org/ia-0.9.0.tar.gz"
    release = _run(
        lean, "fleetkeeper", "release", "new", "inference-agent", "0.9.0",
        "--artifact", f"linux/amd64={url}@{artifact}",
        "--artifact", f"darwin/arm64={url}@{artifact}",
        cwd=fleet,
    )  # fmt: skip
    assert release.returncode == 0, release.stderr
    model = _run(
        lean, "fleetkeeper", "model", "new", "m", "1.0.0", "--file", str(artifact),
        "--url", "https://dl.example.org/m.gguf", cwd=fleet,
    )  # fmt: skip
    assert model.returncode == 1
    assert "pip install 'fleetkeeper[authoring]'" in model.stderr


def test_serve_without_server_extra_says_what_to_install(lean: LeanInstall, tmp_path: Path) -> None:
    config = tmp_path / "reconciler.yaml"
    config.write_text(f"repo: {tmp_path}\nstateDir: {tmp_path / 'state'}\n")
    proc = _run(lean, "fleetkeeper", "serve", "--config", str(config))
    assert proc.returncode == 1
    assert "pip install 'fleetkeeper[server]'" in proc.stderr
    assert "starlette" in proc.stderr
    assert "Traceback" not in proc.stderr
