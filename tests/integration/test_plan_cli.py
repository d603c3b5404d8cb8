"""`fleetkeeper plan` on real repositories: JSON shape, batches, trust settings, no writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.cli import main
from tests.helpers.fleet import FleetRepo, fleet_files, nodes_named, release_doc
from tests.helpers.git import git
from tests.helpers.keys import Keys, signed_tag


@pytest.fixture
def fleet(tmp_path: Path) -> FleetRepo:
    files = fleet_files(
        nodes_named("gpu-1", "gpu-2", "gpu-3", "gpu-4"),
        [release_doc("infer", "1.0.0", canary=["gpu-3"], batch_size=2)],
    )
    return FleetRepo.create(tmp_path / "fleet", files)


def plan(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["plan", *args])
    return code, capsys.readouterr().out


def snapshot(path: Path) -> list[tuple[str, int, float]]:
    out = []
    for root, _, files in os.walk(path):
        for f in files:
            st = os.stat(os.path.join(root, f))
            out.append((os.path.join(root, f), st.st_size, st.st_mtime))
    return sorted(out)


def test_json_shape(fleet: FleetRepo, capsys: pytest.CaptureFixture[str]) -> None:
    bumped = fleet.change({"releases/infer/1.1.0.yaml": release_doc("infer", "1.1.0")}, "1.1.0")
    direct = fleet.direct_commit(
        {"releases/infer/2.0.0.yaml": release_doc("infer", "2.0.0")}, "direct"
    )
    code, out = plan(capsys, "--repo", str(fleet.path), "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert set(doc) == {"revision", "baseline", "approval", "refused", "nodes"}
    assert doc["baseline"] is None  # approval.baseline not set
    assert doc["revision"] == bumped
    assert doc["approval"] == {"kind": "merge", "ref": bumped, "signers": []}
    assert [r["revision"] for r in doc["refused"]] == [direct]
    assert "without a merge" in doc["refused"][0]["reason"]
    assert doc["nodes"]["gpu-1"] == {
        "workloads": [{"name": "infer", "kind": "process", "version": "1.1.0"}]
    }
    assert sorted(doc["nodes"]) == ["gpu-1", "gpu-2", "gpu-3", "gpu-4"]


def test_text_shows_batches_canary_first(
    fleet: FleetRepo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fleet.path / "nodes")  # --repo defaults to the repo around the cwd
    code, out = plan(capsys)
    assert code == 0
    assert f"Approved revision {fleet.head()}" in out
    assert "1. gpu-3" in out and "2. gpu-1, gpu-2" in out and "3. gpu-4" in out


def test_signed_tag_config_and_nothing_written(
    fleet: FleetRepo, keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "reconciler.yaml"
    config.write_text(
        "adminTokenFile: /nonexistent/admin.token\n"  # secrets are not read by plan
        f"repo: {fleet.path}\nstateDir: {state}\napproval:\n  mode: signed-tag\n"
        f"  allowedSigners: {keys.allowed_signers}\n  gpgKeyring: {keys.gpg_keyring}\n"
    )
    signed_tag(fleet.path, keys, "mallory", "deploy/evil")
    before = snapshot(fleet.path)
    code, out = plan(capsys, "--config", str(config), "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["revision"] is None and doc["nodes"] == {}
    assert "no valid allowed signature" in doc["refused"][0]["reason"]
    signed_tag(fleet.path, keys, "carol", "deploy/good")  # OpenPGP: needs the keyring import
    before = snapshot(fleet.path)
    code, out = plan(capsys, "--config", str(config), "--format", "json")
    doc = json.loads(out)
    assert doc["revision"] == fleet.head()
    assert doc["approval"] == {
        "kind": "tag",
        "ref": "refs/tags/deploy/good",
        "signers": ["carol@fleet.test"],
    }
    assert snapshot(fleet.path) == before  # nothing written into the repo ...
    assert not state.exists()  # ... nor into the reconciler's state


def test_invalid_approved_revision_exit_1(
    fleet: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = release_doc("infer", "1.1.0")
    del bad["artifacts"]
    sha = fleet.change({"releases/infer/1.1.0.yaml": bad}, "broken release")
    code, out = plan(capsys, "--repo", str(fleet.path), "--format", "json")
    doc = json.loads(out)
    assert code == 1 and doc["revision"] is None
    assert doc["refused"][-1]["revision"] == sha
    assert doc["refused"][-1]["reason"].startswith("Invalid: approved but fails validation")
    assert "releases/infer/1.1.0.yaml" in doc["refused"][-1]["reason"]


def test_not_a_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["plan", "--repo", str(tmp_path)])
    assert code == 1
    assert "not inside a git repository" in capsys.readouterr().err
    git(tmp_path, "init", "-q")  # an empty repository: no branch yet, nothing approved
    code, out = plan(capsys, "--repo", str(tmp_path), "--format", "json")
    assert code == 0 and json.loads(out)["revision"] is None


def test_node_workloads_match_select_desired_workloads() -> None:
    from reconciler.commands.plan import node_workloads, rollouts
    from reconciler.plan.select import desired_workloads, inventory
    from tests.helpers.fleet import node_doc, spec_of

    files = fleet_files(
        [
            *nodes_named("gpu-1", "gpu-2"),
            node_doc("mac-1", platform="darwin/arm64", roles=("inference", "coding")),
            node_doc("pi-1", platform="linux/arm64", roles=("coding",)),
        ],
        [
            release_doc("infer", "1.0.0"),
            release_doc("infer", "1.2.0", platforms=("linux/amd64",)),
            release_doc("coder", "0.3.0", roles=("coding",), canary=["pi-1"]),
        ],
    )
    spec = spec_of(files)
    nodes = inventory(spec)
    expected = {
        n: [{k: w[k] for k in ("name", "kind", "version")} for w in ws]
        for n, ws in desired_workloads(spec, nodes).items()
    }
    assert node_workloads(rollouts(spec, nodes), nodes) == expected
    assert expected["mac-1"] == [{"name": "coder", "kind": "process", "version": "0.3.0"}]


def test_preview_of_a_pull_request_head(
    fleet: FleetRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    approved = fleet.head()
    git(fleet.path, "checkout", "-q", "-b", "pr")
    fleet.write({"releases/infer/2.0.0.yaml": release_doc("infer", "2.0.0")})
    git(fleet.path, "add", "-A")
    git(fleet.path, "commit", "-q", "-m", "infer 2.0.0")
    pr = fleet.head()
    code, out = plan(capsys, "--repo", str(fleet.path), "--preview", "pr", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["revision"] == pr and doc["approval"] is None
    assert doc["nodes"]["gpu-1"]["workloads"][0]["version"] == "2.0.0"
    code, out = plan(capsys, "--repo", str(fleet.path), "--preview", "pr")
    assert f"Preview of {pr}" in out and f"the approved revision is {approved}" in out
    assert main(["plan", "--repo", str(fleet.path), "--preview", "nope"]) == 1
    assert "--preview nope: not a commit" in capsys.readouterr().err
