"""Route fixtures: one in-process app over both small models, driven through fastapi's TestClient.

No socket and no uvicorn: the TestClient runs the app's lifespan (batchers started, no warm-up) in a
thread of its own and sends each request straight to the ASGI app, ~5 ms a request. The app serves the
small embedder (64-token context) as `emb` and the small reranker (256-token context) as `rr` with the
default limits, so the route tests compare its answers with those models called in-process.

This folder has no `__init__.py`, like tests/server: under `--import-mode=importlib` its modules are
`tests.server.routes.*`, and the fixtures of tests/conftest.py and tests/server/conftest.py apply here.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app

EMB, RR = "emb", "rr"  # the served names


@pytest.fixture(scope="session")
def api(small_embedder: Embedder, small_reranker: Reranker) -> Iterator[TestClient]:
    """Both small models behind the full app (middleware, handlers, every route), default limits; a 0 ms
    batching window (a lone request is not held back for others); shared by every route test."""
    settings = ServerSettings(embedding_model=EMB, reranker_model=RR, max_wait_ms=0, warmup=False)
    with TestClient(create_app(settings, embedder=small_embedder, reranker=small_reranker)) as client:
        yield client
