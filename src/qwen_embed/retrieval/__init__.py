"""Retrieval: read sources, chunk, embed and upsert into a vector store; search and rerank.

    from qwen_embed.retrieval import Index, read_sources
    index = Index.open("my-db")                       # Qwen/Qwen3-Embedding-0.6B by default
    index.add(read_sources(["docs/"]).documents)
    for hit in index.search("how do I ...", k=5):
        print(hit.id, hit.score, hit.title)

Names are imported on first use, so that importing `qwen_embed.retrieval.cli` (for `qwen-embed --help`)
does not load torch or lancedb.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chunking import ChunkSettings, split_texts
    from .index import DEFAULT_TABLE, Index, IndexReport, doc_hash
    from .search import Hit, search
    from .sources import Document, SourceReport, read_sources

_LAZY = {"ChunkSettings": "chunking", "split_texts": "chunking", "DEFAULT_TABLE": "index", "Index": "index",
         "IndexReport": "index", "doc_hash": "index", "Hit": "search", "search": "search", "Document": "sources",
         "SourceReport": "sources", "read_sources": "sources"}
__all__ = ["DEFAULT_TABLE", "ChunkSettings", "Document", "Hit", "Index", "IndexReport", "SourceReport", "doc_hash",
           "read_sources", "search", "split_texts"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
