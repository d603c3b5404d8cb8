"""YAML pitfalls: each is rejected with a clear message at the exact path:line:column."""

from __future__ import annotations

import pytest

from reconciler.validate.loader import MAX_FILE_BYTES, load_file
from tests.helpers.fleetfiles import basic_fleet, lines, release, run

P = "releases/infer/1.0.0.yaml"

LAUGHS = """\
apiVersion: fleetkeeper/v1
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            release(tail="agent: other\n"),
            f"{P}:14:1: duplicate key 'agent' (first at line 3); YAML would silently keep "
            "only the last one",
            id="duplicate-key",
        ),
        pytest.param(
            release().replace("  roles:", "\troles:"),
            f"{P}:13:1: tab character in indentation; YAML indents with spaces only",
            id="tab-indent",
        ),
        pytest.param(
            release().replace("  roles:", "  \troles:"),
            f"{P}:13:3: tab character in indentation; YAML indents with spaces only",
            id="tab-after-spaces",
        ),
        pytest.param(
            release() + "---\n" + release(),
            f"{P}:14:1: more than one YAML document in this file (a '---' separator); put each "
            "document in its own file",
            id="multiple-documents",
        ),
        pytest.param(
            LAUGHS,
            "the document expands to more than 20000 values through aliases",
            id="billion-laughs",
        ),
        pytest.param(
            "apiVersion: fleetkeeper/v1\nloop: &x [a, *x]\n",
            f"{P}:2:7: an alias refers to a value that contains it (recursive alias)",
            id="recursive-alias",
        ),
        pytest.param(
            release(tail="1: one\n"),
            f"{P}:14:1: key '1' is an integer, not a string; quote it",
            id="int-key",
        ),
        pytest.param(
            release(tail="targets2:\n  on: push\n"),
            f"{P}:15:3: key 'on' is a boolean, not a string (YAML 1.1 reads unquoted "
            "yes/no/on/off/true/false as booleans); quote it",
            id="bool-key",
        ),
        pytest.param(
            release(tail="? [a, b]\n: x\n"),
            f"{P}:14:3: keys must be plain strings, not a mapping or a sequence",
            id="complex-key",
        ),
        pytest.param(
            release(tail="base: &b {x: 1}\nmore:\n  <<: *b\n"),
            f"{P}:16:3: merge keys ('<<') are not supported; write the fields out",
            id="merge-key",
        ),
        pytest.param(
            release(tail="description: !!binary aGVsbG8=\n"),
            f"{P}:14:14: unsupported YAML tag 'tag:yaml.org,2002:binary'; fleet files are "
            "plain YAML",
            id="binary-tag",
        ),
        pytest.param(
            release(tail="description: 2024-05-01\n"),
            f"{P}:14:14: '2024-05-01' is read as a date/time by YAML; quote it for a string",
            id="timestamp",
        ),
        pytest.param(
            "apiVersion: fleetkeeper/v1\nkind: [Release\n",
            f"{P}:3:1: invalid YAML: while parsing a flow sequence: did not find expected ',' "
            "or ']'",
            id="syntax-error",
        ),
        pytest.param("", f"{P}:1:1: empty file: expected a YAML mapping", id="empty"),
        pytest.param(
            "- just\n- a list\n", f"{P}:1:1: expected a mapping at the top level", id="list-root"
        ),
    ],
)
def test_yaml_pitfall_reported_at_its_node(text: str, expected: str) -> None:
    files = {**basic_fleet(), P: text}
    report = run(files)
    assert not report.ok
    assert P not in report.documents
    found = [line for line in lines(report) if line.startswith(P)]
    assert any(expected in line for line in found), found


def test_billion_laughs_location_and_speed() -> None:
    loaded, violations = load_file(P, LAUGHS.encode())
    assert loaded is None
    assert len(violations) == 1
    v = violations[0]
    # stops while expanding the first deep alias, long before 10**9 values
    assert (v.path, v.severity) == (P, "error")
    assert 2 <= v.line <= 10


def test_every_tab_indented_line_is_named_but_tabs_in_text_are_fine() -> None:
    text = release().replace("  command:", "\tcommand:").replace("  roles:", "\troles:")
    _, violations = load_file(P, text.encode())
    assert [str(v) for v in violations] == [
        f"{P}:11:1: tab character in indentation; YAML indents with spaces only",
        f"{P}:13:1: tab character in indentation; YAML indents with spaces only",
    ]
    ok = release(tail="description: |\n  first\n  \tsecond, tab-indented text\n")
    loaded, violations = load_file(P, ok.encode())
    assert violations == [] and loaded is not None
    assert loaded.value["description"] == "first\n\tsecond, tab-indented text\n"


def test_oversized_file_is_refused_before_parsing() -> None:
    data = b"apiVersion: fleetkeeper/v1\n" + b"# padding\n" * (MAX_FILE_BYTES // 10 + 1)
    _, violations = load_file(P, data)
    assert [str(v) for v in violations] == [
        f"{P}:1:1: file is {len(data)} bytes; fleet files are limited to 256 KiB"
    ]


def test_not_utf8_points_at_the_byte() -> None:
    _, violations = load_file(P, b"apiVersion: fleetkeeper/v1\nkind: Rel\xffease\n")
    assert [str(v) for v in violations] == [f"{P}:2:10: file is not valid UTF-8"]


def test_deep_nesting_is_refused() -> None:
    _, violations = load_file(P, b"a: " + b"[" * 100 + b"]" * 100 + b"\n")
    assert len(violations) == 1
    assert "nested more than 64 levels" in violations[0].message


def test_every_pitfall_in_a_file_is_reported_not_just_the_first() -> None:
    text = release(tail="agent: again\n1: x\nversion: again\n")
    report = run({**basic_fleet(), P: text})
    assert [line for line in lines(report) if line.startswith(P)] == [
        f"{P}:14:1: duplicate key 'agent' (first at line 3); YAML would silently keep only "
        "the last one",
        f"{P}:15:1: key '1' is an integer, not a string; quote it",
        f"{P}:16:1: duplicate key 'version' (first at line 4); YAML would silently keep only "
        "the last one",
    ]


def test_locate_points_at_keys_and_sequence_items() -> None:
    loaded, violations = load_file(P, release().encode())
    assert loaded is not None and violations == []
    assert loaded.locate(("artifacts", 0, "sha256")) == (8, 13)
    assert loaded.locate(("artifacts", 0, "sha256"), key=True) == (8, 5)
    assert loaded.locate(("run", "command", 2)) == (11, 32)
    assert loaded.locate(("missing", "deeper")) == (1, 1)
    assert loaded.locate(("targets", "nodes")) == (13, 3)
