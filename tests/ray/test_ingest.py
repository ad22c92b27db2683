"""`ingest_vectors` (`ray/ingest.py`): an embed-corpus output folder into a LanceDB table, without a model. No Ray.

References: the vectors, ids and texts written into the folder here (random vectors, so nothing is
recomputed by a model), read back from the table with lancedb itself; the manifest written here for the
table record; `Index.add` of the same documents for "as `qwen-embed index` would" (it finds them stored).
The rules checked are the module docstring's: one chunk `{id}#0` per row, upserts by document id, rows
already stored skipped, a killed ingest re-run writes the rest, only the manifest's job's parts read,
refusals (unfinished run, another model or dim, a bad batch size, a --db that is not a database) in one
line before anything is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pytest

from qwen_embed import DEFAULT_INSTRUCTION
from qwen_embed.errors import QwenEmbedError
from qwen_embed.ray.ingest import IngestReport, ingest_vectors
from qwen_embed.ray.parts import PartsWriter
from qwen_embed.store import open_store
from qwen_embed.tokenizer import QwenTokenizer
from tests.conftest import TinyCheckpoint

IDS = ["doc-3", "doc-1", "b", "a7", "z", "doc-10", "m"]
TEXTS = ["the rise and fall of the sea", "who wrote hamlet", "green tea", "wings push air down", "rocks sink",
         "a recipe for bread", "the moon is far"]
MAX_LENGTH = 512


def random_vectors(n: int, seed: int, dim: int = 64) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def vectors_folder(folder: Path, model: Path, ids: list[str], vectors: np.ndarray, texts: list[str] | None = None,
                   *, job: str = "job-a", dtype_out: str = "float32", per_part: int = 3,
                   complete: bool = True, **recorded: Any) -> Path:
    """An embed-corpus output folder (parts of `per_part` rows and the manifest) holding these rows."""
    dim = vectors.shape[1]
    manifest = {"model": str(model.resolve()), "dim": dim, "hidden_size": 64, "max_length": MAX_LENGTH,
                "tokenizer_fingerprint": QwenTokenizer.from_dir(model).fingerprint, "dtype_out": dtype_out,
                "instruction": None, "keep_text": texts is not None, "input": "/corpus.jsonl", "id_column": "id",
                "text_column": "text", **recorded}
    writer = PartsWriter.open(folder, job=job, manifest=manifest, dim=dim, dtype_out=dtype_out,
                              keep_text=texts is not None)
    for a in range(0, len(ids), per_part):
        writer.write(ids[a:a + per_part], vectors[a:a + per_part], None if texts is None else texts[a:a + per_part])
    if complete:
        writer.finish(len(ids))
    else:
        writer.close()
    return folder


def table_rows(db: Path, table: str = "documents") -> dict[str, dict[str, Any]]:
    """Every stored row by id, read with lancedb itself: doc_id, chunk, text, title, vector (float32)."""
    t: pa.Table = lancedb.connect(str(db)).open_table(table).to_arrow()
    out = {}
    for row in t.select(["id", "doc_id", "chunk", "text", "title", "vector"]).to_pylist():
        row["vector"] = np.asarray(row["vector"], dtype=np.float32)
        out[row.pop("id")] = row
    return out


@pytest.mark.parametrize(("dtype_out", "keep_text"), [("float32", True), ("float16", False)])
def test_each_row_is_one_chunk_with_its_vector_and_text(small_embedding_path: Path, tmp_path: Path, dtype_out: str,
                                                        keep_text: bool) -> None:
    vecs = random_vectors(len(IDS), seed=1)
    folder = vectors_folder(tmp_path / "vectors", small_embedding_path, IDS, vecs, TEXTS if keep_text else None,
                            dtype_out=dtype_out)
    assert len(list(folder.glob("part-*.parquet"))) == 3
    report = ingest_vectors(folder, tmp_path / "db")
    assert (report.rows, report.written, report.unchanged) == (7, 7, 0)
    assert report.summary().startswith("7 vectors: 7 written, 0 already stored, in ")
    rows = table_rows(tmp_path / "db")
    assert sorted(rows) == sorted(f"{i}#0" for i in IDS)
    stored = np.float16 if dtype_out == "float16" else np.float32
    for i, doc in enumerate(IDS):
        row = rows[f"{doc}#0"]
        assert (row["doc_id"], row["chunk"], row["title"]) == (doc, 0, "")
        assert row["text"] == (TEXTS[i] if keep_text else "")
        np.testing.assert_array_equal(row["vector"], vecs[i].astype(stored).astype(np.float32))
    info = open_store(tmp_path / "db").info
    assert (info.model, info.dim, info.hidden_size, info.precision) == (str(small_embedding_path.resolve()), 64, 64,
                                                                       "float32")
    assert info.tokenizer_fingerprint == QwenTokenizer.from_dir(small_embedding_path).fingerprint
    # embed-corpus embeds each row whole, cut at max_length: chunks of max_length, no overlap
    assert (info.chunk_tokens, info.overlap, info.max_length) == (MAX_LENGTH, 0, MAX_LENGTH)
    assert info.query_instruction == DEFAULT_INSTRUCTION


def test_rows_stored_are_skipped_and_another_jobs_rows_replace_them(small_embedding_path: Path,
                                                                     tmp_path: Path) -> None:
    first = random_vectors(len(IDS), seed=2)
    folder_a = vectors_folder(tmp_path / "a", small_embedding_path, IDS, first)
    db = tmp_path / "db"
    ingest_vectors(folder_a, db)
    again = ingest_vectors(folder_a, db)
    assert (again.rows, again.written, again.unchanged) == (7, 0, 7)
    # another job (other vectors) over five of the ids and two new ones: upserted by document id
    ids_b = [*IDS[:5], "new-1", "new-2"]
    second = random_vectors(len(ids_b), seed=3)
    report = ingest_vectors(vectors_folder(tmp_path / "b", small_embedding_path, ids_b, second, job="job-b"), db)
    assert (report.rows, report.written, report.unchanged) == (7, 7, 0)
    rows = table_rows(db)
    assert len(rows) == 9
    want = {**{d: v for d, v in zip(IDS, first, strict=True)}, **{d: v for d, v in zip(ids_b, second, strict=True)}}
    for doc, vec in want.items():
        np.testing.assert_array_equal(rows[f"{doc}#0"]["vector"], vec)


@pytest.mark.parametrize("other", [{"max_length": MAX_LENGTH // 2}, {"dtype_out": "float16"}])
def test_the_same_texts_embedded_with_other_settings_replace_the_stored_vectors(
        small_embedding_path: Path, tmp_path: Path, other: dict[str, Any]) -> None:
    """A row with text is skipped only when its vector was made as the stored one was: the same texts cut at
    another max_length, or stored as float16, are other vectors and replace them (both ways)."""
    db = tmp_path / "db"
    first, second = random_vectors(7, seed=7), random_vectors(7, seed=8)
    folder_a = vectors_folder(tmp_path / "a", small_embedding_path, IDS, first, TEXTS)
    folder_b = vectors_folder(tmp_path / "b", small_embedding_path, IDS, second, TEXTS, job="job-b", **other)
    for folder, want in ((folder_a, first), (folder_b, second), (folder_a, first)):
        report = ingest_vectors(folder, db)
        assert (report.rows, report.written, report.unchanged) == (7, 7, 0), folder
        again = ingest_vectors(folder, db)  # the same vectors once more: all stored already
        assert (again.written, again.unchanged) == (0, 7)
        rows = table_rows(db)
        stored = np.float16 if folder == folder_b and other.get("dtype_out") else np.float32
        for doc, vec in zip(IDS, want, strict=True):
            np.testing.assert_array_equal(rows[f"{doc}#0"]["vector"], vec.astype(stored).astype(np.float32))


def test_index_add_of_the_same_documents_finds_them_stored(small_embedding_path: Path, tmp_path: Path) -> None:
    """With the texts kept, a row is stored as `qwen-embed index` stores the document {id, text}: indexing
    the same documents afterwards finds every one unchanged (and loads no model)."""
    from qwen_embed.retrieval.index import Index

    folder = vectors_folder(tmp_path / "vectors", small_embedding_path, IDS, random_vectors(7, seed=4), TEXTS)
    ingest_vectors(folder, tmp_path / "db")
    index = Index.open(tmp_path / "db", create=False)
    report = index.add([{"id": d, "text": t} for d, t in zip(IDS, TEXTS, strict=True)])
    assert report.unchanged == 7 and report.added == report.updated == 0
    assert index._embedder is None  # nothing was embedded


def test_a_killed_ingest_run_again_writes_the_rest(small_embedding_path: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch of `batch_rows` is one commit: a run killed after its first commit leaves those rows, and
    the next run writes only the others."""
    from qwen_embed.store.lance import LanceStore

    vecs = random_vectors(len(IDS), seed=5)
    folder = vectors_folder(tmp_path / "vectors", small_embedding_path, IDS, vecs, per_part=4)
    real = LanceStore.replace_documents
    calls: list[int] = []

    def dies_on_the_second_commit(self: LanceStore, doc_ids: list[str], rows: Any) -> None:
        calls.append(len(doc_ids))
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(self, doc_ids, rows)

    monkeypatch.setattr(LanceStore, "replace_documents", dies_on_the_second_commit)
    with pytest.raises(KeyboardInterrupt):
        ingest_vectors(folder, tmp_path / "db", batch_rows=3)
    monkeypatch.setattr(LanceStore, "replace_documents", real)
    assert calls == [3, 1] and len(table_rows(tmp_path / "db")) == 3  # the first part's first 3 rows
    report = ingest_vectors(folder, tmp_path / "db", batch_rows=3)
    assert (report.rows, report.written, report.unchanged) == (7, 4, 3)
    rows = table_rows(tmp_path / "db")
    assert len(rows) == 7
    for doc, vec in zip(IDS, vecs, strict=True):
        np.testing.assert_array_equal(rows[f"{doc}#0"]["vector"], vec)


def test_only_the_parts_of_the_manifests_job_are_read(small_embedding_path: Path, tmp_path: Path) -> None:
    """A part of another job beside them (left by an --overwrite that wrote beside it) is not ingested."""
    folder = vectors_folder(tmp_path / "vectors", small_embedding_path, IDS, random_vectors(7, seed=6))
    other = vectors_folder(tmp_path / "other", small_embedding_path, ["x1", "x2"], random_vectors(2, seed=7),
                           job="job-other")
    part = next(other.glob("part-*.parquet"))
    shutil.copy(part, folder / "part-000099-0a1b2c3d.parquet")
    report = ingest_vectors(folder, tmp_path / "db")
    assert report.rows == 7 and sorted(table_rows(tmp_path / "db")) == sorted(f"{i}#0" for i in IDS)


def test_a_model_named_another_way_is_accepted(small_embedding_path: Path, tmp_path: Path) -> None:
    """--model may name the vectors' model as a relative path or by its name; the table records the manifest's."""
    folder = vectors_folder(tmp_path / "vectors", small_embedding_path, IDS, random_vectors(7, seed=8))
    report = ingest_vectors(folder, tmp_path / "db", model=f"some-org/{small_embedding_path.name}", dim=64)
    assert report.written == 7
    assert open_store(tmp_path / "db").info.model == str(small_embedding_path.resolve())


def unfinished(tmp: Path, model: Path) -> Path:
    return vectors_folder(tmp / "vectors", model, IDS, random_vectors(7, seed=9), complete=False)


def finished(tmp: Path, model: Path) -> Path:
    return vectors_folder(tmp / "vectors", model, IDS, random_vectors(7, seed=9))


def no_manifest(tmp: Path, model: Path) -> Path:
    (tmp / "vectors").mkdir()
    return tmp / "vectors"


@pytest.mark.parametrize(("make", "kwargs", "db_state", "needles"), [
    (unfinished, {}, None, ("has not finished", "run it again to complete it")),
    (finished, {"model": "Qwen/Other"}, None, ("were made with model", "'Qwen/Other'", "leave --model out")),
    (finished, {"dim": 32}, None, ("have dim 64, not 32", "leave --dim out")),
    (finished, {"batch_rows": 0}, None, ("batch_rows must be a positive integer, got 0",)),
    (finished, {"batch_rows": True}, None, ("batch_rows must be a positive integer, got True",)),
    (finished, {"batch_rows": 2.5}, None, ("batch_rows must be a positive integer, got 2.5",)),
    (no_manifest, {}, None, ("is not an embed-corpus output folder", "qwen-embed embed-corpus INPUT -o")),
    (finished, {}, "other files", ("holds other files (notes.txt)", "choose a new folder")),
    (finished, {}, "a file", ("is a file",)),
    (finished, {}, "missing parent", ("does not exist; create it first",)),
], ids=["unfinished", "other-model", "other-dim", "batch-0", "batch-bool", "batch-float", "no-manifest",
        "db-of-other-files", "db-a-file", "db-missing-parent"])
def test_refusals_are_one_line_and_write_nothing(small_embedding_path: Path, tmp_path: Path, make: Any,
                                                 kwargs: dict[str, Any], db_state: str | None,
                                                 needles: tuple[str, ...]) -> None:
    folder = make(tmp_path, small_embedding_path)
    db = tmp_path / "db"
    if db_state == "other files":
        db.mkdir()
        (db / "notes.txt").write_text("keep me")
    elif db_state == "a file":
        db.write_text("not a database")
    elif db_state == "missing parent":
        db = tmp_path / "missing" / "db"
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(QwenEmbedError) as info:
        ingest_vectors(folder, db, **kwargs)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if db.is_dir():
        assert [p.name for p in db.iterdir()] == ["notes.txt"]


def test_report_summary() -> None:
    assert IngestReport(rows=5, written=3, unchanged=2, seconds=1.26).summary() == \
        "5 vectors: 3 written, 2 already stored, in 1.3 s"


def test_vectors_of_other_weights_in_a_folder_of_the_same_name_are_refused(tiny_checkpoint: TinyCheckpoint,
                                                                           tmp_path: Path) -> None:
    """Two fine-tunes exported as `runs/a/model` and `runs/b/model` (one tokenizer, one shape) are two models:
    embed-corpus records the weights' fingerprint (hub.weights_fingerprint) and a table refuses the other's
    vectors, which it took for the same model by name before; the same weights moved elsewhere are accepted."""
    from qwen_embed.ray.job import model_facts

    a, b = tmp_path / "runs" / "a" / "model", tmp_path / "runs" / "b" / "model"
    shutil.copytree(tiny_checkpoint(tokenizer="small", seed=1), a)
    shutil.copytree(tiny_checkpoint(tokenizer="small", seed=2), b)
    facts_a, facts_b = model_facts(str(a), None, MAX_LENGTH), model_facts(str(b), None, MAX_LENGTH)
    assert facts_a["weights_fingerprint"] != facts_b["weights_fingerprint"]
    assert facts_a["tokenizer_fingerprint"] == facts_b["tokenizer_fingerprint"]
    ids = ["x", "y"]
    db = tmp_path / "db"
    ingest_vectors(vectors_folder(tmp_path / "va", a, ids, random_vectors(2, 1),
                                  weights_fingerprint=facts_a["weights_fingerprint"]), db)
    other = vectors_folder(tmp_path / "vb", b, ids, random_vectors(2, 2), job="job-b",
                           weights_fingerprint=facts_b["weights_fingerprint"])
    with pytest.raises(QwenEmbedError, match="holds other weights"):
        ingest_vectors(other, db)
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(a, moved)  # the same weights in another folder: the same model
    same = vectors_folder(tmp_path / "vc", moved, ["z"], random_vectors(1, 3), job="job-c",
                          weights_fingerprint=model_facts(str(moved), None, MAX_LENGTH)["weights_fingerprint"])
    ingest_vectors(same, db)
    assert sorted(table_rows(db)) == ["x#0", "y#0", "z#0"]


def test_vectors_embedded_with_another_instruction_are_refused(small_embedding_path: Path, tmp_path: Path) -> None:
    """Texts embedded with an instruction (as queries) and without one are not comparable: the table records
    the instruction, and vectors of another one are refused, not skipped as 'already stored' by their text."""
    texts = ["alpha", "beta"]
    db = tmp_path / "db"
    ingest_vectors(vectors_folder(tmp_path / "plain", small_embedding_path, ["a", "b"], random_vectors(2, 1),
                                  texts), db)
    assert open_store(db, "documents").info.document_instruction is None
    asked = vectors_folder(tmp_path / "asked", small_embedding_path, ["a", "b"], random_vectors(2, 2), texts,
                           job="job-q", instruction="Find the passage")
    with pytest.raises(QwenEmbedError, match="embedded with no instruction, these vectors were embedded with "
                                             "instruction 'Find the passage'"):
        ingest_vectors(asked, db)
    ingest_vectors(asked, tmp_path / "db2")
    assert open_store(tmp_path / "db2", "documents").info.document_instruction == "Find the passage"
