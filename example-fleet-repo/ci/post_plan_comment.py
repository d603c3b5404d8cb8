#!/usr/bin/env python3
"""Post `fleetkeeper plan --format markdown` as a pull/merge request comment, or update the
one posted before (found by the plan's hidden first line), so a PR keeps one plan comment.

    python3 ci/post_plan_comment.py github|gitea|gitlab PLAN.md

Standard library only: it runs on any CI image with Python 3. Settings come from the
environment each forge's CI provides (the workflows in this repo pass them):

- github, gitea (Gitea and Forgejo Actions): GITHUB_API_URL, GITHUB_REPOSITORY, PR_NUMBER,
  and a token allowed to write pull-request comments in FORGE_TOKEN (GITHUB_TOKEN there);
- gitlab: CI_API_V4_URL, CI_PROJECT_ID, CI_MERGE_REQUEST_IID, and FORGE_TOKEN, a project
  access token with the `api` scope (the job token cannot write notes).

Exit 0 posted or updated, 1 the forge refused (its answer is printed), 2 usage.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

MARKER = "<!-- fleetkeeper-plan -->"
MAX_PAGES = 50  # a PR with more than ~5000 comments: post a new one rather than page on
PAGE_SIZE = 50  # Gitea's default maximum page size; GitHub and GitLab allow 100
MAX_BODY = 65000  # GitHub refuses comments over 65536 characters


class ForgeError(Exception):
    pass


def need(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ForgeError(f"environment variable {name} is not set")
    return value


def call(method: str, url: str, headers: dict[str, str], body: dict[str, str] | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    for key, value in {**headers, "Accept": "application/json"}.items():
        req.add_header(key, value)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")[:500]
        raise ForgeError(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise ForgeError(f"{method} {url}: {exc.reason}") from exc
    return json.loads(text) if text.strip() else None


class Forge:
    """The three calls: list a PR's comments, create one, edit one."""

    def __init__(self, kind: str, env_token: str) -> None:
        self.kind = kind
        if kind == "gitlab":
            api = need("CI_API_V4_URL").rstrip("/")
            project = urllib.parse.quote(need("CI_PROJECT_ID"), safe="")
            self.list_url = (
                f"{api}/projects/{project}/merge_requests/{need('CI_MERGE_REQUEST_IID')}/notes"
            )
            self.edit_url = self.list_url + "/{id}"
            self.edit_method = "PUT"
            self.headers = {"PRIVATE-TOKEN": env_token}
        else:  # GitHub and Gitea/Forgejo share the issue-comment API shape
            api = need("GITHUB_API_URL").rstrip("/")
            repo = need("GITHUB_REPOSITORY")
            self.list_url = f"{api}/repos/{repo}/issues/{need('PR_NUMBER')}/comments"
            self.edit_url = f"{api}/repos/{repo}/issues/comments/{{id}}"
            self.edit_method = "PATCH"
            self.headers = {"Authorization": f"token {env_token}"}

    def comments(self):
        for page in range(1, MAX_PAGES + 1):
            query = {"page": str(page), "per_page": str(PAGE_SIZE), "limit": str(PAGE_SIZE)}
            batch = call("GET", f"{self.list_url}?{urllib.parse.urlencode(query)}", self.headers)
            if not isinstance(batch, list):
                raise ForgeError(f"GET {self.list_url}: expected a list of comments")
            yield from batch
            if len(batch) < PAGE_SIZE:
                return

    def post(self, body: str) -> tuple[str, object]:
        for comment in self.comments():
            if str(comment.get("body", "")).startswith(MARKER):
                url = self.edit_url.format(id=comment["id"])
                call(self.edit_method, url, self.headers, {"body": body})
                return "updated", comment["id"]
        made = call("POST", self.list_url, self.headers, {"body": body})
        return "posted", (made or {}).get("id")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("github", "gitea", "gitlab"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    kind, path = argv
    try:
        with open(path, encoding="utf-8") as f:
            body = f.read()
        if not body.startswith(MARKER):
            raise ForgeError(f"{path}: not `fleetkeeper plan --format markdown` output")
        if len(body) > MAX_BODY:
            cut = body.rfind("\n", 0, MAX_BODY - 200)
            body = body[:cut] + "\n\n_(cut: the whole plan is in the job log)_\n"
        what, comment_id = Forge(kind, need("FORGE_TOKEN")).post(body)
    except OSError as exc:
        print(f"post_plan_comment: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ForgeError as exc:
        print(f"post_plan_comment: {exc}", file=sys.stderr)
        return 1
    print(f"post_plan_comment: {what} comment {comment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
