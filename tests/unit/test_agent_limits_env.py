"""The pure parts of workload isolation and unpack limits (agent/isolation.py, agent/unpack.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.isolation import WORKLOAD_ENV, effective_user, with_user, workload_env
from agent.unpack import UNPACKED_RATIO, limits_for

AGENT_ENV = {
    "PATH": "/opt/bin:/usr/bin",
    "LANG": "de_DE.UTF-8",
    "FLEETKEEPER_BOOTSTRAP_TOKEN": "secret",
    "AWS_SECRET_ACCESS_KEY": "secret",
    "PYTHONPATH": "/srv/agent",
}


@pytest.mark.parametrize(
    ("extra", "agent_env", "want"),
    [
        (
            {},
            AGENT_ENV,
            {"PATH": "/opt/bin:/usr/bin", "HOME": "/h", "LANG": "de_DE.UTF-8", WORKLOAD_ENV: "w"},
        ),
        (  # run.env wins over the base ...
            {"PATH": "/x", "PORT": "8080"},
            AGENT_ENV,
            {"PATH": "/x", "HOME": "/h", "LANG": "de_DE.UTF-8", "PORT": "8080", WORKLOAD_ENV: "w"},
        ),
        (  # ... but not over the marker a later agent recognises its processes by
            {WORKLOAD_ENV: "other"},
            {},
            {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": "/h",
                "LANG": "C.UTF-8",
                WORKLOAD_ENV: "w",
            },
        ),
    ],
)
def test_workload_env_is_the_base_plus_run_env_only(
    extra: dict[str, str], agent_env: dict[str, str], want: dict[str, str]
) -> None:
    assert workload_env("w", extra, home="/h", agent_env=agent_env) == want


@pytest.mark.parametrize(
    ("workload", "default", "want"),
    [
        ({"run": {"command": ["x"]}}, None, None),
        ({"run": {"command": ["x"]}}, "fk-work", "fk-work"),
        ({"run": {"command": ["x"], "user": "app"}}, "fk-work", "app"),
        ({"kind": "model"}, "fk-work", "fk-work"),  # models have no run block
    ],
)
def test_run_user_wins_over_workload_user(
    workload: dict[str, Any], default: str | None, want: str | None
) -> None:
    assert effective_user(workload, default) == want
    assert (with_user(workload, default).get("run") or {}).get("user") == want


@pytest.mark.parametrize(
    ("archive", "declared", "max_bytes", "why"),
    [
        (611_691, None, 611_691 * UNPACKED_RATIO, "100 times its size of 611691 bytes"),
        (611_691, 4096, 4096, "declared unpackedSize of 4096 bytes"),
        (0, None, UNPACKED_RATIO, "100 times"),
    ],
)
def test_unpack_limit(archive: int, declared: int | None, max_bytes: int, why: str) -> None:
    limits = limits_for(archive, declared)
    assert limits.max_bytes == max_bytes
    assert why in limits.why
