"""The MTEB adapter: mteb itself evaluates a tiny retrieval task, built here, with our model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.eval.instructions import lookup
from qwen_embed.eval.metrics import mteb_scores
from qwen_embed.eval.retrieval import at_dim, embed_texts, exact_topk

CORPUS = [("d1", "Gravity", "Gravity pulls bodies together."), ("d2", "", "Cells divide by mitosis."),
          ("d3", "Heart", "The heart pumps blood."), ("d4", "Water", "Water boils at 100 degrees.")]
QUERIES = [("q1", "What pulls bodies together?"), ("q2", "How do cells divide?"), ("q3", "What pumps blood?")]
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1, "d4": 0}, "q3": {"d3": 1}}


def _task() -> Any:
    import datasets
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    class TinySciFact(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name="SciFact", description="a tiny task with SciFact's name (so its instruction applies)",
            reference="https://example.org", dataset={"path": "NA", "revision": "NA"}, type="Retrieval",
            category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=["eng-Latn"],
            main_score="ndcg_at_10", date=("2024-01-01", "2024-01-02"), domains=[], task_subtypes=[],
            license="cc-by-4.0", annotations_creators="derived", dialect=[], sample_creation="found",
            bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            split = RetrievalSplitData(
                queries=datasets.Dataset.from_list([{"id": q, "text": t} for q, t in QUERIES]),
                corpus=datasets.Dataset.from_list([{"id": i, "title": ti, "text": te} for i, ti, te in CORPUS]),
                relevant_docs=QRELS, top_ranked=None,
            )
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    return TinySciFact()


@pytest.mark.slow  # ~13 s: mteb's own evaluation loop
def test_mteb_evaluates_the_adapter_with_task_instructions(embedder: Embedder, tmp_path: Path) -> None:
    # imported here, not at collection: mteb pulls in sentence-transformers and transformers (seconds per worker)
    mteb = pytest.importorskip("mteb")
    pytest.importorskip("datasets")
    from qwen_embed.eval.mteb_adapter import QwenEmbedMTEB

    small = Embedder(embedder.checkpoint, max_length=64)
    model = QwenEmbedMTEB(small, dim=32)
    seen: dict[str | None, np.ndarray] = {}
    encode = model.encode

    def spy(inputs: Any, **kw: Any) -> np.ndarray:
        out = encode(inputs, **kw)
        kind = getattr(kw.get("prompt_type"), "value", kw.get("prompt_type"))
        seen[kind] = out
        return out

    model.encode = spy  # type: ignore[method-assign]
    result = mteb.evaluate(model, _task(), cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert set(seen) == {"query", "document"}

    # the same numbers by our own pipeline: documents "title text" without instruction, queries with SciFact's
    docs = [(ti + " " + te).strip() if ti else te for _, ti, te in CORPUS]
    d = at_dim(embed_texts(small, docs), 32)
    q = at_dim(embed_texts(small, [t for _, t in QUERIES], instruction=lookup("SciFact")), 32)
    np.testing.assert_allclose(seen["query"], q, atol=1e-6)  # SciFact's instruction was applied
    np.testing.assert_allclose(seen["document"], d, atol=1e-6)  # documents: no instruction, title joined
    plain = at_dim(embed_texts(small, [t for _, t in QUERIES]), 32)
    assert not np.allclose(seen["query"], plain, atol=1e-4)
    s, idx = exact_topk(q, d, 4)
    run = {qid: {CORPUS[j][0]: float(v) for v, j in zip(srow, irow, strict=True)}
           for (qid, _), srow, irow in zip(QUERIES, s, idx, strict=True)}
    ours, _ = mteb_scores(QRELS, run, [1, 3])
    assert scores["ndcg_at_1"] == pytest.approx(ours["ndcg_at_1"], abs=1e-5)
    assert scores["ndcg_at_3"] == pytest.approx(ours["ndcg_at_3"], abs=1e-5)
    assert scores["mrr_at_3"] == pytest.approx(ours["mrr_at_3"], abs=1e-5)


def test_meta_and_similarity(embedder: Embedder) -> None:
    pytest.importorskip("mteb")
    from qwen_embed.eval.mteb_adapter import QwenEmbedMTEB

    model = QwenEmbedMTEB(embedder, dim=32, instructions={"MyTask": "Find it"})
    meta = model.mteb_model_meta
    assert meta.embed_dim == 32 and meta.similarity_fn_name == "cosine" and meta.name.startswith("local/")
    assert model.instruction_for("MyTask") == "Find it" and model.instruction_for("NFCorpus") == lookup("NFCorpus")
    a = np.array([[3.0, 4.0], [1.0, 0.0]], dtype=np.float32)
    sim = np.asarray(model.similarity(a, a))
    assert sim[0, 0] == pytest.approx(1.0) and sim[0, 1] == pytest.approx(0.6)
    assert np.asarray(model.similarity_pairwise(a, a[::-1])).tolist() == pytest.approx([0.6, 0.6])
