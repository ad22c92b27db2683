"""Retrieval evaluation: exact chunked top-k, hand-worked metrics on 5 documents, SciFact end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.eval.beir import load_beir
from qwen_embed.eval.metrics import evaluate
from qwen_embed.eval.retrieval import (
    at_dim,
    build_run,
    check_dims,
    embed_corpus,
    embed_texts,
    evaluate_retrieval,
    exact_topk,
    tokenize_texts,
)


def test_exact_topk_equals_brute_force_across_chunks() -> None:
    rng = np.random.default_rng(0)
    q, d = rng.standard_normal((37, 16), dtype=np.float32), rng.standard_normal((501, 16), dtype=np.float32)
    s, i = exact_topk(q, d, 20, query_chunk=8, doc_chunk=64, device="cpu")
    full = q @ d.T
    ref = np.argsort(-full, axis=1)[:, :20]
    assert (i == ref).all()
    np.testing.assert_allclose(s, np.take_along_axis(full, ref, 1), rtol=1e-5, atol=1e-5)
    _s2, i2 = exact_topk(q, d[:5], 20, device="cpu")  # k larger than the corpus
    assert i2.shape == (37, 5) and (i2 == np.argsort(-(q @ d[:5].T), axis=1)).all()
    with pytest.raises(InputError, match="same d"):
        exact_topk(q, d[:, :8], 3)


def test_hand_made_five_documents_exact_values(five_docs: Path) -> None:
    ds = load_beir(five_docs)
    vec = {"d1": [1, 0], "d2": [0.8, 0.6], "d3": [0, 1], "d4": [0.6, 0.8], "d5": [-1, 0]}
    docs = np.array([vec[d] for d in ds.corpus_ids], dtype=np.float32)
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)  # q1, q2
    scores, idx = exact_topk(queries, docs, 5)
    run = build_run(ds.query_ids, ds.corpus_ids, scores, idx)
    ev = evaluate(ds.qrels, run, extra_k=[1, 3, 5])
    q1, q2 = ev.per_query["q1"], ev.per_query["q2"]
    # q1 ranks d1 d2 d4 d3 d5; judged d2 (1) and d3 (2)
    idcg = 2 + 1 / math.log2(3)
    assert q1["ndcg_at_3"] == pytest.approx((1 / math.log2(3)) / idcg)
    assert q1["ndcg_at_5"] == pytest.approx((1 / math.log2(3) + 2 / math.log2(5)) / idcg)
    assert (q1["mrr_at_3"], q1["recall_at_3"], q1["precision_at_3"]) == pytest.approx((1 / 2, 1 / 2, 1 / 3))
    assert q1["map_at_5"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    # q2 ranks d3 d4 d2 then d5 and d1 tied at 0: trec_eval puts d5 first; judged d1 (1)
    assert q2["mrr_at_5"] == pytest.approx(1 / 5) and q2["ndcg_at_5"] == pytest.approx(1 / math.log2(6))
    assert q2["ndcg_at_3"] == 0 and q2["hit_rate_at_3"] == 0
    assert ev.aggregate["mrr_at_5"] == pytest.approx((1 / 2 + 1 / 5) / 2)
    assert ev.aggregate["num_q"] == 2 and ev.aggregate["num_rel"] == 3


def test_empty_document_is_the_end_token_alone(short_embedder: Embedder) -> None:
    ids = tokenize_texts(short_embedder, ["", "some text"])
    assert ids[0] == [short_embedder.tokenizer.eos_id] and ids[1][-1] == short_embedder.tokenizer.eos_id
    v = embed_texts(short_embedder, ["", "some text"])
    ref = short_embedder.embed_ids([ids[0]], normalize=False)
    np.testing.assert_allclose(v[:1], ref, rtol=1e-5, atol=1e-6)


def test_at_dim_equals_encode_with_dim(short_embedder: Embedder) -> None:
    texts = ["a short text", "another one, a little longer"]
    full = embed_texts(short_embedder, texts, instruction="Find it")
    np.testing.assert_allclose(at_dim(full, 32), short_embedder.encode(texts, instruction="Find it", dim=32),
                               rtol=1e-5, atol=1e-6)


def test_corpus_cache_resumes(short_embedder: Embedder, tmp_path: Path) -> None:
    ids, texts = ["a", "b", "c"], ["one", "two", ""]
    first = embed_corpus(short_embedder, ids, texts, tmp_path, shard=2)
    shards = sorted(tmp_path.glob("corpus-*/*.npy"))
    assert len(shards) == 2
    np.save(shards[0], np.zeros((2, short_embedder.hidden_size), np.float32))  # a finished shard is reused
    again = embed_corpus(short_embedder, ids, texts, tmp_path, shard=2)
    assert (again[:2] == 0).all() and np.array_equal(again[2], first[2])


def test_a_cache_of_another_shard_size_is_not_read(short_embedder: Embedder, tmp_path: Path) -> None:
    """Before, the key left out the shard size: shards of 2 read with a size of 3 gave 2 vectors for 3 texts."""
    ids, texts = ["a", "b", "c"], ["one", "two", "three"]
    first = embed_corpus(short_embedder, ids, texts, tmp_path, shard=2)
    for shard in sorted(tmp_path.glob("corpus-*/*.npy")):
        np.save(shard, np.zeros_like(np.load(shard)))
    other = embed_corpus(short_embedder, ids, texts, tmp_path, shard=3)
    assert other.shape == first.shape
    np.testing.assert_allclose(other, first, rtol=1e-5, atol=1e-6)


def test_end_to_end_five_documents(short_embedder: Embedder, five_docs: Path) -> None:
    ds = load_beir(five_docs)
    res = evaluate_retrieval(short_embedder, ds, instruction="Find it", dims=[32, 64], ks=[1, 3], depth=5)
    assert [d.dim for d in res.dims] == [32, 64]
    docs = at_dim(embed_texts(short_embedder, ds.corpus_texts), 32)
    qs = at_dim(embed_texts(short_embedder, ds.query_texts, instruction="Find it"), 32)
    brute = qs @ docs.T
    for n, q in enumerate(ds.query_ids):
        ranked = sorted(res.dims[0].run[q], key=lambda d: -res.dims[0].run[q][d])
        assert ranked == [ds.corpus_ids[j] for j in np.argsort(-brute[n])]
    assert res.dims[0].evaluation.aggregate == evaluate(ds.qrels, res.dims[0].run, extra_k=[1, 3]).aggregate


def test_bad_dims_and_depth(short_embedder: Embedder, five_docs: Path) -> None:
    with pytest.raises(InputError, match="dim=128 is out of range"):
        check_dims([32, 128], short_embedder.hidden_size)
    with pytest.raises(InputError, match="twice"):
        check_dims([32, 32], 64)
    assert check_dims(None, 64) == [64]
    with pytest.raises(InputError, match="depth"):
        evaluate_retrieval(short_embedder, load_beir(five_docs), instruction="x", ks=[10], depth=5)


@pytest.mark.slow
def test_scifact_end_to_end(scifact_retrieval: tuple) -> None:
    pytrec_eval = pytest.importorskip("pytrec_eval")
    ds, res = scifact_retrieval
    run = res.dims[1].run
    assert len(run) == 300 and all(len(d) == 100 for d in run.values())
    ref = pytrec_eval.RelevanceEvaluator(ds.qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    agg = res.dims[1].evaluation.aggregate
    assert agg["ndcg_at_10"] == pytest.approx(np.mean([v["ndcg_cut_10"] for v in ref.values()]), abs=1e-9)
    assert agg["recall_at_100"] == pytest.approx(np.mean([v["recall_100"] for v in ref.values()]), abs=1e-9)
    assert set(res.timings) == {"embed_corpus_s", "embed_queries_s", "search_s", "metrics_s"}


def test_identical_ids_are_dropped_as_mteb_does(short_embedder: Embedder, tmp_path: Path) -> None:
    from qwen_embed.eval.retrieval import ignores_identical_ids

    from .conftest import CORPUS, write_beir

    assert ignores_identical_ids("ArguAna") and ignores_identical_ids("fiqa") and not ignores_identical_ids("scifact")
    folder = write_beir(tmp_path / "arguana", corpus=[*CORPUS, {"_id": "q1", "title": "", "text": "What pumps blood?"}])
    ds = load_beir(folder)
    res = evaluate_retrieval(short_embedder, ds, instruction="x", ks=[1], depth=6)
    assert "q1" not in res.dims[0].run["q1"] and len(res.dims[0].run["q1"]) == 5 and res.stats["ignore_identical_ids"]
    kept = evaluate_retrieval(short_embedder, ds, instruction="x", ks=[1], depth=6, ignore_identical_ids=False)
    assert "q1" in kept.dims[0].run["q1"]
