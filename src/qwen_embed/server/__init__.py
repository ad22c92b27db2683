"""HTTP server: OpenAI embeddings, Cohere/Jina rerank and TEI routes over one batcher per model.

    from qwen_embed.server import ServerSettings, create_app
    app = create_app(ServerSettings(embedding_model="m"), embedder=Embedder.from_pretrained("m"))
    app = create_app(ServerSettings(embedding_model="m"), devices=["cuda:0", "cuda:1"])  # model processes

Modules, in the order a request meets them: serving (uvicorn with connection limits and the drain),
middleware (auth, body size, metrics, disconnects), routes/ (one module per API), state (model
lookup, readiness), service (tokenize -> batch -> finish per model), batcher (async dynamic batching
with backpressure), model_pool (`serve --devices`: a model process per device behind the batcher's
`run`, batches sent by load), model_process (one model in a child process); for `serve --workers N`:
supervisor (HTTP worker processes on one socket, model processes, restarts, drain), model_server (a model
process with its batcher), remote (a worker's batcher interface over the model processes), wire (their
frames), board (shared-memory counters: global admission, readiness, load); beside
them settings (flags + QWEN_EMBED_* variables), schemas (request / response bodies), errors and
handlers (the OpenAI error shape, one table of statuses), facts (a model's tokenizer, config and
limits without its weights), pools (every thread), metrics (Prometheus),
app (`create_app`) and cli (`qwen-embed serve`).
The names below are imported lazily, so that `qwen-embed --help` does not load FastAPI or torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(name)
