"""Learning on real text: a tiny reranker from random weights, trained on SciFact's train queries with negatives
mined from the corpus by BM25, reranks the BM25 candidates of the test queries better than before training.

Candidates: each test query's BM25 top CANDIDATES (a tiny BM25 below, Robertson's formula with k1 0.9, b 0.4 as
Anserini's default), fixed before and after. Measure: nDCG@10 from eval/metrics.py. Marked slow (about
100 s on the shared 2-core machine; measured 0.195 -> 0.275).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Reranker
from qwen_embed.eval.metrics import mteb_scores
from qwen_embed.tiny import make_checkpoint
from qwen_embed.tokenizer import document_text
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer

CANDIDATES = 20
TEST_QUERIES = 60
MAX_LENGTH = 160
WORD = re.compile(r"[a-z0-9]+")


class BM25:
    """Okapi BM25 over lower-cased alphanumeric words (numpy over each word's postings: the same float
    operations in the same order as the per-posting formula, so the same scores)."""

    def __init__(self, docs: dict[str, str], k1: float = 0.9, b: float = 0.4) -> None:
        self.ids = list(docs)
        self.k1, self.b = k1, b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, d in enumerate(self.ids):
            words = WORD.findall(docs[d].lower())
            self.lengths.append(len(words))
            for w, c in Counter(words).items():
                self.postings[w].append((i, c))
        self.avg = sum(self.lengths) / len(self.lengths)
        # k1 (1 - b + b |d| / avgdl) per document [n]
        self.doc_norm = self.k1 * (1 - self.b + self.b * np.array(self.lengths, dtype=np.float64) / self.avg)
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # word -> (documents, counts), on first use

    def top(self, query: str, k: int) -> list[str]:
        n = len(self.ids)
        scores = np.zeros(n)  # [n]
        touched = np.zeros(n, dtype=bool)  # [n]: the documents that share a word with the query
        for w in set(WORD.findall(query.lower())):
            post = self.postings.get(w, [])
            if len(post) > n // 10:  # stop words: small idf, long postings
                continue
            if w not in self.arrays:
                self.arrays[w] = (np.array([i for i, _ in post], dtype=np.int64),
                                  np.array([c for _, c in post], dtype=np.float64))
            docs, c = self.arrays[w]
            idf = math.log(1 + (n - len(post) + 0.5) / (len(post) + 0.5))
            scores[docs] += idf * c * (self.k1 + 1) / (c + self.doc_norm[docs])  # a word once per document
            touched[docs] = True
        found = np.flatnonzero(touched)
        best = found[np.lexsort((found, -scores[found]))][:k]  # by score, ties by position
        return [self.ids[i] for i in best]


def qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for line in path.read_text().splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0:
            out[q][d] = int(s)
    return dict(out)


def ndcg_at_10(rr: Reranker, inputs: dict[str, list[list[int]]], cands: dict[str, list[str]],
               judged: dict[str, dict[str, int]]) -> float:
    """nDCG@10 of `rr`'s scores of each query's candidates, from their input ids (`Reranker.score` is
    `score_ids` of `build_input_ids`: the ids are built once for the models before and after training)."""
    run = {}
    for q, ids in cands.items():
        scores = rr.score_ids(inputs[q])
        run[q] = {d: float(s) for d, s in zip(ids, scores, strict=True)}
    return mteb_scores({q: judged[q] for q in cands}, run, [10])[0]["ndcg_at_10"]


@pytest.mark.slow
def test_training_raises_ndcg_on_scifact(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "beir" / "scifact"
    docs = {}
    for line in (root / "corpus.jsonl").read_text().splitlines():
        row = json.loads(line)
        docs[row["_id"]] = document_text(row.get("title"), row.get("text"))
    queries = {(r := json.loads(ln))["_id"]: r["text"] for ln in (root / "queries.jsonl").read_text().splitlines()}
    train_q, test_q = qrels(root / "qrels" / "train.tsv"), qrels(root / "qrels" / "test.tsv")
    bm25 = BM25(docs)
    rng = random.Random(0)
    rows = []
    for q, rel in train_q.items():
        if len(queries[q].split()) > 30:  # the few long ones would not fit MAX_LENGTH with the template
            continue
        mined = [d for d in bm25.top(queries[q], CANDIDATES) if d not in rel]
        rows.append({"query": queries[q], "positives": [docs[d] for d in rel],
                     "negatives": [docs[d] for d in rng.sample(mined, min(4, len(mined)))]})
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_ids = sorted(test_q)[:TEST_QUERIES]
    cands = {q: bm25.top(queries[q], CANDIDATES) for q in test_ids}
    assert sum(any(d in test_q[q] for d in cands[q]) for q in test_ids) >= TEST_QUERIES // 2  # a list worth ranking

    base = make_checkpoint(tmp_path / "tiny-rr", "reranker", tokenizer="auto", seed=0)
    rr = Reranker.from_pretrained(base, device="cpu", max_length=MAX_LENGTH)
    inputs = {q: rr.build_input_ids(queries[q], [docs[d] for d in ids]) for q, ids in cands.items()}
    before = ndcg_at_10(rr, inputs, cands, test_q)
    cfg = TrainConfig.from_dict({
        "model": {"path": str(base), "device": "cpu"},
        "data": {"train_files": [str(data)], "shuffle_buffer": 1000},
        "optim": {"lr": 5e-3, "warmup_steps": 5, "min_lr_ratio": 0.1},
        "train": {"output_dir": str(tmp_path / "run"), "batch_size": 8, "chunk_tokens": 8192, "max_steps": 40,
                  "save_every": 0, "log_every": 20, "progress": False},
        "rerank": {"loss": "listwise", "negatives_per_positive": 3, "max_length": MAX_LENGTH},
    })
    Trainer(cfg, kind="rerank").run()
    trained = tmp_path / "run" / "model"
    assert (trained / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()  # the same ids
    after = ndcg_at_10(Reranker.from_pretrained(trained, device="cpu", max_length=MAX_LENGTH), inputs, cands, test_q)
    print(f"SciFact nDCG@10 reranking BM25 top {CANDIDATES} of {TEST_QUERIES} test queries: before {before:.4f}, "
          f"after {after:.4f}")
    assert after > before + 0.02
