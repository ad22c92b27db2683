"""Server fixtures: a live uvicorn on 127.0.0.1 around the small models of tests/conftest.py.

`LiveServer(app)` runs uvicorn in a thread on a free loopback port (a real socket, so the official
openai client and concurrent httpx clients go through HTTP) and waits for /health to say ready.
`LiveServer(app, settings)` runs it as `qwen-embed serve` does (serving.py: connection limits, drain).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from qwen_embed import Embedder, Reranker
from qwen_embed.server import ServerSettings, create_app
from qwen_embed.server.serving import DrainingServer, uvicorn_config


class LiveServer:
    """uvicorn serving `app` in a background thread; `url` is its base address."""

    def __init__(self, app: FastAPI, settings: ServerSettings | None = None) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        if settings is None:
            self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        else:
            self.server = DrainingServer(uvicorn_config(app, settings.with_overrides(log_level="warning")),
                                         on_drain=app.state.qe.begin_drain)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.started:
                try:
                    if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise TimeoutError("the test server did not become ready in 60 s")

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()


@pytest.fixture(scope="session", params=["in-process", pytest.param("model-processes", marks=pytest.mark.slow)])
def live(request: pytest.FixtureRequest, small_embedder: Embedder, small_reranker: Reranker,
         small_embedding_path: Path, small_reranker_path: Path) -> Iterator[LiveServer]:
    """Both models, default limits, a 10 ms batching window; the models in this process, or (slow) in
    model processes, two per model (`--devices cpu,cpu`), answered under the names the
    in-process variant uses. One server of each variant per test session (per pytest worker), shared by
    the modules that take it: starting the four model processes costs seconds each time."""
    if request.param == "in-process":
        settings = ServerSettings(embedding_model="emb", reranker_model="rr", max_wait_ms=10, max_length=64)
        app = create_app(settings, embedder=small_embedder, reranker=small_reranker)
    else:
        settings = ServerSettings(embedding_model=str(small_embedding_path), reranker_model=str(small_reranker_path),
                                  embedding_name="emb", reranker_name="rr", max_wait_ms=10, max_length=64)
        app = create_app(settings, devices=["cpu", "cpu"], max_lengths={"reranker": 256})
    with LiveServer(app) as srv:
        yield srv
