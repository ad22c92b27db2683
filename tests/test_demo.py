"""`make demo` offline: with the demo models shipped in the package it ranks the sample corpus sensibly (each
search's expected document in its top 3, by embedding and after reranking; part 1's best document first);
with `--tiny` it runs on random checkpoints and labels its output as meaningless."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_embed import demo
from qwen_embed.store import open_store

# the document that answers each search of demo.SEARCHES (ids of qwen_embed/data/sample_corpus.jsonl), and
# the document of demo.DOCUMENTS that answers each query of demo.QUERIES
EXPECTED = {"why do we have tides": "doc-01", "how does a vaccine protect me": "doc-06",
            "what makes bread light and airy": "doc-10"}
BEST = {"What is the capital of China?": 0, "Explain gravity": 1}

needs_demo_models = pytest.mark.skipif(demo.demo_model("embedding") is None or demo.demo_model("reranker") is None,
                                       reason="the package has no demo models (qwen_embed/data/demo-models)")


def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def _top3(out: str, query: str) -> list[str]:
    """The ids of the three hits printed under the search for `query`."""
    part = out.split(f"search: {query!r}")[1].split("search: ")[0]
    return [line.split()[2] for line in part.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]


@needs_demo_models
def test_demo_offline_ranks_the_sample_corpus_with_the_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    _offline(tmp_path, monkeypatch)
    assert demo.main(["--db", str(tmp_path / "db"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "using the shipped demo embedding model" in out and "using the shipped demo reranker model" in out
    assert out.count(demo.DEMO_LABEL) == 2 and demo.TINY_LABEL not in out
    assert {q for q, _ in demo.SEARCHES} == set(EXPECTED)
    for query, doc in EXPECTED.items():  # the final (reranked) ranking as printed
        assert doc in _top3(out, query), (query, _top3(out, query))
    for query, j in BEST.items():  # part 1: the reranker's best document
        line = next(ln for ln in out.split("rerank: P(yes)")[1].splitlines() if ln.strip().startswith(query[:20]))
        assert line.endswith(f"best: D{j + 1}"), line


@needs_demo_models
def test_shipped_models_rank_by_embedding_and_by_reranking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(tmp_path, monkeypatch)
    with demo.load_models(demo.DEFAULT_EMBEDDING_MODEL, demo.DEFAULT_RERANKER_MODEL, "cpu", False) as (emb, rr, notes):
        assert len(notes) == 2 and all("shipped demo" in n for n in notes)
        assert emb.config.num_hidden_layers == 6 and rr.config.num_hidden_layers == 6
        sims = emb.encode_queries(demo.QUERIES) @ emb.encode_documents(demo.DOCUMENTS).T  # [queries, documents]
        for i, query in enumerate(demo.QUERIES):
            assert int(np.argmax(sims[i])) == BEST[query], (query, sims[i])
            assert int(np.argmax(rr.score(query, demo.DOCUMENTS))) == BEST[query], query
        index, count, _ = demo.index_sample_corpus(emb, tmp_path / "db")
        assert count == 42
        for query, where in demo.SEARCHES:
            by_embedding = [h.id for h in index.search(query, k=3, where=where)]
            reranked = [h.id for h in index.search(query, k=3, reranker=rr, candidates=demo.CANDIDATES, where=where)]
            assert EXPECTED[query] in by_embedding, (query, by_embedding)
            assert EXPECTED[query] in reranked, (query, reranked)


def test_demo_runs_on_tiny_models_with_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _offline(tmp_path, monkeypatch)
    assert demo.main(["--db", str(tmp_path / "db"), "--device", "cpu", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-Embedding-0.6B is not available (--tiny was given); using a tiny random-weight" in out
    assert "Qwen/Qwen3-Reranker-0.6B is not available (--tiny was given); using a tiny random-weight" in out
    assert out.count(demo.TINY_LABEL) == 2
    assert "== 1. Embed and rerank" in out and "cosine similarity" in out and "rerank: P(yes)" in out
    assert "== 2. Index and search (42 sample documents" in out
    assert out.count("search: ") == len(demo.SEARCHES)
    assert open_store(tmp_path / "db").count() == 42
    # the filtered search returns cooking documents only (doc-10 .. doc-13 in the sample corpus)
    cooking = out.split("[where topic = 'cooking']")[1].split("done in")[0]
    ranked = [line.split()[2] for line in cooking.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert len(ranked) == 3 and set(ranked) <= {"doc-10", "doc-11", "doc-12", "doc-13"}, ranked
