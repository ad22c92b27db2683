"""SciFact (BEIR, from ../shared) indexes and searches end to end with a tiny checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed import Embedder
from qwen_embed.retrieval import Index, read_sources


@pytest.mark.slow
def test_scifact_end_to_end(shared_data: Path, tiny_embedding_path: Path, tmp_path: Path) -> None:
    folder = shared_data / "beir" / "scifact"
    if not (folder / "corpus.jsonl").is_file():
        pytest.skip(f"{folder}/corpus.jsonl is absent")
    docs = read_sources([folder]).documents
    assert len(docs) == 5183
    # a short max_length keeps the tiny model's CPU time small; the pipeline is the same
    emb = Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=48)
    index = Index.open(tmp_path / "db", model=emb, dim=32)
    rep = index.add(docs, batch_docs=1024, progress=False)
    assert rep.added == 5183 and rep.chunks >= 5183
    assert len(index.store.doc_hashes()) == 5183
    ids = {d.id for d in docs}
    queries = [json.loads(line)["text"] for line in (folder / "queries.jsonl").open(encoding="utf-8")][:3]
    for q in queries:
        hits = index.search(q, k=10)
        assert len(hits) == 10 and {h.id for h in hits} <= ids
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert index.add(docs, progress=False).unchanged == 5183
