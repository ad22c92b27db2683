"""BM25 on a BEIR split, as the lexical baseline beside our models (nDCG@10 through qwen_embed.eval).

Okapi BM25 with Anserini's defaults (k1 0.9, b 0.4), lower-cased word tokens, an English stop-word
list and a light suffix-stripping stemmer; no external search engine. The BEIR paper's BM25
(Elasticsearch, multi-field) gives 0.665 on SciFact test.

    python benchmarks/bm25.py ../shared/data/beir/scifact --split test
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from qwen_embed.eval import load_beir, mteb_scores  # noqa: E402

STOP = set(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "if",
        "in",
        "into",
        "is",
        "it",
        "no",
        "not",
        "of",
        "on",
        "or",
        "such",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "they",
        "this",
        "to",
        "was",
        "will",
        "with",
        "we",
        "our",
        "from",
        "which",
        "were",
        "has",
        "have",
        "had",
        "been",
        "its",
        "than",
        "those",
    ]
)
_WORD = re.compile(r"[a-z0-9]+")


def stem(w: str) -> str:
    for suf in (
        "ational",
        "ization",
        "iveness",
        "fulness",
        "ousness",
        "ations",
        "ingly",
        "ments",
        "ation",
        "ness",
        "ment",
        "ing",
        "ies",
        "ied",
        "ed",
        "es",
        "ly",
        "s",
    ):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf in ("ies", "ied") else "")
    return w


def tokens(text: str) -> list[str]:
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOP]


def bm25_run(
    doc_ids: list[str],
    docs: list[str],
    qids: list[str],
    queries: list[str],
    k1: float = 0.9,
    b: float = 0.4,
    depth: int = 100,
) -> dict[str, dict[str, float]]:
    """Top-`depth` BM25 scores per query."""
    tfs = [Counter(tokens(d)) for d in docs]
    lengths = [sum(tf.values()) for tf in tfs]
    avg = sum(lengths) / max(len(lengths), 1)
    df: Counter[str] = Counter()
    postings: dict[str, list[int]] = {}
    for i, tf in enumerate(tfs):
        for t in tf:
            df[t] += 1
            postings.setdefault(t, []).append(i)
    n = len(docs)
    run = {}
    for qid, q in zip(qids, queries, strict=True):
        scores: dict[int, float] = {}
        for t in set(tokens(q)):
            if t not in df:
                continue
            idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            for i in postings[t]:
                f = tfs[i][t]
                scores[i] = scores.get(i, 0.0) + idf * f * (k1 + 1) / (f + k1 * (1 - b + b * lengths[i] / avg))
        top = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:depth]
        run[qid] = {doc_ids[i]: s for i, s in top}
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    ds = load_beir(args.dataset, args.split)
    run = bm25_run(ds.corpus_ids, ds.corpus_texts, ds.query_ids, ds.query_texts)
    mean, _ = mteb_scores(ds.qrels, {q: r for q, r in run.items() if r}, [10, 100])
    print(f"BM25 {ds.name} {args.split}: nDCG@10 {mean['ndcg_at_10']:.4f}  Recall@100 {mean['recall_at_100']:.4f}")


if __name__ == "__main__":
    main()
