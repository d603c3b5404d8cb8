"""Schema violations: each placed at the offending YAML node, with a message for people."""

from __future__ import annotations

import pytest

import schema as schemas
from reconciler.validate import Report, Violation, is_fleet_file
from schema import bundled
from tests.helpers.fleetfiles import FLEET, SHA_A, basic_fleet, lines, node, release, run

P = "releases/infer/1.0.0.yaml"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            release(sha256="ABC"),
            f"{P}:8:13: artifacts[0].sha256: 'ABC' is not a SHA-256 digest: 64 lowercase hex "
            "characters",
            id="sha256",
        ),
        pytest.param(
            release(sha256="A" * 64),
            f"{P}:8:13: artifacts[0].sha256: '{'A' * 56}... is not a SHA-256 digest",
            id="sha256-uppercase",
        ),
        pytest.param(
            release(version_field="1.0"),
            f'{P}:4:10: version: expected a string, got number 1.0 (quote it: "1.0")',
            id="version-float",
        ),
        pytest.param(
            release(version_field="v1.0.0"),
            f"{P}:4:10: version: 'v1.0.0' is not a semantic version: MAJOR.MINOR.PATCH",
            id="semver",
        ),
        pytest.param(
            release(platform="linux/x86_64"),
            f"{P}:6:15: artifacts[0].platform: 'linux/x86_64' is not an os/arch platform: "
            "linux or darwin, then amd64 or arm64 (such as linux/amd64)",
            id="platform",
        ),
        pytest.param(
            release(platform="any"),
            f"{P}:6:15: artifacts[0].platform: 'any' is not an os/arch platform",
            id="platform-any-only-for-models",
        ),
        pytest.param(
            release(tail="rollout:\n  batchSize: 150%\n"),
            f"{P}:15:14: rollout.batchSize: '150%' is not a batch size: a count of nodes (1 or "
            'more), or a percentage of the targeted nodes from 1% to 100% such as "25%"',
            id="percentage",
        ),
        pytest.param(
            release(tail="rollout:\n  batchSize: 0\n"),
            f"{P}:15:14: rollout.batchSize: 0 is not a batch size",
            id="batch-zero",
        ),
        pytest.param(
            release(tail="rollout:\n  onFailure: retry\n"),
            f"{P}:15:14: rollout.onFailure: 'retry' is not one of: halt, rollback",
            id="enum",
        ),
        pytest.param(
            release(tail="rollout:\n  soakSeconds: -5\n"),
            f"{P}:15:16: rollout.soakSeconds: -5 is less than the minimum of 0",
            id="minimum",
        ),
        pytest.param(
            release(tail="rolout:\n  batchSize: 1\n"),
            f"{P}:14:1: unknown field 'rolout'; did you mean 'rollout'?",
            id="typo-top-level",
        ),
        pytest.param(
            release().replace("    sha256:", "    sha265:"),
            f"{P}:8:5: unknown field 'sha265' in artifacts[0]; did you mean 'sha256'?",
            id="typo-nested",
        ),
        pytest.param(
            release().replace("run:\n  command: [", "run:\n  comand: ["),
            f"{P}:11:3: missing required field 'command' in run",
            id="required-nested",
        ),
        pytest.param(
            release().replace("kind: Release\n", "kind: Relase\n"),
            f"{P}:2:7: kind: files in releases/ must be kind Release, got 'Relase'",
            id="kind-typo",
        ),
        pytest.param(
            release(tail="targets2: x\n").replace("apiVersion: fleetkeeper/v1\n", ""),
            f"{P}:1:1: missing required field 'apiVersion'",
            id="required-top",
        ),
        pytest.param(
            release(tail="health:\n  http: ftp://x\n"),
            f"{P}:15:9: health.http: 'ftp://x' is not an http:// or https:// URL",
            id="health-url",
        ),
        pytest.param(
            release().replace("    size: 1024\n", ""),
            f"{P}:6:5: missing required field 'size' in artifacts[0]",
            id="size-required",
        ),
        pytest.param(
            release().replace("    size: 1024\n", "    size: 1024\n    unpackedSize: 0\n"),
            f"{P}:10:19: artifacts[0].unpackedSize: 0 is less than the minimum of 1",
            id="unpacked-size",
        ),
        pytest.param(
            release().replace("  command:", "  user: 'bad user'\n  command:"),
            f"{P}:11:9: run.user: 'bad user' is not valid",
            id="run-user",
        ),
    ],
)
def test_schema_error_at_node(text: str, expected: str) -> None:
    report = run({**basic_fleet(), P: text})
    assert not report.ok
    found = [line for line in lines(report) if line.startswith(P)]
    assert any(line.startswith(expected) for line in found), found


def test_unquoted_yes_in_labels_gets_a_yaml_hint() -> None:
    files = basic_fleet()
    files["nodes/gpu-1.yaml"] = node("gpu-1", labels="{mlx-cpu: yes}")
    assert lines(run(files)) == [
        "nodes/gpu-1.yaml:7:19: labels.mlx-cpu: expected a string, got boolean true (YAML 1.1 "
        "reads unquoted yes/no/on/off/true/false as booleans; quote it)"
    ]


def test_a_document_in_the_wrong_folder_is_one_error() -> None:
    files = {**basic_fleet(), "nodes/infer.yaml": release()}
    assert lines(run(files)) == [
        "nodes/infer.yaml:2:7: kind: files in nodes/ must be kind Node, got 'Release' (is the "
        "file in the wrong folder?)"
    ]


def test_several_missing_fields_are_one_line() -> None:
    files = {**basic_fleet(), "nodes/gpu-2.yaml": "kind: Node\nname: gpu-2\n"}
    assert lines(run(files)) == [
        "nodes/gpu-2.yaml:1:1: missing required fields 'apiVersion', 'platform'"
    ]


def test_every_error_of_a_file_is_reported() -> None:
    text = release(sha256="x", platform="windows/amd64", tail="rollout: {onFailure: x}\n")
    found = [line for line in lines(run({**basic_fleet(), P: text})) if line.startswith(P)]
    assert [line.split(": ")[0] for line in found] == [f"{P}:6:15", f"{P}:8:13", f"{P}:14:22"]


def test_schema_invalid_file_is_left_out_of_documents() -> None:
    report = run({**basic_fleet(), P: release(sha256="x")})
    assert sorted(report.documents) == ["fleet.yaml", "nodes/gpu-1.yaml"]


def test_valid_fleet_documents_are_plain_values() -> None:
    report = run(basic_fleet())
    assert report.ok and report.violations == ()
    assert report.documents[P]["artifacts"][0]["sha256"] == SHA_A
    assert report.documents["fleet.yaml"] == {
        "apiVersion": "fleetkeeper/v1",
        "kind": "Fleet",
        "name": "lab",
    }


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("fleet.yaml", True),
        ("nodes/gpu-1.yaml", True),
        ("releases/a/1.0.0.yaml", True),
        ("models/m/1.0.0.yaml", True),
        ("nodes/sub/gpu-1.yaml", False),
        ("releases/1.0.0.yaml", False),
        ("releases/a/1.0.0.yml", False),
        ("README.md", False),
        ("sub/fleet.yaml", False),
    ],
)
def test_is_fleet_file(path: str, expected: bool) -> None:
    assert is_fleet_file(path) is expected


def test_misplaced_yaml_files_get_a_warning_not_silence() -> None:
    files = {**basic_fleet(), "releases/infer/1.1.0.yml": "x", "releases/2.0.0.yaml": "y"}
    report = run(files)
    assert report.ok
    assert lines(report) == [
        "releases/2.0.0.yaml:1:1: warning: ignored: not a fleet file (expected "
        "releases/<agent>/<version>.yaml)",
        "releases/infer/1.1.0.yml:1:1: warning: ignored: not a fleet file (expected "
        "releases/<agent>/<version>.yaml)",
    ]


def test_violation_str_and_report_ok() -> None:
    err = Violation("a.yaml", 3, 5, "bad")
    warn = Violation("a.yaml", 1, 1, "meh", "warning")
    assert str(err) == "a.yaml:3:5: bad"
    assert str(warn) == "a.yaml:1:1: warning: meh"
    assert Report((warn,)).ok
    assert not Report((warn, err)).ok


@pytest.mark.parametrize("name", ["fleet", "node", "release", "model"])
def test_bundled_schema_is_self_contained_and_equivalent(name: str) -> None:
    doc = bundled(name)
    assert "urn:fleetkeeper:schema:common" not in str(doc)
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(doc)
    sample = {"fleet": FLEET, "node": node("gpu-1"), "release": release()}.get(name)
    if sample is not None:
        import yaml

        value = yaml.safe_load(sample)
        assert list(Draft202012Validator(doc).iter_errors(value)) == []
        assert schemas.errors(name, value) == []


@pytest.mark.parametrize("name", ["common", "fleet", "node", "release", "model"])
def test_every_fleet_schema_property_has_a_description(name: str) -> None:
    missing: list[str] = []

    def walk(value: object, where: str) -> None:
        if isinstance(value, dict):
            for key, sub in (value.get("properties") or {}).items():
                if "description" not in sub:
                    missing.append(f"{where}/properties/{key}")
            for key, sub in value.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(value, list):
            for i, sub in enumerate(value):
                walk(sub, f"{where}/{i}")

    walk(schemas.load(name), "#")
    assert missing == []


def test_per_file_checks_can_be_supplied_and_cached() -> None:
    from reconciler.validate import FileCheck, check_file, validate_files

    calls: list[str] = []
    cache: dict[tuple[str, bytes], FileCheck] = {}

    def cached(path: str, data: bytes) -> FileCheck:
        if (path, data) not in cache:
            calls.append(path)
            cache[(path, data)] = check_file(path, data)
        return cache[(path, data)]

    files = {p: t.encode() for p, t in basic_fleet().items()}
    bad = {**files, P: release(sha256="XYZ").encode()}
    first, second = validate_files(bad, check=cached), validate_files(bad, check=cached)
    assert first == second == validate_files(bad)
    assert len(calls) == 3  # the second run re-checked nothing
    assert validate_files(files, check=cached).ok
    assert calls[-1] == P


def test_bad_label_key_points_at_the_key() -> None:
    files = basic_fleet()
    files["nodes/gpu-1.yaml"] = node("gpu-1", labels='{"bad key!": x, port: "1"}')
    assert lines(run(files)) == [
        "nodes/gpu-1.yaml:7:10: labels: key 'bad key!' is not a label key: 1 to 63 letters, "
        "digits, '.', '_', '/' or '-', starting with a letter or digit"
    ]
