"""Fixtures of the evaluation tests: a hand-made 5-document BEIR folder, small-context models, SciFact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed import Embedder, Reranker

# q1 and q2 are judged in test; q3 only in train. d5 is empty (no title, no text).
CORPUS = [
    {"_id": "d1", "title": "Gravity", "text": "Gravity attracts two bodies towards each other."},
    {"_id": "d2", "title": "", "text": "The heart pumps blood through the body."},
    {"_id": "d3", "title": "Cells", "text": "Cells divide by mitosis."},
    {"_id": "d4", "title": " Water ", "text": " Water boils at one hundred degrees. "},
    {"_id": "d5", "title": "", "text": ""},
]
QUERIES = [{"_id": "q1", "text": "What pumps blood?"}, {"_id": "q2", "text": "How do cells divide?"},
           {"_id": "q3", "text": "What is gravity?"}]
TEST_QRELS = [("q1", "d2", 1), ("q1", "d3", 2), ("q2", "d1", 1)]


def write_beir(folder: Path, corpus: list[dict] = CORPUS, queries: list[dict] = QUERIES,
               qrels: list[tuple[str, str, int]] = TEST_QRELS) -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" +
                                               "".join(f"{q}\t{d}\t{r}\n" for q, d, r in qrels))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td1\t1\n")
    return folder


@pytest.fixture
def five_docs(tmp_path: Path) -> Path:
    return write_beir(tmp_path / "five")


@pytest.fixture(scope="session")
def short_embedder(embedder: Embedder) -> Embedder:
    """The tiny embedder with a 64-token context (same weights), to keep SciFact fast on a CPU."""
    return Embedder(embedder.checkpoint, max_length=64)


@pytest.fixture(scope="session")
def short_reranker(reranker: Reranker) -> Reranker:
    return Reranker(reranker.checkpoint, template="official-eval", max_length=128)


@pytest.fixture(scope="session")
def scifact(shared_data: Path) -> Path:
    d = shared_data / "beir" / "scifact"
    if not (d / "corpus.jsonl").is_file():
        pytest.skip(f"{d} is absent (real SciFact in BEIR format)")
    return d


@pytest.fixture(scope="session")
def scifact_retrieval(short_embedder: Embedder, scifact: Path) -> object:
    """SciFact test split retrieved once with the tiny embedder (64-token context), dims 32 and 64."""
    from qwen_embed.eval.beir import load_beir
    from qwen_embed.eval.retrieval import evaluate_retrieval

    ds = load_beir(scifact)
    return ds, evaluate_retrieval(short_embedder, ds, instruction="x", dims=[32, 64], ks=[1, 5, 10, 100], depth=100)


@pytest.fixture(scope="session")
def trec_dir(shared_data: Path) -> Path:
    """../shared/data/trec_eval: trec_eval 10's test qrels, run and outputs (skips when they are absent)."""
    d = shared_data / "trec_eval"
    if not all((d / name).is_file() for name in ("qrels.test", "results.test", "out.test.a", "out.test.aq")):
        pytest.skip(f"{d} lacks trec_eval's test files")
    return d
