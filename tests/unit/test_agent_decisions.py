"""Pure decisions of the agent, table-driven."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import schema
from agent.backoff import backoff_delay
from agent.converge import doc_key
from agent.errors import ConfigError, UnpackError, WorkloadError
from agent.facts import accelerator_of, platform_of
from agent.layout import path_within
from agent.prove import judge_probe, judge_process, locate_version, names_version
from agent.report import Observed, build_report, decide_phase, workload_entry
from agent.runtimes import runtime_for, runtime_key
from agent.supervise.child import backoff_seconds
from agent.supervise.restart_check import (
    UnitSnapshot,
    parse_launchctl_print,
    parse_systemctl_show,
    verify_restart,
)
from agent.supervise.service import launchd_plist, systemd_unit
from agent.supervise.supervisor import LaunchSpec
from agent.unpack import check_link_target, check_member_name


@pytest.mark.parametrize(
    ("output", "version", "want"),
    [
        ("hello 1.2.3", "1.2.3", True),
        ("v1.2.3", "1.2.3", True),
        ("version=1.2.3\n", "1.2.3", True),
        ("hello 1.2.30", "1.2.3", False),
        ("hello 11.2.3", "1.2.3", False),
        ("hello 1.2.3-rc1", "1.2.3", False),
        ("hello 1.2.3.4", "1.2.3", False),
        ("hello 1.2.3-rc1", "1.2.3-rc1", True),
        ("", "1.2.3", False),
    ],
)
def test_names_version(output: str, version: str, want: bool) -> None:
    assert names_version(output, version) is want


V = Path("/opt/fk/hello/versions")


@pytest.mark.parametrize(
    ("evidence", "want"),
    [
        ([("exe", V / "1.0.0/bin/hello")], "1.0.0"),
        ([("exe", Path("/usr/bin/python3")), ("argv[1]", V / "2.0.0/bin/hello")], "2.0.0"),
        ([("exe", Path("/usr/bin/python3")), ("cwd", V / "3.0.0")], "3.0.0"),
        ([("exe", Path("/usr/bin/python3")), ("cwd", Path("/tmp"))], None),
        ([("cwd", V / ".staging-abc")], None),
        ([], None),
    ],
)
def test_locate_version(evidence: list[tuple[str, Path]], want: str | None) -> None:
    assert locate_version(evidence, V)[0] == want


@pytest.mark.parametrize(
    ("old", "pid", "located", "ok", "says"),
    [
        (100, 200, "2.0.0", True, "runs 2.0.0"),
        (100, 100, "2.0.0", False, "did not change"),
        (100, 200, "1.0.0", False, "not 2.0.0"),
        (None, None, None, False, "not running"),
        (None, 5, "2.0.0", True, "pid 5"),
    ],
)
def test_judge_process(
    old: int | None, pid: int | None, located: str | None, ok: bool, says: str
) -> None:
    proof = judge_process(target="2.0.0", old_pid=old, pid=pid, located=located, evidence="e")
    assert proof.ok is ok and says in proof.reason


@pytest.mark.parametrize(
    ("configured", "ok", "output", "want"),
    [
        (False, True, "", True),
        (True, True, "app 2.0.0", True),
        (True, True, "app 1.0.0", False),
        (True, False, "app 2.0.0", False),
    ],
)
def test_judge_probe(configured: bool, ok: bool, output: str, want: bool) -> None:
    assert (
        judge_probe(target="2.0.0", configured=configured, ok=ok, output=output, message="m").ok
        is want
    )


@pytest.mark.parametrize(
    ("before", "after", "exe", "ok", "says"),
    [
        # The classic silent failure: "restart" succeeded, same PID, old binary.
        (
            UnitSnapshot(True, 10, "5"),
            UnitSnapshot(True, 10, "5"),
            "/r/versions/2/bin/x",
            False,
            "did nothing",
        ),
        (
            UnitSnapshot(True, 10, None),
            UnitSnapshot(True, 10, None),
            "/r/versions/2/bin/x",
            False,
            "did nothing",
        ),
        (
            UnitSnapshot(True, 10, "5"),
            UnitSnapshot(True, 11, "6"),
            "/r/versions/1/bin/x",
            False,
            "not the new version",
        ),
        (UnitSnapshot(True, 10, "5"), UnitSnapshot(False, None, None), None, False, "not running"),
        (UnitSnapshot(True, 10, "5"), UnitSnapshot(True, 11, "6"), None, False, "cannot tell"),
        (
            UnitSnapshot(True, 10, "5"),
            UnitSnapshot(True, 11, "6"),
            "/r/versions/2/bin/x",
            True,
            "runs",
        ),
        (
            UnitSnapshot(False, None, None),
            UnitSnapshot(True, 3, "1"),
            "/r/versions/2/bin/x",
            True,
            "runs",
        ),
        # Same PID but a new start stamp (PID reuse after a real restart) still counts.
        (
            UnitSnapshot(True, 10, "5"),
            UnitSnapshot(True, 10, "9"),
            "/r/versions/2/bin/x",
            True,
            "runs",
        ),
    ],
)
def test_verify_restart(
    before: UnitSnapshot, after: UnitSnapshot, exe: str | None, ok: bool, says: str
) -> None:
    verdict = verify_restart(
        before, after, executable=Path(exe) if exe else None, expected_dir=Path("/r/versions/2")
    )
    assert verdict.ok is ok and says in verdict.reason


def test_parse_service_manager_output() -> None:
    snap = parse_systemctl_show(
        "ActiveState=active\nMainPID=4242\nExecMainStartTimestampMonotonic=123456\n"
    )
    assert snap == UnitSnapshot(True, 4242, "123456")
    assert parse_systemctl_show("ActiveState=inactive\nMainPID=0\n") == UnitSnapshot(False, None)
    text = "org.fleetkeeper.hello = {\n\tstate = running\n\truns = 3\n\tpid = 777\n}\n"
    assert parse_launchctl_print(text) == UnitSnapshot(True, 777, "3")


def test_service_definitions() -> None:
    spec = LaunchSpec(
        "hello", ("/r/versions/2/bin/hello", "--port", "80"), Path("/r/versions/2"), {"A": "b c"}
    )
    unit = systemd_unit(spec, Path("/var/log/hello.log"))
    assert "ExecStart=/r/versions/2/bin/hello --port 80\n" in unit
    assert "WorkingDirectory=/r/versions/2\n" in unit and "Environment='A=b c'\n" in unit
    plist = launchd_plist("org.fleetkeeper.hello", spec, Path("/l"))
    assert b"<string>/r/versions/2/bin/hello</string>" in plist


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("bin/app", True),
        ("./bin/app", True),
        ("../x", False),
        ("bin/../../x", False),
        ("/etc/passwd", False),
        ("C:/x", False),
    ],
)
def test_member_names(name: str, ok: bool) -> None:
    if ok:
        check_member_name(name, "a.tar.gz")
    else:
        with pytest.raises(UnpackError):
            check_member_name(name, "a.tar.gz")


@pytest.mark.parametrize(
    ("member", "target", "ok"),
    [
        ("bin/app", "../lib/app", True),
        ("bin/app", "app2", True),
        ("bin/app", "../../etc/passwd", False),
        ("app", "..", False),
        ("bin/app", "/etc/passwd", False),
    ],
)
def test_link_targets(member: str, target: str, ok: bool) -> None:
    if ok:
        check_link_target(member, target, "a.tar.gz")
    else:
        with pytest.raises(UnpackError):
            check_link_target(member, target, "a.tar.gz")


@pytest.mark.parametrize(
    ("path", "root", "want"),
    [
        ("/srv/fk/hello/current", "/srv/fk", True),
        ("/srv/fk", "/srv/fk", True),
        ("/srv/fk2/x", "/srv/fk", False),
        ("/srv", "/srv/fk", False),
    ],
)
def test_path_within(path: str, root: str, want: bool) -> None:
    assert path_within(Path(path), Path(root)) is want


def test_backoffs() -> None:
    assert [backoff_seconds(n, 0.5, 4) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff_delay(0, base=1, cap=30, draw=0.0) == 0.5
    assert backoff_delay(3, base=1, cap=30, draw=0.999) < 8
    assert backoff_delay(10, base=1, cap=30, draw=0.5) == 22.5
    assert backoff_delay(10_000, base=1, cap=30, draw=1.0) == 30


@pytest.mark.parametrize(
    ("system", "machine", "smi", "plat", "acc"),
    [
        ("Linux", "x86_64", "GPU 0: NVIDIA A100 (UUID: GPU-1)\n", "linux/amd64", "cuda"),
        ("Linux", "aarch64", "", "linux/arm64", "cpu"),
        ("Linux", "x86_64", "No devices were found\n", "linux/amd64", "cpu"),
        ("Darwin", "arm64", None, "darwin/arm64", "metal"),
        ("Darwin", "x86_64", None, "darwin/amd64", "cpu"),
    ],
)
def test_facts(system: str, machine: str, smi: str | None, plat: str, acc: str) -> None:
    assert platform_of(system, machine) == plat
    assert accelerator_of(plat, smi) == acc


def obs(pid: int | None, healthy: bool) -> Observed:
    return Observed(
        "w", "2.0.0", "1.0.0" if pid else None, pid, 1.0 if pid else None, None, None, healthy, "m"
    )


@pytest.mark.parametrize(
    ("stored", "observed", "want"),
    [
        ("Downloading", obs(5, True), "Downloading"),
        ("Failed", obs(5, True), "Failed"),
        ("RolledBack", obs(5, True), "RolledBack"),
        (None, obs(5, True), "Healthy"),
        (None, obs(5, False), "Unhealthy"),
        (None, obs(None, False), "Stopped"),
        ("Healthy", obs(None, False), "Stopped"),
    ],
)
def test_decide_phase(stored: str | None, observed: Observed, want: str) -> None:
    assert decide_phase(stored, observed) == want


def test_report_is_schema_valid_and_truthful() -> None:
    o = Observed(
        "hello",
        "2.0.0",
        "1.0.0",
        42,
        1_700_000_000.0,
        "/r/hello/versions/1.0.0",
        "a" * 64,
        True,
        "ok",
    )
    entry = workload_entry(o, "Failed", "2.0.0 failed: health; rolled back to 1.0.0")
    report = build_report("node-a", 7, "0.1.0", [entry])
    assert schema.errors("status-report", report) == []
    assert entry["version"] == "1.0.0" and entry["desiredVersion"] == "2.0.0"
    assert entry["startedAt"] == "2023-11-14T22:13:20+00:00"


def test_doc_key_is_the_target_not_the_document() -> None:
    """A failed version is remembered per target: version, artifact, configuration and
    retryGeneration; not the document's generation nor the spread's notBefore."""
    w: dict[str, Any] = {"name": "a", "version": "1.0.0", "artifact": {"sha256": "ab" * 32}}
    assert doc_key(w) == doc_key(dict(w))
    assert doc_key(w) == doc_key({**w, "notBefore": "2026-12-01T02:00:07Z"})
    assert doc_key(w) != doc_key({**w, "version": "1.0.1"})
    assert doc_key(w) != doc_key({**w, "artifact": {"sha256": "cd" * 32}})
    assert doc_key(w) != doc_key({**w, "run": {"command": ["x"]}})
    assert doc_key(w) != doc_key({**w, "retryGeneration": 1})
    assert doc_key({**w, "retryGeneration": 1}) != doc_key({**w, "retryGeneration": 2})


def test_runtime_registry() -> None:
    assert runtime_key({"name": "a", "kind": "process"}) == "process"
    assert runtime_key({"name": "m", "kind": "model", "model": {"runtime": "mlx-lm"}}) == "mlx-lm"
    assert runtime_for({"name": "a", "kind": "process"}).name == "process"
    with pytest.raises(WorkloadError, match="no model.runtime"):
        runtime_key({"name": "m", "kind": "model"})
    with pytest.raises(WorkloadError, match="unknown runtime"):
        runtime_for({"name": "m", "kind": "model", "model": {"runtime": "nope"}})


def test_config_validation(tmp_path: Path) -> None:
    from agent.config import load

    good = tmp_path / "agent.yaml"
    good.write_text(
        "server: [http://127.0.0.1:1, http://127.0.0.1:2/]\nnode: n1\ninstallRoot: root\n"
        "stateDir: /var/lib/x\nheartbeatSeconds: 2\n"
    )
    cfg = load(good)
    assert cfg.servers == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert cfg.install_root == tmp_path / "root" and cfg.heartbeat_seconds == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: ftp://x\nnode: N!\ninstallRoot: r\n")
    with pytest.raises(ConfigError) as err:
        load(bad)
    assert "stateDir" in str(err.value) and "server" in str(err.value)


def test_packaged_example_config_is_valid() -> None:
    import yaml

    from agent.config import from_document

    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "packaging" / "agent.yaml.example").read_text())
    cfg = from_document(doc)
    assert cfg.node == "gpu-1" and cfg.heartbeat_seconds == 15
