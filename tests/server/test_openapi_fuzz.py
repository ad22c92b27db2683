"""Property-based run over the server's own OpenAPI document (schemathesis): no input gives a 5xx.

Every operation of /openapi.json gets a bounded number of generated requests, schema-conforming
(positive) and schema-violating (negative), sent through real HTTP to a live loopback server with
both models. (Schemathesis' strategies are used through plain hypothesis `given`: its pytest plugin
does not run under the pytest of this project.) Generation is derandomized, so every run generates the
same requests from the same document: the layouts of `live` that serve the same document are sent the
requests generated for the first of them (`GENERATED`), instead of generating them again.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
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

# {OpenAPI document: the requests generated for each operation and mode}, filled by the first layout that serves it
GENERATED: dict[str, list[tuple[GenerationMode, list[schemathesis.Case]]]] = {}


def fuzz(op: Any, mode: GenerationMode,
         send: Callable[[schemathesis.Case, GenerationMode], None]) -> list[schemathesis.Case]:
    """Send MAX_EXAMPLES generated requests of one operation; return them, as sent."""
    sent: list[schemathesis.Case] = []

    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
    @given(case=op.as_strategy(mode))
    def run(case: schemathesis.Case) -> None:
        sent.append(case)
        send(case, mode)

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # e.g. no negative case for a bare GET
        run()
    return sent


@pytest.mark.slow
def test_no_input_gives_a_server_error(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 10
    session = requests.Session()
    failures: list[str] = []
    calls = 0

    def send(case: schemathesis.Case, mode: GenerationMode) -> None:
        """One request to this layout's server; a 5xx is recorded."""
        nonlocal calls
        calls += 1
        response = case.call(base_url=live.url, session=session, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{case.method} {case.path} {mode}: {case.body!r:.200} -> "
                            f"{response.status_code} {response.text[:200]}")

    document = json.dumps(schema.raw_schema, sort_keys=True)
    if document in GENERATED:
        for mode, cases in GENERATED[document]:
            for case in cases:
                send(case, mode)
    else:
        GENERATED[document] = [(mode, fuzz(op, mode, send))
                               for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    assert not failures, "\n".join(failures[:10])
    assert calls >= 10 * MAX_EXAMPLES
    assert httpx.get(live.url + "/health").status_code == 200
    assert 'status="500"' not in httpx.get(live.url + "/metrics").text
