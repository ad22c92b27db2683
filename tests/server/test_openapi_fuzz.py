"""Property-based run over the server's own OpenAPI document (schemathesis): no input gives a 5xx.

Every operation of /openapi.json gets a bounded number of generated requests, schema-conforming
(positive) and schema-violating (negative), sent through real HTTP to a live loopback server with
both models. (Schemathesis' strategies are used through plain hypothesis `given`: its pytest plugin
does not run under the pytest of this project.)
"""

from __future__ import annotations

import contextlib
from typing import Any

import httpx
import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from .conftest import LiveServer

MAX_EXAMPLES = 25


def fuzz(op: Any, mode: GenerationMode, url: str, session: requests.Session, failures: list[str]) -> int:
    """Send MAX_EXAMPLES generated requests of one operation; record any 5xx; return the number sent."""
    calls = 0

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @given(case=op.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=url, session=session, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} {mode}: {case.body!r:.200} -> "
                            f"{response.status_code} {response.text[:200]}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # e.g. no negative case for a bare GET
        run()
    return calls


@pytest.mark.slow
def test_no_input_gives_a_server_error(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    session = requests.Session()
    failures: list[str] = []
    calls = sum(fuzz(op, mode, live.url, session, failures)
                for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE))
    assert not failures, "\n".join(failures[:10])
    assert calls >= 10 * MAX_EXAMPLES
    assert httpx.get(live.url + "/health").status_code == 200
    assert 'status="500"' not in httpx.get(live.url + "/metrics").text
