"""Reports: JSON with per-query values, Markdown tables, plots."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_embed import Embedder, Reranker
from qwen_embed.eval.beir import load_beir
from qwen_embed.eval.report import main_k, write_rerank_report, write_retrieval_report
from qwen_embed.eval.rerank import evaluate_rerank
from qwen_embed.eval.retrieval import evaluate_retrieval


def test_retrieval_and_rerank_reports(short_embedder: Embedder, short_reranker: Reranker, five_docs: Path,
                                      tmp_path: Path) -> None:
    ds = load_beir(five_docs)
    res = evaluate_retrieval(short_embedder, ds, instruction="x", dims=[32, 64], ks=[1, 3], depth=5)
    paths = write_retrieval_report(res, tmp_path)
    assert [p.name for p in paths] == ["scores.json", "summary.md", "ndcg_vs_dim.png"]
    obj = json.loads(paths[0].read_text())
    assert set(obj["dims"]) == {"32", "64"} and obj["stats"]["queries_without_judgments"] == 1
    assert obj["dims"]["32"]["per_query"]["q1"]["ndcg_at_3"] == res.dims[0].evaluation.per_query["q1"]["ndcg_at_3"]
    assert "ndcg_cut_10" in obj["dims"]["32"]["aggregate"]
    md = paths[1].read_text()
    assert "| dim | nDCG@1 | nDCG@3 | MAP@3 | MRR@3 | Recall@3 |" in md and "\n| 64 | " in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rr = evaluate_rerank(short_reranker, ds, res.dims[0].run, instruction="x", top=3, ks=[1, 3])
    paths = write_rerank_report(rr, tmp_path)
    obj = json.loads(paths[0].read_text())
    assert obj["before"]["aggregate"]["num_q"] == 2 and set(obj["after"]["per_query"]) == {"q1", "q2"}
    assert "| change |" in paths[1].read_text() and paths[2].stat().st_size > 1000
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_main_k() -> None:
    assert main_k([1, 10, 100]) == 10 and main_k([1, 5]) == 5
