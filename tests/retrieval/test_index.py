"""Index: idempotent upserts, replacement, deletion, recorded settings, search and reranking, big documents."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import InputError
from qwen_embed.retrieval import Document, Index
from qwen_embed.retrieval.search import passage
from qwen_embed.tiny import make_checkpoint

TOPICS = ["the moon and tides", "baking bread at home", "vaccines and the immune system", "rivers of Europe",
          "compound interest", "guitar strings", "coral reefs", "printing press history"]


def corpus(n: int = 24) -> list[Document]:
    return [Document(f"d{i}", f"Notes {i} about {TOPICS[i % len(TOPICS)]}.", f"Title {i}",
                     {"topic": TOPICS[i % len(TOPICS)], "n": i}) for i in range(n)]


def stored(index: Index) -> dict[str, np.ndarray]:
    ids, vecs = index.store.vectors()
    return dict(zip(ids, vecs, strict=True))


def test_reindexing_is_idempotent(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    first = index.add(corpus())
    assert (first.added, first.unchanged, first.chunks) == (24, 0, 24) and first.tokens > 0
    version, before = index.store.table.version, stored(index)  # type: ignore[attr-defined]
    again = Index.open(tmp_path / "db", model=embedder).add(corpus())
    assert (again.added, again.updated, again.unchanged, again.chunks) == (0, 0, 24, 0)
    assert index.store.table.version == version  # type: ignore[attr-defined]  # nothing was written
    after = stored(index)
    assert after.keys() == before.keys()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_a_changed_document_is_replaced(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder, chunk_tokens=16, overlap=0)
    docs = corpus(4)
    docs[1].text = " ".join(["a long document about tides and the moon"] * 12)  # several chunks
    index.add(docs)
    assert sum(1 for i in stored(index) if i.startswith("d1#")) > 2
    docs[1].text = "now short"
    rep = index.add(docs)
    assert (rep.updated, rep.unchanged, rep.added) == (1, 3, 0)
    rows = stored(index)
    assert sorted(i for i in rows if i.startswith("d1#")) == ["d1#0"]
    np.testing.assert_allclose(rows["d1#0"], embedder.encode([passage("Title 1", "now short")])[0], atol=1e-5)
    docs[2].metadata = {**docs[2].metadata, "n": 99}  # a metadata change is a change too
    assert index.add(docs).updated == 1


def test_delete_and_delete_missing(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    index.add(corpus(10))
    assert index.delete(["d0", "nope"]) == 1
    assert index.delete_missing([f"d{i}" for i in range(5)]) == 5
    assert sorted(index.store.doc_hashes()) == ["d1", "d2", "d3", "d4"]
    assert len(index) == 4


def test_table_records_settings_and_refuses_another_model_or_dim(tmp_path: Path, embedder: Embedder,
                                                                  tiny_embedding_path: Path,
                                                                  small_embedding_path: Path) -> None:
    index = Index.open(tmp_path / "db", model=embedder, dim=32, instruction="Find notes", chunk_tokens=128,
                       overlap=8)
    index.add(corpus(3))
    info = Index.open(tmp_path / "db").info
    assert (info.dim, info.query_instruction, info.chunk_tokens, info.overlap) == (32, "Find notes", 128, 8)
    assert info.model == str(tiny_embedding_path.resolve())
    assert info.tokenizer_fingerprint == embedder.tokenizer.fingerprint
    with pytest.raises(InputError, match="holds 32-dim vectors but dim=64"):
        Index.open(tmp_path / "db", dim=64)
    with pytest.raises(InputError, match="made with chunk_tokens=128, not 256"):
        Index.open(tmp_path / "db", chunk_tokens=256)
    with pytest.raises(InputError, match="made with instruction='Find notes', not 'Other'"):
        Index.open(tmp_path / "db", instruction="Other")
    other = small_embedding_path  # another model than the index's
    with pytest.raises(InputError, match="was indexed with model"):
        Index.open(tmp_path / "db", model=other)
    # the recorded model loads by default for searching, with the recorded dim
    hits = Index.open(tmp_path / "db", create=False).search("notes", k=2)
    assert len(hits) == 2


def test_exact_search_ranks_as_numpy_over_stored_vectors(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    index.add(corpus())
    ids, vecs = index.store.vectors()
    q = embedder.encode(["tides"], instruction=index.info.query_instruction)[0]
    expect = [ids[j].split("#")[0] for j in np.argsort(-(vecs @ q), kind="stable")[:5]]
    hits = index.search("tides", k=5)
    assert [h.id for h in hits] == expect
    assert all(h.rerank_score is None and h.score == h.retrieval_score for h in hits)
    only = index.search("tides", k=30, where="topic = 'coral reefs'")
    assert sorted(h.id for h in only) == ["d14", "d22", "d6"]
    assert only[0].metadata["topic"] == "coral reefs"


def test_search_with_reranking(tmp_path: Path, embedder: Embedder, reranker: Reranker) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    docs = corpus()
    index.add(docs)
    hits = index.search("baking bread", k=4, reranker=reranker, candidates=10)
    candidates = [h.id for h in index.search("baking bread", k=10)]
    by_id = {d.id: d for d in docs}
    scores = reranker.score("baking bread", [passage(by_id[c].title, by_id[c].text) for c in candidates],
                            instruction=index.info.query_instruction)
    expect = [candidates[i] for i in np.argsort(-scores, kind="stable")[:4]]
    assert [h.id for h in hits] == expect
    np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1][:4], rtol=1e-5)
    assert all(h.rerank_score == h.score for h in hits)


@pytest.mark.slow
def test_a_10mb_document_is_chunked(tmp_path: Path, embedder: Embedder) -> None:
    text = ("=" * 63 + "\n") * (10_000_000 // 64)  # 10 MB that the real tokenizer packs into ~312k tokens
    index = Index.open(tmp_path / "db", model=embedder, chunk_tokens=1024, overlap=0)
    rep = index.add([Document("big", text)], progress=False)
    # 2 tokens per 64-byte line -> about 312k tokens -> about 305 chunks of 1024 tokens
    assert rep.chunks == len(index) and 290 <= rep.chunks <= 320
    assert rep.tokens >= 300_000
    assert len(index.search("====", k=3)) == 1  # one document, however many chunks


def test_add_takes_dicts_like_documents(tmp_path: Path, embedder: Embedder) -> None:
    """Issue 11.11: dicts with id/_id, text, title and other keys as metadata."""
    index = Index.open(tmp_path / "db", model=embedder)
    report = index.add([{"id": "a", "text": "Notes about the moon.", "title": "Moon", "year": 2020},
                        {"_id": 7, "text": "Baking bread."}, Document("c", "Rivers of Europe.")])
    assert report.added == 3
    hit = index.search("moon", k=3)
    assert {h.id for h in hit} == {"a", "7", "c"}
    assert next(h for h in hit if h.id == "a").metadata == {"year": 2020}
    with pytest.raises(InputError, match=r"documents\[0\] needs an 'id'"):
        index.add([{"text": "no id"}])


def test_table_knows_its_model_by_weights_not_by_folder(tmp_path: Path, tiny_embedding_path: Path) -> None:
    """Issue 11.6: a moved folder with the same weights is accepted, other weights are refused."""
    import shutil

    src = tmp_path / "model-a"
    shutil.copytree(tiny_embedding_path, src)
    index = Index.open(tmp_path / "db", model=src, device="cpu")
    index.add(corpus(3))
    moved = tmp_path / "moved" / "renamed-model"
    moved.parent.mkdir()
    src.rename(moved)
    assert Index.open(tmp_path / "db", model=moved, device="cpu").add(corpus(4)).added == 1
    with pytest.raises(InputError, match="no longer there; pass the model with --model"):
        Index.open(tmp_path / "db").search("q")
    # same name, shape and tokenizer as the table's model, other weights
    other = make_checkpoint(tmp_path / "elsewhere" / "model-a", "embedding", seed=1)
    with pytest.raises(InputError, match="holds other weights"):
        Index.open(tmp_path / "db", model=other, device="cpu")


def test_one_add_refuses_an_id_given_twice_before_any_work(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    with pytest.raises(InputError, match="document id 'a' occurs twice in one add"):
        index.add([{"id": "a", "text": "first version"}, {"id": "b", "text": "x"}, {"id": "a", "text": "second"}])
    assert len(index) == 0
    index.add([{"id": "a", "text": "first version"}])
    with pytest.raises(InputError, match="occurs twice"):
        index.add([Document("a", "new"), Document("a", "newer")])
    assert [h.text for h in index.search("version", k=5)] == ["first version"]  # unchanged, one row


def test_a_run_refused_for_its_input_leaves_no_table_to_bind_the_next(tmp_path: Path, embedder: Embedder) -> None:
    """A bad metadata name is found before any embedding, and the table is made by the first write only: the
    next run, with other chunk settings, makes the table its own way."""
    index = Index.open(tmp_path / "db", model=embedder, chunk_tokens=128)
    with pytest.raises(InputError, match="metadata field 'chunk' of document 'a' cannot be a column"):
        index.add([{"id": "a", "text": "hello", "chunk": 7}])
    assert index.embedder is embedder and not any((tmp_path / "db").glob("*.lance"))
    again = Index.open(tmp_path / "db", model=embedder, chunk_tokens=256)
    assert again.add([{"id": "a", "text": "hello", "part": 7}]).added == 1
    assert Index.open(tmp_path / "db").info.chunk_tokens == 256


def test_chunks_fit_max_length_and_a_table_keeps_its_own(tmp_path: Path, tiny_embedding_path: Path) -> None:
    with pytest.raises(InputError, match=r"chunk_tokens=4096 does not fit max_length=256 .*--chunk-tokens 255 or less"):
        Index.open(tmp_path / "db", model=tiny_embedding_path, chunk_tokens=4096, max_length=256, device="cpu")
    index = Index.open(tmp_path / "db", model=tiny_embedding_path, max_length=64, device="cpu")
    assert (index.info.max_length, index.info.chunk_tokens, index.info.overlap) == (64, 63, 7)  # what fits
    long = " ".join(f"sentence {i} about topic {i % 7}." for i in range(200))
    rep = index.add([{"id": "a", "text": long}])
    assert rep.chunks > 10 and rep.tokens <= rep.chunks * 64  # every chunk embedded whole
    with pytest.raises(InputError, match="was made with max_length=64, not 32"):
        Index.open(tmp_path / "db", max_length=32, device="cpu").add([{"id": "b", "text": "x"}])
    reopened = Index.open(tmp_path / "db", device="cpu")  # the table's own length, for chunks and queries
    assert reopened.add([{"id": "b", "text": "x"}]).added == 1 and reopened.embedder.max_length == 64
