"""Node rows of ``fleetkeeper status`` and the dashboard show which model runtimes can start."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.views.view import node_rows


@pytest.mark.parametrize(
    ("facts", "want"),
    [
        (
            {"accelerator": "cuda", "runtimes": {"llama-cpp": True, "mlx-lm": False}},
            "cuda +llama-cpp",
        ),
        (
            {"accelerator": "metal", "runtimes": {"mlx-lm": True, "llama-cpp": True}},
            "metal +llama-cpp,mlx-lm",
        ),
        ({"accelerator": "cpu", "runtimes": {"llama-cpp": False}}, "cpu"),
        ({"accelerator": "cpu"}, "cpu"),
        ({}, "-"),
    ],
)
def test_accelerator_column_lists_usable_runtimes(facts: dict[str, Any], want: str) -> None:
    status = {"nodes": [{"node": "n1", "health": "Healthy", "workloads": [], **facts}]}
    (row,) = node_rows(status, 0.0)
    assert row.accelerator == want
