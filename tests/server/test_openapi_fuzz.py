"""Property-based run over the server's own OpenAPI document (schemathesis): no input gives a 5xx.

Every operation of /openapi.json gets a bounded number of generated requests, schema-conforming
(positive) and schema-violating (negative), sent through real HTTP to a live loopback server with
both models. (Schemathesis' strategies are used through plain hypothesis `given`: its pytest plugin
does not run under the pytest of this project.)
"""

from __future__ import annotations

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode

from .conftest import LiveServer

MAX_EXAMPLES = 25


def test_no_input_gives_a_server_error(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    session = requests.Session()
    failures: list[str] = []
    calls = 0
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.generate])
            @given(case=op.as_strategy(mode))
            def run(case: schemathesis.Case) -> None:
                nonlocal calls
                calls += 1
                response = case.call(base_url=live.url, session=session, timeout=30)
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.path} {mode}: {case.body!r:.200} -> "
                                    f"{response.status_code} {response.text[:200]}")

            try:
                run()
            except hypothesis.errors.Unsatisfiable:
                pass  # e.g. no negative case exists for a GET without parameters
    assert not failures, "\n".join(failures[:10])
    assert calls >= 10 * MAX_EXAMPLES
    assert httpx.get(live.url + "/health").status_code == 200
    assert 'status="500"' not in httpx.get(live.url + "/metrics").text
