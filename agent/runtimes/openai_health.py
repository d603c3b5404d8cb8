"""Health of an OpenAI-compatible model server: it lists the model and really completes.

A model server that answers HTTP but cannot generate (weights failed to load lazily, the
wrong model was loaded) is not healthy. The check is two requests against
``http://127.0.0.1:<port>``: ``GET /v1/models`` must list a model served from the expected
version directory, and ``POST /v1/completions`` with ``max_tokens: 1`` must return 200 with
a choice, both within the timeout. Never raises: every failure is an unhealthy result whose
message says what was asked and what came back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from agent.runtimes.base import HealthResult

COMPLETION_PROMPT = "Hello"
_BODY_SHOWN = 300


@dataclass(frozen=True)
class ServedModel:
    """What ``/v1/models`` said: the ids it listed and the one matching the expectation."""

    ids: tuple[str, ...]
    matched: str | None


def base_url(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def listed_ids(body: Any) -> tuple[str, ...]:
    """Model ids from an OpenAI ``/v1/models`` body (``{"data": [{"id": ...}]}``); pure."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return ()
    return tuple(str(m["id"]) for m in body["data"] if isinstance(m, dict) and "id" in m)


def served_from(model_id: str, version_marker: str) -> bool:
    """True when a listed id is a path inside ``.../<workload>/versions/<version>``.

    Both llama-cpp (``--model`` as given) and mlx-lm (the resolved ``--model`` path) list
    the model by its path, so the id itself proves which version directory was loaded.
    """
    normal = os.path.normpath(model_id)
    return normal == version_marker or normal.startswith(version_marker + os.sep)


def match_served(ids: Sequence[str], accept: Callable[[str], bool]) -> ServedModel:
    for model_id in ids:
        if accept(model_id):
            return ServedModel(tuple(ids), model_id)
    return ServedModel(tuple(ids), None)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _BODY_SHOWN else text[:_BODY_SHOWN] + "..."


def check_openai(
    port: int,
    timeout: float,
    accept: Callable[[str], bool],
    *,
    prompt: str = COMPLETION_PROMPT,
) -> HealthResult:
    """List models, then a one-token completion; healthy only when both succeed in time.

    ``accept`` decides whether a listed model id is the model this workload should serve.
    ``details`` carries ``models`` (ids listed), ``model`` (the matched id) and ``latency``
    (seconds for the completion) for the report. Long (~75 lines) because each of the two
    requests has its own refusals, each with its own message for people, in order.
    """
    url = base_url(port)
    deadline = time.monotonic() + max(timeout, 0.1)

    def left() -> float:
        return max(deadline - time.monotonic(), 0.05)

    try:
        with httpx.Client(timeout=left(), trust_env=False) as client:
            resp = client.get(f"{url}/v1/models", timeout=left())
            if resp.status_code != 200:
                return HealthResult(
                    False,
                    f"GET {url}/v1/models: HTTP {resp.status_code}: {_short(resp.text)}",
                    {"status": resp.status_code},
                )
            try:
                served = match_served(listed_ids(resp.json()), accept)
            except ValueError:
                return HealthResult(
                    False, f"GET {url}/v1/models: not JSON: {_short(resp.text)}", {}
                )
            if served.matched is None:
                return HealthResult(
                    False,
                    f"GET {url}/v1/models lists {list(served.ids)}, not the expected model",
                    {"models": list(served.ids)},
                )
            started = time.monotonic()
            resp = client.post(
                f"{url}/v1/completions",
                json={"prompt": prompt, "max_tokens": 1, "temperature": 0.0},
                timeout=left(),
            )
            latency = time.monotonic() - started
    except httpx.HTTPError as exc:
        return HealthResult(False, f"{url}: {type(exc).__name__}: {exc or 'no answer'}", {})
    details: dict[str, Any] = {
        "models": list(served.ids),
        "model": served.matched,
        "latency": round(latency, 3),
        "status": resp.status_code,
    }
    if resp.status_code != 200:
        return HealthResult(
            False,
            f"POST {url}/v1/completions: HTTP {resp.status_code}: {_short(resp.text)}",
            details,
        )
    try:
        choices = resp.json().get("choices")
    except (ValueError, AttributeError):
        choices = None
    if not isinstance(choices, list) or not choices:
        return HealthResult(
            False, f"POST {url}/v1/completions: no choices in {_short(resp.text)}", details
        )
    text = choices[0].get("text") if isinstance(choices[0], dict) else None
    details["completion"] = text if isinstance(text, str) else ""
    return HealthResult(
        True,
        f"{served.matched} answered a 1-token completion in {latency:.2f}s",
        details,
    )
