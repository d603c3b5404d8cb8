"""Local policy: what this node runs and downloads, whatever a document says (pure).

Set only in the agent's own config (``allowedPrograms``, ``allowInsecureURLs``,
``allowFileURLs``); a desired-state document cannot widen it. The defaults are safe: a
program must live inside the version directory the artifact unpacked into, and artifacts
come over https.
"""

from __future__ import annotations

import posixpath
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LocalPolicy:
    allowed_programs: frozenset[str] = frozenset()
    allow_insecure_urls: bool = False
    allow_file_urls: bool = False


def program_violation(program: str, policy: LocalPolicy) -> str | None:
    """Why ``program`` may not be started (None: it may)."""
    if program in policy.allowed_programs:
        return None
    if posixpath.isabs(program):
        return f"program {program!r} is outside the version directory"
    if "/" not in program:
        # a bare name would be looked up on PATH when the artifact does not hold it
        return f"program {program!r} is a bare name (write ./{program} for the artifact's own)"
    if posixpath.normpath(program).split("/")[0] == "..":
        return f"program {program!r} escapes the version directory"
    return None


def url_violation(url: str, policy: LocalPolicy) -> str | None:
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme == "https":
        return None
    if scheme == "http" and policy.allow_insecure_urls:
        return None
    if scheme == "file":
        return None if policy.allow_file_urls else "file:// artifact URLs need allowFileURLs: true"
    return f"{scheme}:// artifact URLs need allowInsecureURLs: true"


def document_violations(document: Mapping[str, Any], policy: LocalPolicy) -> list[str]:
    """Every breach of ``policy`` in a desired-state document, each naming its workload."""
    problems = []
    for w in document.get("workloads") or []:
        name = w.get("name")
        commands = {
            "run.command": (w.get("run") or {}).get("command"),
            "versionProbe": w.get("versionProbe"),
        }
        for field, argv in commands.items():
            if argv:
                why = program_violation(str(argv[0]), policy)
                if why:
                    problems.append(f"workload {name!r} {field}: {why} (allowedPrograms)")
        url = (w.get("artifact") or {}).get("url")
        if isinstance(url, str):
            why = url_violation(url, policy)
            if why:
                problems.append(f"workload {name!r} artifact: {why}")
    return problems
