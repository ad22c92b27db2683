"""Tests of `qwen_embed.retrieval.search`: query embedding, per-document merging, reranking, argument checks.

Reference: hands-worked rankings over known unit vectors (cosines computed by hand and again with numpy,
"sort by score, ties in input order"), the module docstring and docs/retrieval.md (`qwen-embed search`: a
hit is a document represented by its best chunk; `k` hits; the reranker reads title + text with the same
instruction and its P(yes) becomes the score, the cosine kept as `retrieval_score`). The store is a real
LanceStore holding those vectors; the embedder and the reranker are fakes at their seams (`encode`,
`score`) that return known values and record what they were asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import InputError
from qwen_embed.retrieval.search import Hit, best_per_document, passage, search
from qwen_embed.store import ChunkRows, LanceStore, StoreHit, TableInfo, open_store

DIM = 4
INSTRUCTION = "Given a test query, retrieve the test documents"
Q = np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32)


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float32)
    return a / np.linalg.norm(a)


# (doc_id, chunk, title, text, vector, topic); cosines with Q by hand: 1, 0.8, 0.6, 0, -1
FIVE = [
    ("b", 0, "Bée", "zweite Wahl 0.6", unit(0.6, 0.8, 0, 0), "x"),
    ("a", 0, "Alpha", "the best one", unit(1, 0, 0, 0), "y"),
    ("d", 0, "", "opposite", unit(-1, 0, 0, 0), "it's"),
    ("c", 0, "Gamma 日本", "orthogonal", unit(0, 1, 0, 0), "it's"),
    ("e", 0, "Epsilon", "runner-up 0.8", unit(0.8, 0.6, 0, 0), "y"),
]
FIVE_ORDER = ["a", "e", "b", "c", "d"]
FIVE_COS = [1.0, 0.8, 0.6, 0.0, -1.0]


class FakeEmbedder:
    """`encode` at the seam: the query's known vector, and a record of what was asked."""

    def __init__(self, vector: np.ndarray = Q) -> None:
        self.vector = vector
        self.calls: list[tuple[list[str], str | None, int | None]] = []

    def encode(self, texts: Sequence[str], *, instruction: str | None = None, dim: int | None = None,
               **_: Any) -> np.ndarray:
        self.calls.append((list(texts), instruction, dim))
        return np.stack([self.vector[:dim] if dim else self.vector] * len(texts))


class FakeReranker:
    """`score` at the seam: a known P(yes) per passage text (0 when unknown), and a record of the calls."""

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores
        self.calls: list[tuple[str, list[str], str | None]] = []

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
              **_: Any) -> np.ndarray:
        self.calls.append((query, list(documents), instruction))
        return np.asarray([self.scores.get(d, 0.0) for d in documents], dtype=np.float32)


def make_store(tmp_path: Path, rows: list[tuple[str, int, str, str, np.ndarray, str]]) -> LanceStore:
    info = TableInfo(model="fake-model", dim=DIM, hidden_size=DIM, tokenizer_fingerprint="t",
                     query_instruction=INSTRUCTION, chunk_tokens=512, overlap=0, max_length=8192)
    store = open_store(tmp_path / "db", "documents", info)
    doc_ids = list(dict.fromkeys(r[0] for r in rows))
    store.replace_documents(doc_ids, ChunkRows(
        ids=[f"{r[0]}#{r[1]}" for r in rows], doc_ids=[r[0] for r in rows], chunks=[r[1] for r in rows],
        texts=[r[3] for r in rows], titles=[r[2] for r in rows], hashes=["h"] * len(rows),
        metadata=[{"topic": r[5]} for r in rows], vectors=np.stack([r[4] for r in rows]).astype(np.float32)))
    return store


@pytest.fixture
def five(tmp_path: Path) -> LanceStore:
    return make_store(tmp_path, FIVE)


def run(store: LanceStore, emb: FakeEmbedder, query: str = "q", **kw: Any) -> list[Hit]:
    return search(store, cast(Embedder, emb), query, **kw)


def test_the_ranking_is_the_cosine_order_worked_by_hand(five: LanceStore) -> None:
    emb = FakeEmbedder()
    hits = run(five, emb, "wie geht's? 日本", k=3)
    vecs = np.stack([r[4] for r in FIVE])
    cos = vecs @ Q  # [5]
    by_numpy = [FIVE[i][0] for i in sorted(range(len(FIVE)), key=lambda i: (-cos[i], i))]
    assert by_numpy == FIVE_ORDER
    assert [h.id for h in hits] == FIVE_ORDER[:3]
    np.testing.assert_allclose([h.score for h in hits], FIVE_COS[:3], atol=1e-6)
    assert all(h.retrieval_score == h.score and h.rerank_score is None for h in hits)
    assert (hits[0].title, hits[0].text, hits[0].chunk, hits[0].metadata) == ("Alpha", "the best one", 0,
                                                                              {"topic": "y"})
    assert emb.calls == [(["wie geht's? 日本"], INSTRUCTION, DIM)]  # the table's instruction and dimension


@pytest.mark.parametrize("k", [5, 6, 1000])
def test_k_at_or_above_the_corpus_size_returns_every_document_once(five: LanceStore, k: int) -> None:
    hits = run(five, FakeEmbedder(), k=k)
    assert [h.id for h in hits] == FIVE_ORDER
    np.testing.assert_allclose([h.score for h in hits], FIVE_COS, atol=1e-6)


@pytest.mark.parametrize("name", ["k", "candidates"])
@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, "3", None])
def test_a_bad_count_is_one_line_naming_it_before_any_embedding(five: LanceStore, name: str, value: Any) -> None:
    emb = FakeEmbedder()
    with pytest.raises(InputError) as err:
        run(five, emb, **{name: value})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(name) and repr(value) in msg and "positive integer" in msg
    assert emb.calls == []


@pytest.mark.parametrize("query", ["", "   ", "\n\t", None, b"bytes", 3, ["q"]])
def test_a_query_that_is_not_text_is_refused_before_any_embedding(five: LanceStore, query: Any) -> None:
    emb = FakeEmbedder()
    with pytest.raises(InputError, match="non-empty string") as err:
        run(five, emb, query)
    assert "\n" not in str(err.value)
    assert emb.calls == []


def test_the_best_chunk_stands_for_its_document(tmp_path: Path) -> None:
    # doc m: chunk 0 cos 0.6, chunk 1 cos 1.0, chunk 2 cos 0; doc n: cos 0.8
    store = make_store(tmp_path, [("m", 0, "M", "m zero", unit(0.6, 0.8, 0, 0), "t"),
                                  ("m", 1, "M", "m one", unit(1, 0, 0, 0), "t"),
                                  ("m", 2, "M", "m two", unit(0, 0, 1, 0), "t"),
                                  ("n", 0, "N", "n zero", unit(0.8, 0, 0.6, 0), "t")])
    hits = run(store, FakeEmbedder(), k=10)
    assert [(h.id, h.chunk, h.text) for h in hits] == [("m", 1, "m one"), ("n", 0, "n zero")]
    np.testing.assert_allclose([h.score for h in hits], [1.0, 0.8], atol=1e-6)


MANY_CHUNKS = ([("big", i, "Big", f"big chunk {i}", unit(1, 0.01 * (i + 1), 0, 0), "t") for i in range(6)]
               + [("small", 0, "Small", "small", unit(0.5, 0, 0.866, 0), "t"),
                  ("tiny", 0, "Tiny", "tiny", unit(0.4, 0, 0, 0.917), "t")])


def test_k_documents_come_back_even_when_one_document_fills_the_top_chunks(tmp_path: Path) -> None:
    store = make_store(tmp_path, MANY_CHUNKS)
    # by hand: big's best chunk ~1.0, small 0.5, tiny 0.4
    assert [h.id for h in run(store, FakeEmbedder(), k=2)] == ["big", "small"]


def test_the_reranker_sees_candidates_documents_even_when_one_document_fills_the_top(tmp_path: Path) -> None:
    store = make_store(tmp_path, MANY_CHUNKS)
    rr = FakeReranker({passage("Tiny", "tiny"): 0.9, passage("Small", "small"): 0.5})
    hits = search(store, cast(Embedder, FakeEmbedder()), "q", k=1, candidates=3, reranker=cast(Reranker, rr))
    assert [h.id for h in hits] == ["tiny"]


def test_instruction_overrides_the_tables_and_the_reranker_gets_the_same(five: LanceStore) -> None:
    emb, rr = FakeEmbedder(), FakeReranker({})
    search(five, cast(Embedder, emb), "q", k=2, reranker=cast(Reranker, rr), instruction="Custom task")
    assert emb.calls[0][1] == "Custom task" and rr.calls[0][2] == "Custom task"
    emb2, rr2 = FakeEmbedder(), FakeReranker({})
    search(five, cast(Embedder, emb2), "q", k=2, reranker=cast(Reranker, rr2))
    assert emb2.calls[0][1] == INSTRUCTION and rr2.calls[0][2] == INSTRUCTION


def test_reranked_order_is_by_p_yes_ties_in_retrieval_order(five: LanceStore) -> None:
    # retrieval order a, e, b, c, d; P(yes): c 0.9, e 0.5, b 0.5, a 0.1, d 0.95 (d is outside candidates=4)
    texts = {r[0]: passage(r[2], r[3]) for r in FIVE}
    rr = FakeReranker({texts["c"]: 0.9, texts["e"]: 0.5, texts["b"]: 0.5, texts["a"]: 0.1, texts["d"]: 0.95})
    hits = search(five, cast(Embedder, FakeEmbedder()), "my query", k=3, candidates=4, reranker=cast(Reranker, rr))
    assert [h.id for h in hits] == ["c", "e", "b"]  # e before b: a tie kept in retrieval order
    assert rr.calls == [("my query", [texts[i] for i in ["a", "e", "b", "c"]], INSTRUCTION)]
    np.testing.assert_allclose([h.score for h in hits], [0.9, 0.5, 0.5], atol=1e-6)
    assert all(h.rerank_score == h.score for h in hits)
    np.testing.assert_allclose([h.retrieval_score for h in hits], [0.0, 0.8, 0.6], atol=1e-6)


def test_the_reranker_reads_title_and_text_joined_by_a_space() -> None:
    # MTEB's `_corpus_to_dict`: (title + " " + text).strip() with a title, else text.strip()
    assert passage("Title", "  body text ") == "Title   body text"
    assert passage("", " body ") == "body"
    assert passage("Title", "") == "Title"


def test_fewer_candidates_than_k_still_reranks_k_documents(five: LanceStore) -> None:
    rr = FakeReranker({})
    hits = search(five, cast(Embedder, FakeEmbedder()), "q", k=3, candidates=1, reranker=cast(Reranker, rr))
    assert len(rr.calls[0][1]) == 3 and [h.id for h in hits] == FIVE_ORDER[:3]  # all 0: retrieval order


def test_where_with_parameters_binds_quoted_values(five: LanceStore) -> None:
    hits = run(five, FakeEmbedder(), k=10, where="topic = :t", params={"t": "it's"})
    assert [h.id for h in hits] == ["c", "d"]  # cos 0 then -1


@pytest.mark.parametrize(("where", "params", "says"), [
    ("topic = :t", {"t": "x", "extra": 1}, "extra"),  # an unknown parameter is an error, not ignored
    ("topic = :t", None, ":t"),
    (None, {"t": "x"}, "without a filter"),
    ("topic = 'x'; DROP TABLE documents", None, "second statement"),
])
def test_a_bad_filter_is_one_line_before_any_embedding(five: LanceStore, where: str | None,
                                                       params: dict[str, Any] | None, says: str) -> None:
    emb = FakeEmbedder()
    with pytest.raises(InputError, match=says) as err:
        run(five, emb, where=where, params=params)
    assert "\n" not in str(err.value) and emb.calls == []


def test_nothing_found_gives_no_hits_and_no_reranking(five: LanceStore) -> None:
    rr = FakeReranker({})
    assert search(five, cast(Embedder, FakeEmbedder()), "q", reranker=cast(Reranker, rr),
                  where="topic = 'none'") == []
    assert rr.calls == []


def test_best_per_document_keeps_the_first_chunk_of_each_document_in_order() -> None:
    def h(doc: str, chunk: int) -> StoreHit:
        return StoreHit(f"{doc}#{chunk}", doc, chunk, "", "", 0.0)

    hits = [h("a", 2), h("b", 0), h("a", 0), h("c", 1), h("b", 1)]
    assert [(x.doc_id, x.chunk) for x in best_per_document(hits, 5)] == [("a", 2), ("b", 0), ("c", 1)]
    assert [x.doc_id for x in best_per_document(hits, 2)] == ["a", "b"]
    assert best_per_document([], 3) == []


@pytest.mark.parametrize(("hit", "expected"), [
    (Hit("d1", 0.5, "T", "body", 2, 0.25),
     {"id": "d1", "score": 0.5, "title": "T", "text": "body", "chunk": 2, "retrieval_score": 0.25,
      "metadata": {}}),  # docs/retrieval.md: every hit has metadata (empty without any)
    (Hit("d1", 0.9, "T", "body", 0, 0.25, 0.9, {"topic": "x"}),
     {"id": "d1", "score": 0.9, "title": "T", "text": "body", "chunk": 0, "retrieval_score": 0.25,
      "rerank_score": 0.9, "metadata": {"topic": "x"}}),
])
def test_a_hit_as_json_has_the_documented_fields(hit: Hit, expected: dict[str, Any]) -> None:
    assert hit.as_dict() == expected
