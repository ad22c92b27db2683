"""routes/ops.py: GET / HEAD /health (readiness, as load balancers and Kubernetes probes read it) and GET
/metrics (the Prometheus text exposition format, behind the API key unless in --public-paths).

Each readiness case is set on an app of its own (its state changed, then put back); the reference is the
documented reason of each case. tests/server/test_app.py covers the warm-up 503, the API key in front of
/metrics and the metric names; test_state.py the readiness lookups of the model routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from qwen_embed import Embedder
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.state import State


@pytest.fixture(scope="module")
def idle_app(small_embedder: Embedder) -> Iterator[tuple[TestClient, State]]:
    """An app of its own (its readiness is changed by the tests here), its lifespan run without a warm-up."""
    app = create_app(ServerSettings(embedding_model="emb", max_wait_ms=0, warmup=False), embedder=small_embedder)
    with TestClient(app) as client:
        state: State = app.state.qe
        deadline = time.monotonic() + 10
        while not state.ready and time.monotonic() < deadline:  # the lifespan's warm-up task (none) marks it
            time.sleep(0.001)
        yield client, state


@pytest.fixture
def idle(idle_app: tuple[TestClient, State]) -> Iterator[tuple[TestClient, State]]:
    """`idle_app`, ready; put back as it was after each test."""
    _, state = idle_app
    assert state.ready
    yield idle_app
    state.ready, state.draining, state.warmup_error = True, False, None
    run_flag(state, True)


def run_flag(state: State, ready: bool) -> None:
    """What a model process's client reports while its process restarts (the batcher reads `run.ready`)."""
    state.embedding.batcher.run.ready = ready  # type: ignore[union-attr]


def test_health_is_ok_once_ready(idle: tuple[TestClient, State]) -> None:
    client, _ = idle
    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"} and "retry-after" not in r.headers
    assert client.head("/health").status_code == 200


@pytest.mark.parametrize(("case", "reason"), [
    ("warming up", "warming up"),
    ("warm-up failed", "RuntimeError: CUDA out of memory"),
    ("restarting", "the model process of emb is restarting"),
    ("draining", "shutting down"),
    ("draining while restarting", "shutting down"),  # draining wins: the client must go elsewhere
])
def test_health_is_503_naming_why(idle: tuple[TestClient, State], case: str, reason: str) -> None:
    client, state = idle
    if case == "warming up":
        state.ready = False
    if case == "warm-up failed":
        state.ready, state.warmup_error = False, "RuntimeError: CUDA out of memory"
    if "restarting" in case:
        run_flag(state, False)
    if "draining" in case:
        state.draining = True
    for method in ("GET", "HEAD"):  # load balancers probe with HEAD
        r = client.request(method, "/health")
        assert r.status_code == 503 and r.headers["retry-after"] == "1", (method, r.headers)
    err = client.get("/health").json()["error"]
    assert err == {"message": f"not ready: {reason}", "type": "service_unavailable", "param": None,
                   "code": "not_ready"}


def test_health_turns_ok_again_when_the_model_process_is_back(idle: tuple[TestClient, State]) -> None:
    client, state = idle
    run_flag(state, False)
    assert client.get("/health").status_code == 503
    run_flag(state, True)
    assert client.get("/health").status_code == 200


def test_metrics_is_the_prometheus_text_format(api: TestClient) -> None:
    assert api.post("/embed", json={"inputs": "hello"}).status_code == 200
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert families["qwen_embed_requests"].type == "counter"
    served = [s for s in families["qwen_embed_requests"].samples
              if s.name == "qwen_embed_requests_total" and s.labels == {"route": "/embed", "status": "200"}]
    assert len(served) == 1 and served[0].value >= 1
    assert families["qwen_embed_inference_seconds"].type == "histogram"


def test_metrics_listed_in_public_paths_needs_no_key(small_embedder: Embedder) -> None:
    settings = ServerSettings(embedding_model="emb", api_key="k", public_paths=("/health", "/metrics"), warmup=False)
    with TestClient(create_app(settings, embedder=small_embedder)) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/health").status_code == 200
        assert client.get("/v1/models").status_code == 401  # the rest stays behind the key


def test_tokenize_needs_no_ready_model_with_or_without_a_prompt_name(idle: tuple[TestClient, State]) -> None:
    """/tokenize uses the tokenizer and the model folder's prompts, not the model: while the model process
    restarts it answers as when ready, with a prompt_name too (that one answered 503)."""
    client, state = idle
    bodies = [{"inputs": "capital of China"}, {"inputs": "capital of China", "prompt_name": "query"}]
    ready = [client.post("/tokenize", json=b).json() for b in bodies]
    run_flag(state, False)
    assert client.get("/health").status_code == 503  # the model is down ...
    restarting = [client.post("/tokenize", json=b) for b in bodies]
    assert [r.status_code for r in restarting] == [200, 200]  # ... and tokenizing goes on
    assert [r.json() for r in restarting] == ready
