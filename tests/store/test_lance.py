"""LanceStore: atomic document replacement, metadata columns, exact search = numpy, ANN recall, bad paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qwen_embed.errors import InputError
from qwen_embed.store import ANN_MIN_ROWS, ChunkRows, LanceStore, TableInfo, TableNotFoundError, open_store


def make_info(dim: int) -> TableInfo:
    return TableInfo(model="tiny", dim=dim, hidden_size=dim, tokenizer_fingerprint="f", query_instruction="q",
                     chunk_tokens=512, overlap=64, max_length=8192)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows(doc_chunks: dict[str, int], vectors: np.ndarray, meta: dict[str, dict[str, object]] | None = None,
         tag: str = "h") -> ChunkRows:
    r = ChunkRows([], [], [], [], [], [], [], vectors)
    for doc, n in doc_chunks.items():
        for c in range(n):
            r.ids.append(f"{doc}#{c}")
            r.doc_ids.append(doc)
            r.chunks.append(c)
            r.texts.append(f"{doc} chunk {c}")
            r.titles.append(doc.upper())
            r.hashes.append(tag)
            r.metadata.append((meta or {}).get(doc, {}))
    assert len(r.ids) == len(vectors)
    return r


@pytest.fixture
def store(tmp_path: Path) -> LanceStore:
    return open_store(tmp_path / "db", "t", make_info(16))


def test_create_reopen_and_record(store: LanceStore, tmp_path: Path) -> None:
    store.replace_documents(["a"], rows({"a": 1}, unit(np.random.default_rng(0), 1, 16)))
    again = open_store(tmp_path / "db", "t")
    assert again.info == store.info
    assert again.count() == 1
    with pytest.raises(TableNotFoundError, match="has no table 'other' \\(tables: t\\)"):
        open_store(tmp_path / "db", "other")
    with pytest.raises(TableNotFoundError, match="does not exist"):
        open_store(tmp_path / "nowhere", "t")


def test_db_path_that_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "db"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file; give a folder for the database: a new one is created"):
        open_store(f, "t", make_info(16))
    with pytest.raises(InputError, match="is a file; give a folder") as e:
        open_store(f, "t")  # searching: nothing would be created, so the message does not say it is
    assert "made by `qwen-embed index`" in str(e.value) and "created" not in str(e.value)


def test_table_not_made_by_us(tmp_path: Path) -> None:
    import lancedb
    import pyarrow as pa

    lancedb.connect(str(tmp_path)).create_table("foreign", pa.table({"a": [1]}))
    with pytest.raises(InputError, match="not made by qwen-embed"):
        open_store(tmp_path, "foreign")


def test_replace_is_per_document_and_drops_stale_chunks(store: LanceStore) -> None:
    rng = np.random.default_rng(0)
    store.replace_documents(["a", "b"], rows({"a": 3, "b": 1}, unit(rng, 4, 16)))
    assert store.count() == 4
    assert store.doc_hashes() == {"a": "h", "b": "h"}
    new = unit(rng, 1, 16)
    store.replace_documents(["a"], rows({"a": 1}, new, tag="h2"))  # a shrinks from 3 chunks to 1
    ids, vecs = store.vectors()
    assert sorted(ids) == ["a#0", "b#0"]
    np.testing.assert_array_equal(vecs[ids.index("a#0")], new[0])
    assert store.doc_hashes() == {"a": "h2", "b": "h"}
    assert store.delete_documents(["b", "missing"]) == 1
    assert store.doc_hashes() == {"a": "h2"}


def test_metadata_columns_types_and_filters(store: LanceStore) -> None:
    rng = np.random.default_rng(1)
    meta = {"a": {"year": 2020, "lang": "en"}, "b": {"year": 2023, "tags": ["x", "y"]}, "c": {}}
    store.replace_documents(["a", "b", "c"], rows({"a": 1, "b": 1, "c": 1}, unit(rng, 3, 16), meta))
    cols = store.metadata_columns()
    assert {k: str(v) for k, v in cols.items()} == {"year": "int64", "lang": "string", "tags": "string"}
    hits = store.search(unit(rng, 1, 16)[0], 10, where="year > 2021")
    assert [h.doc_id for h in hits] == ["b"]
    assert hits[0].metadata == {"year": 2023, "tags": '["x", "y"]'}
    with pytest.raises(InputError, match="not a valid filter"):
        store.search(unit(rng, 1, 16)[0], 10, where="nosuch = 1")
    with pytest.raises(InputError, match="field 'year' of document 'd' is str"):
        store.replace_documents(["d"], rows({"d": 1}, unit(rng, 1, 16), {"d": {"year": "recent"}}))
    with pytest.raises(InputError, match="cannot be a column"):
        store.replace_documents(["e"], rows({"e": 1}, unit(rng, 1, 16), {"e": {"bad name": 1}}))


def test_exact_search_equals_numpy_brute_force(store: LanceStore) -> None:
    rng = np.random.default_rng(2)
    n = 600
    docs = {f"d{i}": 1 for i in range(n)}
    meta = {f"d{i}": {"part": i % 3} for i in range(n)}
    store.replace_documents(list(docs), rows(docs, unit(rng, n, 16), meta))
    ids, vecs = store.vectors()
    part = np.array([int(i[1:].split("#")[0]) % 3 for i in ids])
    for q in unit(rng, 5, 16):
        sims = vecs @ q
        hits = store.search(q, 10, exact=True)
        assert [h.id for h in hits] == [ids[j] for j in np.argsort(-sims, kind="stable")[:10]]
        np.testing.assert_allclose([h.score for h in hits], np.sort(sims)[::-1][:10], atol=1e-5)
        sub = np.where(part == 1)[0]
        hits = store.search(q, 10, where="part = 1")
        assert [h.id for h in hits] == [ids[j] for j in sub[np.argsort(-sims[sub], kind="stable")[:10]]]


@pytest.mark.slow
def test_ann_recall_on_50k_random_unit_vectors(tmp_path: Path) -> None:
    """Default ANN settings: recall@10 >= 0.95 against exact search on 50,000 random 256-d unit vectors."""
    n, dim = 50_000, 256
    assert n >= ANN_MIN_ROWS
    rng = np.random.default_rng(3)
    store = open_store(tmp_path / "db", "t", make_info(dim))
    x = unit(rng, n, dim)
    step = 25_000
    for s in range(0, n, step):
        docs = {f"d{i}": 1 for i in range(s, s + step)}
        store.replace_documents(list(docs), rows(docs, x[s : s + step]))
    assert not store.has_ann_index()
    assert store.maintain() is not None and store.has_ann_index()
    recall = []
    for q in unit(rng, 40, dim):
        exact = {h.id for h in store.search(q, 10, exact=True)}
        ann = {h.id for h in store.search(q, 10)}
        recall.append(len(exact & ann) / 10)
    assert float(np.mean(recall)) >= 0.95, recall


def test_the_table_is_made_by_its_first_write_so_a_failed_one_leaves_none(tmp_path: Path) -> None:
    """Opening with a record makes nothing: a first write refused for its rows (a bad metadata name, NaN
    vectors) leaves no empty table whose record would bind the next run to its settings."""
    store = open_store(tmp_path / "db", "t", make_info(16))
    assert store.count() == 0 and store.search(unit(np.random.default_rng(0), 1, 16)[0], 3) == []
    with pytest.raises(InputError, match="metadata field 'chunk' of document 'a' cannot be a column"):
        store.replace_documents(["a"], rows({"a": 1}, unit(np.random.default_rng(0), 1, 16), {"a": {"chunk": 7}}))
    bad = unit(np.random.default_rng(0), 1, 16)
    bad[0, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        store.replace_documents(["a"], rows({"a": 1}, bad))
    with pytest.raises(TableNotFoundError, match="has no table 't' \\(tables: none\\)"):
        open_store(tmp_path / "db", "t")
    # the next run, with other settings, makes the table with its own record and first rows (metadata included)
    other = TableInfo(**{**make_info(16).__dict__, "chunk_tokens": 128})
    store = open_store(tmp_path / "db", "t", other)
    store.replace_documents(["a"], rows({"a": 2}, unit(np.random.default_rng(1), 2, 16), {"a": {"year": 2024}}))
    again = open_store(tmp_path / "db", "t")
    assert again.info.chunk_tokens == 128 and again.count() == 2
    assert again.metadata_columns() == {"year": pa.int64()}
    hits = again.search(unit(np.random.default_rng(1), 1, 16)[0], 3, where="year = 2024")
    assert sorted(h.id for h in hits) == ["a#0", "a#1"]


def test_a_table_made_by_another_writer_in_between_is_used_when_its_record_agrees(tmp_path: Path) -> None:
    """Two runs open a new table at once; the second writes after the first made it: it adds to that table
    (one table, both documents), and refuses one made with other settings instead of mixing them."""
    first = open_store(tmp_path / "db", "t", make_info(16))
    second = open_store(tmp_path / "db", "t", make_info(16))
    third = open_store(tmp_path / "db", "t", TableInfo(**{**make_info(16).__dict__, "overlap": 32}))
    with first.writing():
        first.replace_documents(["a"], rows({"a": 1}, unit(np.random.default_rng(0), 1, 16)))
    with second.writing():
        second.replace_documents(["b"], rows({"b": 1}, unit(np.random.default_rng(1), 1, 16)))
    assert open_store(tmp_path / "db", "t").count() == 2
    with pytest.raises(InputError, match="made by another run while this one waited, with other settings "
                                         "\\(overlap=64, not 32\\)"), third.writing():
        pass
