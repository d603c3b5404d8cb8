"""Cross-file rules: each violation with its exact path:line:column, severity and related files."""

from __future__ import annotations

import pytest

from reconciler.validate import Violation
from tests.helpers.fleetfiles import FLEET, SHA_B, basic_fleet, lines, node, release, run

P = "releases/infer/1.0.0.yaml"
MAC = node("mac-1", "darwin/arm64", "metal")

TWO_PLATFORMS = """\
artifacts:
  - platform: linux/amd64
    url: https://dl.example.org/a.tar.gz
    sha256: {a}
    size: 1024
  - platform: darwin/arm64
    url: https://dl.example.org/b.tar.gz
    sha256: {b}
    size: 1024
"""


def model(name: str = "llm", runtime: str = "llama-cpp", *, tail: str = "", **over: str) -> str:
    """Lines: 1-5 header (5 runtime), 6 artifacts:, 7 platform, 8 url, 9 sha256, 10 size,
    11 args:, 12 port, 13 targets:, 14 selector; tail from 15."""
    return (
        "apiVersion: fleetkeeper/v1\n"
        "kind: Model\n"
        f"name: {name}\n"
        "version: 1.0.0\n"
        f"runtime: {runtime}\n"
        "artifacts:\n"
        f"  - platform: {over.get('platform', 'any')}\n"
        f"    url: https://dl.example.org/m.{'tar.gz' if runtime == 'mlx-lm' else 'gguf'}\n"
        f"    sha256: {SHA_B}\n"
        f"    size: {over.get('size', '4000000000')}\n"
        "args:\n"
        '  port: "${node.labels.port}"\n'
        "targets:\n"
        f"  {over.get('selector', 'roles: [inference]')}\n" + tail
    )


def expect(files: dict[str, str], *expected: str) -> list[Violation]:
    report = run(files)
    assert lines(report) == list(expected)
    return list(report.violations)


def test_file_path_must_match_agent_and_version() -> None:
    files = basic_fleet()
    files["releases/infer/1.0.1.yaml"] = release(agent_field="inferr", version_field="1.0.2")
    expect(
        files,
        "releases/infer/1.0.1.yaml:3:8: agent 'inferr' must equal the folder name 'infer' "
        "(rename the file or fix the field)",
        "releases/infer/1.0.1.yaml:4:10: version '1.0.2' must equal the file name '1.0.1' "
        "(rename the file or fix the field)",
    )


def test_node_name_must_match_file_name() -> None:
    files = {**basic_fleet(), "nodes/gpu-2.yaml": node("gpu-3")}
    expect(
        files,
        "nodes/gpu-2.yaml:3:7: name 'gpu-3' must equal the file name 'gpu-2' (rename the "
        "file or fix the field)",
    )


def test_model_name_must_match_folder() -> None:
    files = {**basic_fleet(), "models/llm/1.0.0.yaml": model("other")}
    expect(
        files,
        "models/llm/1.0.0.yaml:3:7: name 'other' must equal the folder name 'llm' (rename "
        "the file or fix the field)",
    )


def test_model_and_agent_names_are_unique_workloads() -> None:
    files = {**basic_fleet(), "models/infer/1.0.0.yaml": model("infer")}
    (v,) = expect(
        files,
        "models/infer/1.0.0.yaml:3:7: name 'infer' is also an agent in releases/infer/; a "
        "node runs one workload per name, so pick another model name",
    )
    assert v.related == (P,)


def test_versions_equal_but_for_build_metadata_are_ambiguous() -> None:
    files = basic_fleet()
    files["releases/infer/1.0.0+b2.yaml"] = release(version="1.0.0+b2")
    expect(
        files,
        "releases/infer/1.0.0.yaml:4:10: version 1.0.0 has the same precedence as 1.0.0+b2 "
        "in releases/infer/1.0.0+b2.yaml (build metadata after '+' does not order versions)",
    )


def test_one_artifact_per_platform() -> None:
    files = basic_fleet()
    files[P] = release().replace(
        "artifacts:\n",
        f"artifacts:\n  - {{platform: linux/amd64, url: https://x/y, sha256: {SHA_B}, size: 1}}\n",
    )
    expect(
        files,
        f"{P}:7:15: second artifact for linux/amd64 (the first is artifacts[0]); give one "
        "artifact per platform",
    )


def test_every_targeted_node_needs_an_artifact_for_its_platform() -> None:
    files = {**basic_fleet(), "nodes/mac-1.yaml": MAC}
    (v,) = expect(
        files,
        f"{P}:5:1: no artifact for darwin/arm64, but the targets select mac-1; add a "
        "darwin/arm64 artifact or narrow the targets",
    )
    assert v.related == ("nodes/mac-1.yaml",)
    files[P] = release().replace(
        "artifacts:\n  - platform: linux/amd64\n    url: https://dl.example.org/infer-1.0.0.tar.gz\n"
        f"    sha256: {'a' * 64}\n    size: 1024\n",
        TWO_PLATFORMS.format(a="a" * 64, b=SHA_B),
    )
    expect(files)


def test_canary_and_explicit_nodes_must_exist() -> None:
    files = basic_fleet()
    files[P] = release(tail="  nodes: [gpu-1, gpu-9]\nrollout:\n  canary: [gpu1]\n")
    expect(
        files,
        f"{P}:14:18: targets.nodes names node 'gpu-9', which has no file nodes/gpu-9.yaml; did "
        "you mean 'gpu-1'?",
        f"{P}:16:12: rollout.canary names node 'gpu1', which has no file nodes/gpu1.yaml; did "
        "you mean 'gpu-1'?",
    )


def test_unknown_nodes_are_warnings_when_nodes_folder_is_empty() -> None:
    files = {"fleet.yaml": FLEET, P: release(tail="rollout:\n  canary: [gpu-1]\n")}
    report = run(files)
    assert report.ok
    assert lines(report) == [
        f"{P}:12:1: warning: no node files in nodes/: cannot check which nodes this targets",
        f"{P}:15:12: warning: rollout.canary names node 'gpu-1', which has no file "
        "nodes/gpu-1.yaml",
    ]


def test_targets_must_select_a_declared_node() -> None:
    files = basic_fleet()
    files[P] = release(roles="[coding]")
    (v,) = expect(
        files,
        f"{P}:12:1: targets select none of the 1 nodes in nodes/ (gpu-1); every given "
        "selector must match",
    )
    assert v.related == ("nodes/gpu-1.yaml",)


def test_canary_must_be_a_targeted_node() -> None:
    files = {**basic_fleet(), "nodes/mac-1.yaml": node("mac-1", roles="[coding]")}
    files[P] = release(tail="rollout:\n  canary: [mac-1]\n")
    expect(
        files,
        f"{P}:15:12: canary 'mac-1' is not among the nodes the targets select (gpu-1)",
    )


def test_selection_rules_wait_for_valid_node_files() -> None:
    files = basic_fleet()
    files["nodes/gpu-1.yaml"] = node("gpu-1", "linux/sparc")
    # one error, on the node; the release is not also told it selects nothing
    expect(
        files,
        "nodes/gpu-1.yaml:4:11: platform: 'linux/sparc' is not an os/arch platform: linux or "
        "darwin, then amd64 or arm64 (such as linux/amd64)",
    )


def test_rollout_timeout_must_exceed_health_timeout() -> None:
    files = basic_fleet()
    files[P] = release(tail="health:\n  timeoutSeconds: 600\nrollout:\n  timeoutSeconds: 300\n")
    expect(
        files,
        f"{P}:17:19: rollout.timeoutSeconds 300 must be greater than health.timeoutSeconds "
        "600: a node would be declared failed before its health check could pass",
    )


def test_rollout_timeout_from_fleet_defaults_is_checked_too() -> None:
    files = basic_fleet()
    files["fleet.yaml"] = FLEET + "defaults:\n  rollout: {timeoutSeconds: 120}\n"
    files[P] = release(tail="health:\n  timeoutSeconds: 120\n")
    expect(
        files,
        f"{P}:15:19: rollout.timeoutSeconds 120 (from fleet.yaml defaults or built-in) must "
        "be greater than health.timeoutSeconds 120: a node would be declared failed before "
        "its health check could pass",
    )


def test_batch_size_larger_than_targets_is_a_warning() -> None:
    files = basic_fleet()
    files[P] = release(tail="rollout:\n  batchSize: 5\n")
    report = run(files)
    assert report.ok
    assert lines(report) == [
        f"{P}:15:14: warning: batchSize 5 exceeds the 1 targeted node(s): the whole rollout "
        "is one batch"
    ]


@pytest.mark.parametrize(
    ("url", "fleet_extra", "expected"),
    [
        (
            "http://dl.example.org/a.tar.gz",
            "",
            f"{P}:7:10: http:// artifact URL is not allowed; use https:// (or set "
            "allowInsecureURLs: true in fleet.yaml, for labs and tests only)",
        ),
        (
            "file:///srv/a.tar.gz",
            "",
            f"{P}:7:10: file:// artifact URL is not allowed; use https:// (or set "
            "allowInsecureURLs: true in fleet.yaml, for labs and tests only)",
        ),
        ("http://127.0.0.1:9000/a.tar.gz", "allowInsecureURLs: true\n", None),
        ("file:///srv/a.tar.gz", "allowInsecureURLs: true\n", None),
        (
            "https://dl.example.org/${node.name}.tar.gz",
            "",
            f"{P}:7:10: placeholders are not filled in artifact URLs (one URL serves every "
            "node of the platform); write the URL out",
        ),
        (
            "https://bob:s3cret@dl.example.org/a.tar.gz",
            "",
            f"{P}:7:10: artifact URL carries credentials (user:password@); they would be "
            "stored in Git. Use a URL that needs none",
        ),
    ],
)
def test_artifact_url_schemes(url: str, fleet_extra: str, expected: str | None) -> None:
    files = basic_fleet()
    files["fleet.yaml"] = FLEET + fleet_extra
    files[P] = release(url=url)
    report = run(files)
    assert lines(report) == ([expected] if expected else [])


def test_placeholders_must_be_known_and_labels_present() -> None:
    files = {**basic_fleet(), "nodes/gpu-2.yaml": node("gpu-2", labels="{site: lab}")}
    files[P] = release(command='[bin/infer, "${node.labels.port}", "${node.ip}"]')
    (missing, unknown) = expect(
        files,
        f"{P}:11:24: ${{node.labels.port}} but targeted node(s) gpu-2 have no label 'port'",
        f"{P}:11:47: unknown placeholder ${{node.ip}}; use ${{node.name}} or ${{node.labels.KEY}}",
    )
    assert missing.related == ("nodes/gpu-2.yaml",)


def test_fleet_default_canary_must_exist() -> None:
    files = basic_fleet()
    files["fleet.yaml"] = FLEET + "defaults:\n  rollout:\n    canary: [gpu-7]\n"
    report = run(files)
    assert (
        "fleet.yaml:6:14: defaults.rollout.canary names node 'gpu-7', which has no file "
        "nodes/gpu-7.yaml" in lines(report)
    )


def test_model_file_larger_than_node_memory() -> None:
    files = {**basic_fleet(), "nodes/gpu-1.yaml": node("gpu-1", memory="2")}
    files["models/llm/1.0.0.yaml"] = model()
    (v,) = expect(
        files,
        "models/llm/1.0.0.yaml:10:11: model file is 3.7 GiB but node gpu-1 has memoryGiB 2; "
        "narrow the targets or use a smaller quantisation",
    )
    assert v.related == ("nodes/gpu-1.yaml",)


def test_mlx_needs_apple_silicon_or_opt_in_linux() -> None:
    files = {
        **basic_fleet(),
        "nodes/mac-1.yaml": MAC,
        "nodes/cpu-1.yaml": node("cpu-1", accelerator="cpu", labels='{port: "1", mlx-cpu: "true"}'),
        "models/mlx/1.0.0.yaml": model("mlx", "mlx-lm"),
        P: release(tail="  accelerators: [cuda]\n"),
    }
    (v,) = expect(
        files,
        "models/mlx/1.0.0.yaml:5:10: runtime mlx-lm runs only on darwin/arm64 nodes with "
        'accelerator metal, or Linux nodes labelled mlx-cpu: "true"; the targets select gpu-1 '
        "(linux/amd64, cuda)",
    )
    assert v.related == ("nodes/gpu-1.yaml",)


def test_cross_file_errors_are_reported_together() -> None:
    files = basic_fleet()
    files[P] = release(url="http://x/y", roles="[nobody]", tail="rollout:\n  canary: [ghost]\n")
    assert [line.split(": ")[0] for line in lines(run(files))] == [
        f"{P}:7:10",
        f"{P}:12:1",
        f"{P}:15:12",
    ]
