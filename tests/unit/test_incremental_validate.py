"""validate_incremental equals validate_files from scratch, change after change, and reuses
per-file findings only while fleet.yaml and nodes/ are unchanged."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import pytest

from reconciler.spec import build_spec
from reconciler.validate import (
    FileCheck,
    Report,
    RuleMemo,
    check_file,
    validate_files,
    validate_incremental,
)
from reconciler.validate.violations import Violation
from tests.helpers.fleetfiles import FLEET, SHA_B, basic_fleet, node, release

Files = dict[str, str]
Change = Callable[[Files], None]

MODEL = (
    "apiVersion: fleetkeeper/v1\nkind: Model\nname: llm\nversion: 1.0.0\nruntime: mlx-lm\n"
    "artifacts:\n  - platform: any\n    url: https://dl.example.org/m.gguf\n"
    f"    sha256: {SHA_B}\n    size: 40000000000\n"
    'args:\n  port: "${node.labels.port}"\ntargets:\n  roles: [inference]\n'
)


def start() -> Files:
    return {
        **basic_fleet(),
        "nodes/gpu-2.yaml": node("gpu-2", memory="16"),
        "nodes/mac-1.yaml": node("mac-1", "darwin/arm64", "metal", roles="[edge]"),
        "releases/infer/0.9.0.yaml": release(version="0.9.0"),
        "releases/edge/1.0.0.yaml": release("edge", roles="[edge]", platform="darwin/arm64"),
        "README.md": "not a fleet file\n",
    }


def put(path: str, text: str) -> Change:
    def change(files: Files) -> None:
        files[path] = text

    return change


def drop(path: str) -> Change:
    def change(files: Files) -> None:
        del files[path]

    return change


def drop_nodes(files: Files) -> None:
    for path in [p for p in files if p.startswith("nodes/")]:
        del files[path]


# Each step changes the files of the previous one; names say what the step exercises.
STEPS: list[tuple[str, Change]] = [
    ("add a release", put("releases/infer/1.1.0.yaml", release(version="1.1.0"))),
    (
        "release with a bad canary, an http URL and a lacking label",
        put(
            "releases/infer/1.2.0.yaml",
            release(
                version="1.2.0",
                url="http://dl.example.org/x.tar.gz",
                command='[bin/infer, "${node.labels.zone}"]',
                tail="rollout:\n  canary: [gpu-9]\n  batchSize: 5\n",
            ),
        ),
    ),
    ("node file loses its port label", put("nodes/gpu-2.yaml", node("gpu-2", labels="{}"))),
    (
        "fleet.yaml allows http and sets a default canary",
        put(
            "fleet.yaml",
            FLEET + "allowInsecureURLs: true\ndefaults:\n  rollout:\n    canary: [gpu-1, nope]\n",
        ),
    ),
    ("add a model that fits no node", put("models/llm/1.0.0.yaml", MODEL)),
    ("same precedence as 1.1.0", put("releases/infer/1.1.0+b.yaml", release(version="1.1.0+b"))),
    ("delete a release", drop("releases/infer/0.9.0.yaml")),
    ("release that is not YAML", put("releases/infer/2.0.0.yaml", "agent: [unclosed\n")),
    ("release that fails its schema", put("releases/edge/1.1.0.yaml", "kind: Release\n")),
    ("misplaced file", put("releases/loose.yaml", "a: 1\n")),
    ("node file that is invalid", put("nodes/mac-1.yaml", "name: mac-1\nplatform: [x]\n")),
    ("the invalid node file fixed", put("nodes/mac-1.yaml", node("mac-1", roles="[edge]"))),
    ("release targets no node", put("releases/edge/0.5.0.yaml", release("edge", roles="[gone]"))),
    ("a new node", put("nodes/gpu-3.yaml", node("gpu-3", labels='{port: "1", zone: a}'))),
    ("a node removed", drop("nodes/gpu-1.yaml")),
    ("fleet.yaml removed", drop("fleet.yaml")),
    ("file name and field disagree", put("nodes/gpu-4.yaml", node("gpu-5"))),
    ("every node removed", drop_nodes),
]


def content_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def checker(files: Mapping[str, str]) -> Callable[[str, str], FileCheck]:
    def check(path: str, file_id: str) -> FileCheck:
        assert content_id(files[path]) == file_id
        return check_file(path, files[path].encode())

    return check


def full(report: Report) -> list[tuple[Violation, tuple[str, ...]]]:
    """Violations with what their equality leaves out (the related files), in order."""
    return [(v, v.related) for v in report.violations]


def assert_same(got: Report, expected: Report) -> None:
    assert full(got) == full(expected)
    assert dict(got.documents) == dict(expected.documents)
    assert got.checked == expected.checked
    assert got.ok == expected.ok


def incremental(files: Files, memo: RuleMemo | None) -> tuple[Report, RuleMemo]:
    listing = [(p, content_id(t)) for p, t in files.items()]
    report, spec, memo = validate_incremental(listing, checker(files), memo)
    assert spec == build_spec(dict(report.documents))
    return report, memo


def test_each_change_gives_what_validate_files_gives() -> None:
    files = start()
    report, memo = incremental(files, None)
    assert_same(report, validate_files({p: t.encode() for p, t in files.items()}))
    messages: set[str] = set()
    for _, change in STEPS:
        change(files)
        expected = validate_files({p: t.encode() for p, t in files.items()})
        report, memo = incremental(files, memo)
        assert_same(report, expected)
        assert_same(incremental(files, None)[0], expected)  # and from an empty memo
        assert_same(incremental(files, memo)[0], expected)  # and again, nothing new
        messages |= {v.message for v in expected.violations}
    # the sequence does exercise the rules it is meant to (else equality proves little)
    for fragment in (
        "has no file nodes/gpu-9.yaml",
        "artifact URL is not allowed",
        "have no label 'port'",
        "defaults.rollout.canary names node 'nope'",
        "runtime mlx-lm runs only on",
        "has the same precedence as",
        "targets select none of",
        "must equal the file name",
        "no node files in nodes/",
        "ignored: not a fleet file",
    ):
        assert any(fragment in m for m in messages), fragment


@pytest.mark.parametrize("name", [name for name, _ in STEPS])
def test_one_step_from_the_start(name: str) -> None:
    """Each change alone, from a memo of the starting files."""
    files = start()
    _, memo = incremental(files, None)
    dict(STEPS)[name](files)
    expected = validate_files({p: t.encode() for p, t in files.items()})
    assert_same(incremental(files, memo)[0], expected)


def test_unchanged_files_keep_their_findings_while_the_scope_is_the_same() -> None:
    files = start()
    _, memo = incremental(files, None)
    files["releases/infer/1.1.0.yaml"] = release(version="1.1.0")
    _, after = incremental(files, memo)
    kept = ("releases/edge/1.0.0.yaml", content_id(files["releases/edge/1.0.0.yaml"]))
    assert after.files[kept] is memo.files[kept]  # reused, not judged again
    assert after.scope is memo.scope
    files["nodes/gpu-2.yaml"] = node("gpu-2", labels="{}")
    _, changed = incremental(files, after)
    assert changed.scope is not after.scope
    assert changed.files[kept] is not after.files[kept]  # judged again in the new scope
    assert ("releases/infer/1.1.0.yaml", content_id(release(version="1.1.0"))) in changed.files
    gone = ("releases/infer/0.9.0.yaml", content_id(files.pop("releases/infer/0.9.0.yaml")))
    _, smaller = incremental(files, changed)
    assert gone in changed.files and gone not in smaller.files  # holds only current files
