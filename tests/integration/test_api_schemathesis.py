"""Property-based API test: schemathesis drives the live server from its /openapi.json.

Every operation gets a bounded number of generated requests, valid and invalid
(schemathesis' positive and negative modes); none may answer 500 or break its documented
schema, status codes, content types or headers. (schemathesis' pytest plugin is not used:
hypothesis' ``@given`` over each operation's strategy does the same and keeps the test
independent of the plugin's pytest integration.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.api.openapi import openapi_document
from tests.helpers.server import RunningServer, running_server

MAX_EXAMPLES = 40
# Unknown query parameters are ignored on purpose (newer agents may send more), and
# _prepare adds the credentials a negative case may have dropped: so negative data is
# checked for "no 500, documented answer", not for "always rejected".
EXCLUDED = [schemathesis.checks.negative_data_rejection]
FUZZ_NODE = "node-a"  # owns the token the node endpoints are called with
FUZZ_REGISTER = "fuzz-reg"  # re-registered over and over (rotating its own token only)
OPERATIONS = sorted(
    (method.upper(), path) for path, item in openapi_document()["paths"].items() for method in item
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp_path_factory.mktemp("schemathesis")) as server:
        server.register(FUZZ_NODE)
        yield server


@pytest.fixture(scope="module")
def api_schema(live: RunningServer) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def _prepare(case: Any, live: RunningServer) -> dict[str, str]:
    """Credentials that let the request reach validation (else it would stop at 401)."""
    path = case.path
    if path.startswith("/v1/nodes/"):
        register = path.endswith("/register")
        node = FUZZ_REGISTER if register else FUZZ_NODE
        token = live.bootstrap_token if register else live.tokens[FUZZ_NODE]
        case.path_parameters["node"] = node
        if isinstance(case.body, dict) and "node" in case.body:
            case.body["node"] = node
        if isinstance(case.query, dict) and "wait" in case.query:
            case.query["wait"] = 0  # long-polls would only slow the run down
        return {"Authorization": f"Bearer {token}"}
    if path.startswith("/v1/"):
        return {"Authorization": f"Bearer {live.admin_token}"}
    return {}


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_conforms(method: str, path: str, api_schema: Any, live: RunningServer) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )
    seen: list[int] = []

    @given(case=cases)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        headers = _prepare(case, live)
        response = case.call_and_validate(headers=headers, timeout=10, excluded_checks=EXCLUDED)
        assert response.status_code < 500
        seen.append(response.status_code)

    run()
    assert seen, "no request was made"
