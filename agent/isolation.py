"""What a workload process gets from the agent: a clean environment and, optionally, its own
unprivileged user.

A workload never inherits the agent's environment (it holds ``FLEETKEEPER_BOOTSTRAP_TOKEN``
and whatever the service manager passed in). It gets exactly::

    PATH, HOME, LANG            a small base (PATH and LANG from the agent, HOME of the user)
    FLEETKEEPER_WORKLOAD        its own name (lets a later agent recognise it)
    run.env                     what the release gives (wins over the base)

With ``run.user`` (release) or ``workloadUser`` (agent config) the process runs as that user
with that user's primary group and supplementary groups (``initgroups``); the agent's state
directory is 0700 and owned by the agent, so the workload cannot read the node token.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import grp
import os
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.errors import WorkloadError

WORKLOAD_ENV = "FLEETKEEPER_WORKLOAD"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
DEFAULT_LANG = "C.UTF-8"
# prctl(2): clear the ambient capability set (Linux >= 4.3).
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


@dataclass(frozen=True)
class WorkloadUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def lookup_user(name: str) -> WorkloadUser:
    """The account ``name`` (or a numeric uid) from the user database, with its groups."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except (KeyError, OverflowError) as exc:
        raise WorkloadError(
            f"workload user {name!r} does not exist on this node; create it "
            "(useradd --system --no-create-home NAME) or change run.user / workloadUser"
        ) from exc
    groups = tuple(g.gr_gid for g in grp.getgrall() if entry.pw_name in g.gr_mem)
    return WorkloadUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def effective_user(workload: Mapping[str, Any], default: str | None) -> str | None:
    """``run.user`` of the workload, else the agent's ``workloadUser`` (pure)."""
    run = workload.get("run") or {}
    user = run.get("user") if isinstance(run, Mapping) else None
    return str(user) if user else default


def with_user(workload: Mapping[str, Any], default: str | None) -> Mapping[str, Any]:
    """``workload`` with ``run.user`` filled in from ``default`` when it has none (pure)."""
    user = effective_user(workload, default)
    if user is None:
        return workload
    run = dict(workload.get("run") or {})
    run["user"] = user
    return {**workload, "run": run}


def workload_env(
    name: str,
    extra: Mapping[str, str],
    *,
    home: str,
    agent_env: Mapping[str, str],
) -> dict[str, str]:
    """The whole environment of workload ``name`` (pure): base, then ``extra`` (run.env and
    what the runtime adds), then the marker, which a release cannot override."""
    base = {
        "PATH": agent_env.get("PATH") or DEFAULT_PATH,
        "HOME": home,
        "LANG": agent_env.get("LANG") or DEFAULT_LANG,
    }
    return {**base, **extra, WORKLOAD_ENV: name}


def own_home() -> str:
    """The agent user's home directory from the user database ("/" when it has none)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or "/"
    except KeyError:
        return "/"


def popen_user_kwargs(user: WorkloadUser | None) -> dict[str, Any]:
    """``subprocess.Popen`` arguments that start the child as ``user`` (setgid, setgroups,
    setuid in the child, before exec); empty for "run as the agent"."""
    if user is None:
        return {}
    kwargs: dict[str, Any] = {
        "user": user.uid,
        "group": user.gid,
        "extra_groups": list(user.groups),
    }
    if os.geteuid() != 0 and _has_ambient_caps():
        # A non-root agent holding CAP_SETUID as an *ambient* capability (the systemd unit)
        # would pass it on through exec: clear it in the child so the workload holds none.
        kwargs["preexec_fn"] = _ambient_clearer()
    return kwargs


def _has_ambient_caps() -> bool:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("CapAmb:"):
                    return int(line.split()[1], 16) != 0
    except OSError:
        pass
    return False


def _ambient_clearer() -> Callable[[], None]:
    # libc is loaded here, in the parent: the child between fork and exec only calls prctl.
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl

    def clear() -> None:
        if prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAP_AMBIENT_CLEAR_ALL) failed")

    return clear
