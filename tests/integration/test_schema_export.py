"""Schemas every tool can use: ``fleetkeeper schema export`` and the real check-jsonschema.

check-jsonschema knows nothing of fleetkeeper; given an exported file it must validate the
example fleet repo with no extra setup (no network, no registry), and catch a bad file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.git import EXAMPLE_FLEET, REPO_ROOT, copy_tree

CHECK_JSONSCHEMA = str(Path(sys.executable).parent / "check-jsonschema")
SETTINGS = EXAMPLE_FLEET / ".vscode" / "settings.json"


def fleetkeeper(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", *argv], cwd=cwd, capture_output=True, text=True
    )


def check(schemafile: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    assert files, f"no files for {schemafile}"
    return subprocess.run(
        [CHECK_JSONSCHEMA, "--schemafile", str(schemafile), *map(str, files)],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas") / "nested" / "schemas"
    proc = fleetkeeper("schema", "export", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "release.schema.json").is_file()
    return out


def editor_mappings() -> dict[str, list[str]]:
    mappings: dict[str, list[str]] = json.loads(SETTINGS.read_text())["yaml.schemas"]
    return mappings


def test_exported_schemas_are_self_contained(exported: Path) -> None:
    for path in exported.glob("*.schema.json"):
        doc = json.loads(path.read_text())
        assert doc["$id"] == f"urn:fleetkeeper:schema:{path.name.removesuffix('.schema.json')}"
        refs = [r for r in _refs(doc) if not r.startswith("#")]
        assert refs == [], f"{path.name} refers outside itself: {refs}"


def _refs(value: object) -> list[str]:
    if isinstance(value, dict):
        own = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return own + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def test_check_jsonschema_validates_the_example_fleet(exported: Path) -> None:
    """Every glob of the editor settings, checked by check-jsonschema with its schema."""
    for schema_rel, globs in editor_mappings().items():
        files = sorted(f for g in globs for f in EXAMPLE_FLEET.glob(g))
        proc = check(exported / Path(schema_rel).name, files)
        assert proc.returncode == 0, f"{schema_rel}:\n{proc.stdout}{proc.stderr}"


def test_check_jsonschema_catches_a_bad_file(exported: Path, tmp_path: Path) -> None:
    fleet = copy_tree(EXAMPLE_FLEET, tmp_path / "fleet")
    release = fleet / "releases" / "coding-agent" / "1.3.0.yaml"
    release.write_text(release.read_text().replace("sha256: 2b5f", "sha256: zz5f"))
    proc = check(exported / "release.schema.json", [release])
    assert proc.returncode == 1
    assert "1.3.0.yaml" in proc.stdout
    assert "artifacts[0].sha256" in proc.stdout or "$.artifacts[0].sha256" in proc.stdout


def test_example_fleet_ships_the_current_export(exported: Path) -> None:
    """The example repo's .schemas/ (what its .vscode/settings.json points at) is what
    `fleetkeeper schema export` writes today: regenerate it when a schema changes."""
    shipped = EXAMPLE_FLEET / ".schemas"
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in exported.iterdir())
    for path in exported.iterdir():
        assert (shipped / path.name).read_text() == path.read_text(), (
            f"example-fleet-repo/.schemas/{path.name} is stale: run "
            "`fleetkeeper schema export example-fleet-repo/.schemas`"
        )
    for schema_rel in editor_mappings():
        assert (EXAMPLE_FLEET / schema_rel).is_file(), schema_rel


def test_yaml_language_server_modeline_resolves(exported: Path, tmp_path: Path) -> None:
    """The README's `# yaml-language-server: $schema=` line names a file relative to the
    YAML file: the exported schema must be usable from there as it is."""
    readme = (REPO_ROOT / "README.md").read_text()
    line = "# yaml-language-server: $schema=../.schemas/node.schema.json"
    assert line in readme
    fleet = copy_tree(EXAMPLE_FLEET, tmp_path / "fleet")
    shutil.rmtree(fleet / ".schemas")
    assert fleetkeeper("schema", "export", ".schemas", cwd=fleet).returncode == 0
    node = fleet / "nodes" / "gpu-1.yaml"
    node.write_text(line + "\n" + node.read_text())
    target = (node.parent / line.split("$schema=", 1)[1]).resolve()
    assert check(target, [node]).returncode == 0
    assert fleetkeeper("validate", cwd=fleet).returncode == 0  # the comment line is harmless
