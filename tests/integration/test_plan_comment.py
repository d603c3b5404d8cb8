"""The plan as a pull-request comment: ``fleetkeeper plan --format markdown``, and the CI
examples of example-fleet-repo/ run locally (their script part, as the forge's runner would
run it) against a stand-in of each forge's comment API on 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.forge import forge_double
from tests.helpers.git import fleet_repo_from_example, git, head
from tests.helpers.operator_fleet import NODES, operated_fleet

MARKER = "<!-- fleetkeeper-plan -->"
# coding-agent carries config files (and a secret): its row shows the target digest too
ROLLOUT_ROW = (
    r"\| coding-agent \(process\) \| 1\.4\.0 \+config [0-9a-f]{8} \| "
    r"1\. vps-1<br>2\. mac-mini-1, mac-studio-1 \|"
)
TOKEN = "forge-token-123"
EXAMPLE = Path(__file__).resolve().parents[2] / "example-fleet-repo"


def open_pull_request(tmp: Path) -> tuple[Path, str]:
    """The example fleet on main, a PR branch adding coding-agent 1.4.0 (canary vps-1), and a
    CI checkout of the PR head (detached, as runners check it out)."""
    fleet = fleet_repo_from_example(tmp / "fleet")
    git(fleet, "checkout", "-q", "-b", "pr-1")
    old = (fleet / "releases/coding-agent/1.3.0.yaml").read_text()
    (fleet / "releases/coding-agent/1.4.0.yaml").write_text(
        old.replace("version: 1.3.0", "version: 1.4.0")
    )
    git(fleet, "add", "-A")
    git(fleet, "commit", "-q", "-m", "coding-agent 1.4.0")
    pr_head = head(fleet)
    git(fleet, "checkout", "-q", "main")
    ci = tmp / "ci"
    git(tmp, "clone", "-q", str(fleet), str(ci))
    git(ci, "checkout", "-q", "--detach", pr_head)
    return ci, pr_head


def ci_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETKEEPER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def actions_step(workflow: Path) -> tuple[str, list[str]]:
    """The `plan comment` step of a GitHub/Gitea Actions workflow: its script and env names."""
    doc = yaml.safe_load(workflow.read_text())
    steps = doc["jobs"]["plan"]["steps"]
    (step,) = [s for s in steps if s.get("name") == "plan comment"]
    return step["run"], list(step.get("env", {}))


def gitlab_job(ci_file: Path, provided: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The `plan` job of .gitlab-ci.yml: its script and its variables, expanded from the
    predefined variables GitLab would give it."""
    job = yaml.safe_load(ci_file.read_text())["plan"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    variables = {
        k: re.sub(r"\$(\w+)", lambda m: provided.get(m.group(1), ""), str(v))
        for k, v in job["variables"].items()
    }
    return "\n".join(job["script"]), variables


def run_script(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def assert_plan_comment(body: str, pr_head: str) -> None:
    assert body.startswith(MARKER)
    assert f"fleetkeeper plan for `{pr_head[:12]}`" in body
    assert "**not approved yet**" in body
    assert re.search(ROLLOUT_ROW, body)
    assert "| vps-1 | coding-agent | 1.4.0 |" in body


@pytest.mark.parametrize("forge", ["github", "gitea"])
def test_actions_workflow_posts_then_updates_one_comment(forge: str, tmp_path: Path) -> None:
    ci, pr_head = open_pull_request(tmp_path)
    workflow = ci / (".github" if forge == "github" else ".gitea") / "workflows" / "plan.yaml"
    script, env_names = actions_step(workflow)
    api_prefix = "" if forge == "github" else "/api/v1"
    with forge_double(TOKEN) as double:
        double.add("LGTM")  # someone else's comment stays untouched
        values = {
            "FORGE_TOKEN": TOKEN,
            "PR_NUMBER": "1",
            "HEAD_SHA": pr_head,
            "BASE_REF": "main",
            "FLEETKEEPER_SERVER": "",
            "FLEETKEEPER_TOKEN": "",
        }
        assert set(env_names) == set(values)
        env = ci_env(
            {
                **values,
                "GITHUB_API_URL": double.url + api_prefix,
                "GITHUB_REPOSITORY": "homelab/fleet",
            }
        )
        first = run_script(script, ci, env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "posted comment" in first.stdout
        # a second push: the same comment is edited, not a new one added
        second = run_script(script, ci, env)
        assert second.returncode == 0, second.stderr
        assert "updated comment" in second.stdout
    ours = [c for c in double.comments.values() if c["body"].startswith(MARKER)]
    assert len(ours) == 1 and len(double.comments) == 2
    assert_plan_comment(ours[0]["body"], pr_head)
    assert ("PATCH", f"{api_prefix}/repos/homelab/fleet/issues/comments/{ours[0]['id']}") in (
        double.requests
    )


def test_gitlab_job_posts_then_updates_one_note(tmp_path: Path) -> None:
    ci, pr_head = open_pull_request(tmp_path)
    with forge_double(TOKEN, gitlab=True) as double:
        provided = {
            "CI_API_V4_URL": double.url + "/api/v4",
            "CI_PROJECT_ID": "42",
            "CI_MERGE_REQUEST_IID": "7",
            "CI_MERGE_REQUEST_SOURCE_BRANCH_SHA": pr_head,
            "CI_MERGE_REQUEST_TARGET_BRANCH_NAME": "main",
            "CI_PIPELINE_SOURCE": "merge_request_event",
            "FORGE_TOKEN": TOKEN,
        }
        script, variables = gitlab_job(ci / ".gitlab-ci.yml", provided)
        env = ci_env({**provided, **variables})
        for expected in ("posted", "updated"):
            proc = run_script(script, ci, env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert f"{expected} comment" in proc.stdout
    (note,) = double.comments.values()
    assert_plan_comment(note["body"], pr_head)
    assert ("PUT", f"/api/v4/projects/42/merge_requests/7/notes/{note['id']}") in double.requests


def test_forge_refusal_fails_the_job_without_leaking_the_token(tmp_path: Path) -> None:
    ci, pr_head = open_pull_request(tmp_path)
    script, _ = actions_step(ci / ".github" / "workflows" / "plan.yaml")
    with forge_double("the-right-token") as double:
        env = ci_env(
            {
                "FORGE_TOKEN": TOKEN,
                "PR_NUMBER": "1",
                "HEAD_SHA": pr_head,
                "BASE_REF": "main",
                "GITHUB_API_URL": double.url,
                "GITHUB_REPOSITORY": "homelab/fleet",
            }
        )
        proc = run_script(script, ci, env)
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr and "Bad credentials" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert double.comments == {}


def test_invalid_head_is_posted_and_fails_the_job(tmp_path: Path) -> None:
    ci, _ = open_pull_request(tmp_path)
    (ci / "nodes" / "vps-1.yaml").write_text("apiVersion: fleetkeeper/v1\nkind: Node\n")
    git(ci, "commit", "-q", "-am", "break vps-1")
    script, _ = actions_step(ci / ".github" / "workflows" / "plan.yaml")
    with forge_double(TOKEN) as double:
        env = ci_env(
            {
                "FORGE_TOKEN": TOKEN,
                "PR_NUMBER": "3",
                "HEAD_SHA": head(ci),
                "BASE_REF": "main",
                "GITHUB_API_URL": double.url,
                "GITHUB_REPOSITORY": "homelab/fleet",
            }
        )
        proc = run_script(script, ci, env)
    assert proc.returncode == 1, proc.stderr
    (comment,) = double.comments.values()
    assert "**Invalid**" in comment["body"]
    assert "nodes/vps-1.yaml:" in comment["body"]


def plan_markdown(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "plan", "--repo", str(repo), "--format"]
        + ["markdown", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


def test_markdown_diffs_against_what_runs_now(tmp_path: Path) -> None:
    """Against the real reconciler with three agents running hello 1.0.0: a PR adding 1.1.0
    shows every node's upgrade, canary batch first; the admin token is required."""
    with operated_fleet(tmp_path) as fleet:
        fleet.release("1.0.0")
        fleet.wait_release("1.0.0", "Succeeded")
        repo = fleet.repo.path
        git(repo, "checkout", "-q", "-b", "pr-2")
        fleet.repo.write({"releases/hello/1.1.0.yaml": fleet.release_doc("1.1.0")})
        git(repo, "add", "-A")
        git(repo, "commit", "-q", "-m", "hello 1.1.0")
        git(repo, "checkout", "-q", "main")
        url, token = fleet.server.url, fleet.server.admin_token

        proc = plan_markdown(repo, "--preview", "pr-2", "--server", url, FLEETKEEPER_TOKEN=token)
        assert proc.returncode == 0, proc.stderr
        body = proc.stdout
        assert f"#### Per node, against what runs now on {url}" in body
        for node in NODES:
            assert f"| {node} | hello | 1.0.0 | 1.1.0 | **upgrade** |" in body
        assert f"| hello (process) | 1.1.0 | 1. {NODES[0]}<br>2. " in body
        assert "Changes: 3 upgrade." in body

        # the approved revision against what runs: nothing changes
        same = plan_markdown(repo, "--server", url, FLEETKEEPER_TOKEN=token)
        assert same.returncode == 0, same.stderr
        assert "Changes: 3 unchanged." in same.stdout

        refused = plan_markdown(repo, "--server", url, FLEETKEEPER_TOKEN="wrong")
        assert refused.returncode == 1
        assert "refused the admin token" in refused.stderr


def test_server_needs_markdown(tmp_path: Path) -> None:
    fleet = fleet_repo_from_example(tmp_path / "fleet")
    proc = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "plan", "--repo", str(fleet)]
        + ["--server", "http://127.0.0.1:1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--server needs --format markdown" in proc.stderr


def test_a_plan_too_long_for_the_forge_is_cut_not_refused(tmp_path: Path) -> None:
    plan = tmp_path / "plan.md"
    rows = "".join(f"| node-{i} | hello | 1.0.0 | 1.1.0 | **upgrade** |\n" for i in range(3000))
    plan.write_text(f"{MARKER}\n### fleetkeeper plan\n\n{rows}")
    with forge_double(TOKEN) as double:
        env = ci_env(
            {
                "FORGE_TOKEN": TOKEN,
                "PR_NUMBER": "9",
                "GITHUB_API_URL": double.url,
                "GITHUB_REPOSITORY": "homelab/fleet",
            }
        )
        proc = subprocess.run(
            [sys.executable, str(EXAMPLE / "ci" / "post_plan_comment.py"), "github", str(plan)],
            env=env,
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 0, proc.stderr
    (comment,) = double.comments.values()
    assert len(plan.read_text()) > 65536 >= len(comment["body"])
    assert comment["body"].startswith(MARKER)
    assert comment["body"].endswith("_(cut: the whole plan is in the job log)_\n")
