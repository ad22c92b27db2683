"""Search: embed the query with the query template, retrieve candidates, rerank them when asked.

Candidates are chunks; they are merged per document (the best chunk stands for its document), so a
hit is a document. Without a reranker the score is the cosine similarity of query and chunk; with one
it is the reranker's probability of "yes" for (query, title + chunk), and the cosine similarity is
kept as `retrieval_score`. The reranker gets the same instruction as the query embedding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..embedder import Embedder
from ..errors import InputError, is_whole
from ..pooling import rank_by_score
from ..reranker import Reranker
from ..store import StoreHit, VectorStore, bind_where
from ..tokenizer import document_text

DEFAULT_K = 10
DEFAULT_CANDIDATES = 100


@dataclass(frozen=True)
class Hit:
    """One search result: a document, represented by its best-matching chunk."""

    id: str
    score: float
    title: str
    text: str
    chunk: int
    retrieval_score: float
    rerank_score: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "score": self.score, "title": self.title, "text": self.text,
                             "chunk": self.chunk, "retrieval_score": self.retrieval_score}
        if self.rerank_score is not None:
            d["rerank_score"] = self.rerank_score
        d["metadata"] = dict(self.metadata or {})  # always there (empty without metadata): one shape to read
        return d


def _check_count(name: str, value: int) -> int:
    if not is_whole(value, 1):
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def best_per_document(hits: list[StoreHit], n: int) -> list[StoreHit]:
    """The first (best) chunk of each document, at most n, in order."""
    seen: set[str] = set()
    out = []
    for h in hits:
        if h.doc_id not in seen:
            seen.add(h.doc_id)
            out.append(h)
            if len(out) == n:
                break
    return out


def passage(title: str, text: str) -> str:
    """What the reranker reads for a chunk: title and text joined as for embedding (`document_text`)."""
    return document_text(title, text)


def search(store: VectorStore, embedder: Embedder, query: str, *, k: int = DEFAULT_K,
           reranker: Reranker | None = None, candidates: int = DEFAULT_CANDIDATES, instruction: str | None = None,
           where: str | None = None, exact: bool = False, nprobes: int | None = None,
           rescore_multiplier: int | None = None, params: dict[str, Any] | None = None) -> list[Hit]:
    """Ranked hits for `query` (see the module docstring). `where` is one SQL expression over the metadata
    columns; its `:name` placeholders take `params` values as quoted literals (`store.bind_where`)."""
    _check_count("k", k)
    _check_count("candidates", candidates)
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"the query must be a non-empty string, got {query!r:.60}")
    where = bind_where(where, params)
    instr = instruction or store.info.query_instruction
    qvec = embedder.encode([query], instruction=instr, dim=store.info.dim)[0]
    n = max(k, candidates) if reranker is not None else k
    limit = 2 * n  # chunks merge into documents: 2n chunks hold n documents unless some have many top chunks
    while True:
        raw = store.search(qvec, limit, where=where, exact=exact, nprobes=nprobes,
                           rescore_multiplier=rescore_multiplier)
        found = best_per_document(raw, n)
        if len(found) == n or len(raw) < limit:  # enough documents, or the table (or filter) has no more
            break
        limit *= 4
    if reranker is None or not found:
        return [Hit(h.doc_id, h.score, h.title, h.text, h.chunk, h.score, None, h.metadata) for h in found[:k]]
    scores = reranker.score(query, [passage(h.title, h.text) or h.doc_id for h in found], instruction=instr)
    order = rank_by_score(scores)[:k]
    return [Hit(found[i].doc_id, float(scores[i]), found[i].title, found[i].text, found[i].chunk, found[i].score,
                float(scores[i]), found[i].metadata) for i in order]
