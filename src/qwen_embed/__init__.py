"""qwen-embed: fast, exact Qwen3 Embedding and Reranker.

    from qwen_embed import Embedder, Reranker
    emb = Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
    q = emb.encode_queries(["What is the capital of China?"])
    d = emb.encode_documents(["The capital of China is Beijing."])
    scores = q @ d.T                      # or qwen_embed.similarity(q, d): cosine, numpy or torch
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import QwenEmbedError

if TYPE_CHECKING:
    from .embedder import DEFAULT_INSTRUCTION, Embedder, format_query
    from .pooling import similarity
    from .reranker import Reranker, RerankResult

__all__ = ["DEFAULT_INSTRUCTION", "Embedder", "QwenEmbedError", "RerankResult", "Reranker", "format_query",
           "similarity"]
__version__ = "0.1.0"

_LAZY = {"DEFAULT_INSTRUCTION": "embedder", "Embedder": "embedder", "format_query": "embedder",
         "Reranker": "reranker", "RerankResult": "reranker", "similarity": "pooling"}


def __getattr__(name: str) -> Any:
    """Import torch-heavy modules on first use, so that `qwen-embed --help` starts fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
