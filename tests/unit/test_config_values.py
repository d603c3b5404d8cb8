"""Config files and data (issue 17) as values: what the planner puts in a workload's
document, how a rollout judges a node's config, and what the agent accepts (pure)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest

from agent.configdir import DesiredConfig
from agent.datadir import DEFAULT_MAX_BYTES, DataSettings
from agent.errors import VerifyError
from reconciler.plan.observations import NodeReport, runs
from reconciler.plan.select import NodeFacts, config_document
from reconciler.plan.state import fingerprint
from reconciler.spec import ConfigFile, ConfigSpec
from tests.helpers.fleet import fleet_files, nodes_named, release_doc, spec_of

NODE = NodeFacts(name="gpu-1", platform="linux/amd64", labels={"site": "rack", "port": "8080"})


def filled(data: bytes, *, template: bool = False, to: str = "a.txt") -> ConfigFile:
    return ConfigFile("config/x/a", to, template, hashlib.sha256(data).hexdigest(), data)


def test_template_is_filled_per_node_and_plain_files_travel_as_committed() -> None:
    text = b"hi ${node.name} at ${node.labels.site}; keep ${HOME}\n"
    spec = ConfigSpec((filled(text, template=True), filled(text, to="raw.txt")))
    doc = config_document(spec, NODE)
    assert doc["digest"] == spec.digest and doc["onChange"] == "restart"
    got = {f["path"]: base64.b64decode(f["content"]) for f in doc["files"]}  # type: ignore[index,union-attr]
    assert got == {"a.txt": b"hi gpu-1 at rack; keep ${HOME}\n", "raw.txt": text}
    for f in doc["files"]:  # type: ignore[union-attr]
        assert f["sha256"] == hashlib.sha256(got[f["path"]]).hexdigest()  # type: ignore[index]


def test_digest_changes_with_content_name_template_and_on_change() -> None:
    base = ConfigSpec((filled(b"one"),))
    variants = [
        ConfigSpec((filled(b"two"),)),
        ConfigSpec((filled(b"one", to="b.txt"),)),
        ConfigSpec((filled(b"one", template=True),)),
        ConfigSpec((filled(b"one"),), on_change="none"),
    ]
    digests = {base.digest, *(v.digest for v in variants)}
    assert len(digests) == 5


def test_a_release_without_config_keeps_its_fingerprint_and_a_config_change_is_new() -> None:
    plain = release_doc("app", "1.0.0")
    d = spec_of(fleet_files(nodes_named("n1"), [plain])).deployables[0]
    with_config = {**plain, "config": {"files": [{"from": "config/app/a", "to": "a"}]}}
    c = spec_of(fleet_files(nodes_named("n1"), [with_config])).deployables[0]
    assert c.config is not None and d.config is None
    assert fingerprint(d) != fingerprint(c)
    one = c.__class__(**{**c.__dict__, "config": ConfigSpec((filled(b"1"),))})
    two = c.__class__(**{**c.__dict__, "config": ConfigSpec((filled(b"2"),))})
    assert fingerprint(one) != fingerprint(two)  # the same version, a new rollout


def report(version: str, config: str | None, phase: str = "Healthy") -> NodeReport:
    w: dict[str, Any] = {"name": "app", "version": version, "phase": phase, "healthy": True}
    if config is not None:
        w["configDigest"] = config
    return NodeReport.from_json("n1", {"workloads": [w]}, received_at=100.0)


@pytest.mark.parametrize(
    ("observed", "want_config", "want"),
    [
        (report("1.0.0", "aaaa"), "aaaa", True),
        (report("1.0.0", "aaaa"), "bbbb", False),  # the old config still in use
        (report("1.0.0", None), "bbbb", False),  # an agent that does not say
        (report("1.0.0", None), None, True),  # a release without config
        (report("1.0.1", "bbbb"), "bbbb", False),
        (report("1.0.0", "bbbb", "Restarting"), "bbbb", False),
    ],
)
def test_runs_requires_the_target_config(
    observed: NodeReport, want_config: str | None, want: bool
) -> None:
    assert runs(observed, "app", "1.0.0", 101.0, 30.0, want_config) is want


def entry(**over: Any) -> dict[str, Any]:
    content = over.pop("data", b"hello")
    f = {
        "path": over.pop("path", "a.txt"),
        "sha256": over.pop("sha256", hashlib.sha256(content).hexdigest()),
        "content": base64.b64encode(content).decode(),
    }
    return {"name": "app", "config": {"digest": "0" * 16, "onChange": "restart", "files": [f]}}


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        (entry(path="../../etc/cron.d/x"), "not a relative path inside the config directory"),
        (entry(path="/etc/passwd"), "not a relative path"),
        (entry(path="a//b"), "not a relative path"),
        (entry(sha256="0" * 64), "does not match"),
        (entry(data=b"x" * (256 * 1024 + 1)), "over the 256 KiB cap"),
    ],
)
def test_agent_refuses_a_config_it_must_not_write(doc: dict[str, Any], why: str) -> None:
    with pytest.raises(VerifyError, match=why):
        DesiredConfig.parse(doc)


def test_agent_config_key_names_the_content() -> None:
    a, b = DesiredConfig.parse(entry()), DesiredConfig.parse(entry(data=b"other"))
    assert a.key != b.key and a.files[0].content == b"hello"
    assert DesiredConfig.parse({"name": "app"}).files == ()  # none: an empty directory


def test_data_settings() -> None:
    assert DataSettings.parse({}) == DataSettings(False, DEFAULT_MAX_BYTES)
    assert DataSettings.parse({"data": {"snapshot": True, "maxBytes": 10}}) == DataSettings(
        True, 10
    )
