"""HTTP server: OpenAI embeddings, Cohere/Jina rerank and TEI routes over one batcher per model.

    from qwen_embed.server import ServerSettings, create_app
    app = create_app(ServerSettings(embedding_model="m"), embedder=Embedder.from_pretrained("m"))

Modules: settings (flags + QWEN_EMBED_* variables), schemas (request / response bodies), batcher
(async dynamic batching with backpressure), service (tokenize -> batch -> finish per model),
metrics (Prometheus), errors (OpenAI error shape), app (routes, middleware), cli (`qwen-embed serve`).
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
