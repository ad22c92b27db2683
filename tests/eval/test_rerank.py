"""Rerank evaluation: same documents before and after, scores equal the reranker's, resume, bad runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_embed import Reranker
from qwen_embed.errors import InputError
from qwen_embed.eval import rerank
from qwen_embed.eval.beir import load_beir
from qwen_embed.eval.rerank import evaluate_rerank, pair_ids, rerank_run
from qwen_embed.eval.trec import truncate_run

CANDIDATES = {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7, "d5": 0.6}, "q2": {"d4": 0.5, "d1": 0.4, "d3": 0.3}}


def test_rerank_top_n_scores_and_metrics(short_reranker: Reranker, five_docs: Path) -> None:
    ds = load_beir(five_docs)
    res = evaluate_rerank(short_reranker, ds, CANDIDATES, instruction="Judge it", top=3, ks=[1, 3])
    assert set(res.run["q1"]) == {"d1", "d2", "d3"} and set(res.run["q2"]) == {"d4", "d1", "d3"}
    assert res.before.per_query["q1"]["num_ret"] == 3  # "before" is the same top 3
    want = short_reranker.score(ds.queries["q1"], [ds.corpus[d] for d in ("d1", "d2", "d3")],
                                instruction="Judge it")
    np.testing.assert_allclose([res.run["q1"][d] for d in ("d1", "d2", "d3")], want, rtol=1e-5)
    assert res.stats["pairs"] == 6 and res.stats["queries"] == 2


def test_empty_document_gets_an_empty_document_part(short_reranker: Reranker, five_docs: Path) -> None:
    ds = load_beir(five_docs)
    ids = pair_ids(short_reranker, "q", ["", "text"], "i")
    tok, t = short_reranker.tokenizer, short_reranker.template
    assert ids[0] == tok.encode_one(t.prefix) + tok.encode_one(t.body("i", "q", "")) + tok.encode_one(t.tail)
    run = rerank_run(short_reranker, ds, {"q1": {"d5": 1.0, "d2": 0.5}}, instruction="i")
    assert set(run["q1"]) == {"d5", "d2"}


def test_resume_from_partial_scores(short_reranker: Reranker, five_docs: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ds = load_beir(five_docs)
    partial = tmp_path / "rerank.partial.jsonl"
    first = rerank_run(short_reranker, ds, CANDIDATES, top=2, instruction="i", partial=partial)
    lines = partial.read_text().splitlines()
    assert len(lines) == 2  # two queries
    partial.unlink()
    monkeypatch.setattr(rerank, "BLOCK_QUERIES", 1)  # interrupted after the first query's block
    real, calls = short_reranker.score_ids, []

    def interrupted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(short_reranker, "score_ids", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rerank_run(short_reranker, ds, CANDIDATES, top=2, instruction="i", partial=partial)
    monkeypatch.setattr(short_reranker, "score_ids", real)
    rows_file = partial.with_name(partial.name + ".partial")
    saved = rows_file.read_text().splitlines()
    assert not partial.exists() and len(saved) == 1  # one query saved, the run not finished
    row = json.loads(saved[0])
    row["scores"] = {d: 42.0 for d in row["scores"]}
    rows_file.write_text(json.dumps(row) + "\n" + lines[1][:5])  # and a last line cut short
    meta = partial.with_name(partial.name + ".partial.meta.json")
    interrupted_state = rows_file.read_text(), meta.read_text()
    again = rerank_run(short_reranker, ds, CANDIDATES, top=2, instruction="i", partial=partial)
    assert set(again[row["qid"]].values()) == {42.0}  # taken from the file, not recomputed
    other = next(q for q in first if q != row["qid"])
    assert again[other] == pytest.approx(first[other], rel=1e-5)
    rows_file.write_text(interrupted_state[0])
    meta.write_text(interrupted_state[1])
    fresh = rerank_run(short_reranker, ds, CANDIDATES, top=3, instruction="i", partial=partial)  # new key
    assert 42.0 not in fresh[row["qid"]].values()


def test_bad_candidate_runs(short_reranker: Reranker, five_docs: Path) -> None:
    ds = load_beir(five_docs)
    with pytest.raises(InputError, match="queries that five does not have"):
        evaluate_rerank(short_reranker, ds, {"q7": {"d1": 1.0}}, instruction="i")
    with pytest.raises(InputError, match="document 'd9'"):
        evaluate_rerank(short_reranker, ds, {"q1": {"d9": 1.0}}, instruction="i")
    with pytest.raises(InputError, match="no judged query"):
        evaluate_rerank(short_reranker, ds, {"q3": {"d1": 1.0}}, instruction="i")  # q3: train only
    with pytest.raises(InputError, match="top"):
        rerank_run(short_reranker, ds, CANDIDATES, top=0, instruction="i")


@pytest.mark.slow
def test_scifact_retrieve_then_rerank(short_reranker: Reranker, scifact_retrieval: tuple) -> None:
    ds, ret = scifact_retrieval
    res = evaluate_rerank(short_reranker, ds, ret.dims[0].run, instruction="x", top=5, ks=[1, 5])
    assert res.stats["queries"] == 300 and res.stats["pairs"] == 1500
    top5 = truncate_run(ret.dims[0].run, 5)
    assert {q: set(d) for q, d in res.run.items()} == {q: set(d) for q, d in top5.items()}
    # the top-5 sets are equal, so recall@5 cannot change; nDCG@1 may
    assert res.after.aggregate["recall_at_5"] == pytest.approx(res.before.aggregate["recall_at_5"])
    assert res.before.aggregate["ndcg_at_5"] == pytest.approx(ret.dims[0].evaluation.aggregate["ndcg_at_5"])
