"""Retrieval: read sources, chunk, embed and upsert into a vector store; search and rerank.

    from qwen_embed.retrieval import Index, read_sources
    index = Index.open("my-db")                       # Qwen/Qwen3-Embedding-0.6B by default
    index.add(read_sources(["docs/"]).documents)
    for hit in index.search("how do I ...", k=5):
        print(hit.id, hit.score, hit.title)
"""

from .chunking import ChunkSettings, split_texts
from .index import DEFAULT_TABLE, Index, IndexReport, doc_hash
from .search import Hit, search
from .sources import Document, SourceReport, read_sources

__all__ = ["DEFAULT_TABLE", "ChunkSettings", "Document", "Hit", "Index", "IndexReport", "SourceReport", "doc_hash",
           "read_sources", "search", "split_texts"]
