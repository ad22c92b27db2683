"""Put the vectors of an embed-corpus output folder into a LanceDB table, without embedding again.

    report = ingest_vectors("vectors/", "my-db", table="documents")   # then: qwen-embed search ... --db my-db

The folder's manifest says which model, dimension and tokenizer made the vectors. A new table records
them (`TableInfo`, as `qwen-embed index` would, with chunks of the embedder's max_length and no
overlap: embed-corpus embeds each row whole, truncated at max_length; the weights' fingerprint and the
instruction the texts were embedded with, too); an existing table must hold the same model (the same
weights, when both record them: two fine-tunes in folders of one name are two models), dimension and
instruction (`store.check_compatible`), else nothing is written. A `--model` given must
name the vectors' model. Each row becomes one chunk (`{id}#0`) of the document `id`; its text is
stored when the folder kept it. Rows are upserted by document id in batches, each one commit, so a
killed ingest re-run writes the rest and rows already stored (same content hash) are skipped. A row
with text is hashed as `qwen-embed index` hashes the document {id, text} when its vector was made as the
table's are (the table's max_length, float32 output), so that indexing the same documents later finds them
stored; a vector cut at another max_length or stored as float16 is hashed with those settings, so that the
same texts ingested with other settings replace the stored vectors (and are replaced in turn). Rows without
text are hashed by job: another job's replace them. A `db` that
is a file, lies under a missing folder or holds other files is refused first, as `qwen-embed index` does.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..embedder import DEFAULT_INSTRUCTION
from ..errors import InputError, is_whole
from ..files import fingerprint
from ..retrieval.index import check_db_folder, doc_hash, model_id
from ..retrieval.sources import Document
from ..store import ChunkRows, TableInfo, TableNotFoundError, VectorStore, check_compatible, open_store
from ..store.base import model_name
from .parts import our_parts, read_manifest

DEFAULT_INGEST_ROWS = 4096


@dataclass
class IngestReport:
    """What an ingest did."""

    rows: int = 0
    written: int = 0
    unchanged: int = 0
    seconds: float = 0.0
    maintenance: str | None = None

    def summary(self) -> str:
        return (f"{self.rows} vectors: {self.written} written, {self.unchanged} already stored, in "
                f"{self.seconds:.1f} s")


def table_info(manifest: dict[str, object]) -> TableInfo:
    """The record of a new table for these vectors."""
    max_length = int(manifest["max_length"])  # type: ignore[call-overload]
    instruction = manifest.get("instruction")
    return TableInfo(model=str(manifest["model"]), dim=int(manifest["dim"]),  # type: ignore[call-overload]
                     hidden_size=int(manifest["hidden_size"]),  # type: ignore[call-overload]
                     tokenizer_fingerprint=str(manifest["tokenizer_fingerprint"]),
                     query_instruction=DEFAULT_INSTRUCTION, chunk_tokens=max_length, overlap=0,
                     max_length=max_length, document_instruction=instruction if isinstance(instruction, str) else None,
                     weights_fingerprint=str(manifest.get("weights_fingerprint") or ""))


def _check_model(manifest: dict[str, object], model: str | os.PathLike[str] | None, folder: Path) -> None:
    if model is None:
        return
    wanted, have = model_id(model), str(manifest["model"])
    if wanted != have and model_name(wanted) != model_name(have):
        raise InputError(f"the vectors in {folder} were made with model {have!r}, not {wanted!r}; leave --model "
                         "out or embed the corpus again with that model.")


def open_for_vectors(db: str | os.PathLike[str], table: str, info: TableInfo) -> VectorStore:
    """The table, made for `info` when missing, checked to hold the same model and dimension."""
    try:
        store = open_store(db, table)
    except TableNotFoundError:
        return open_store(db, table, info)
    check_compatible(store.info, table, model=info.model, dim=info.dim, hidden_size=info.hidden_size,
                     tokenizer_fingerprint=info.tokenizer_fingerprint,
                     weights_fingerprint=info.weights_fingerprint or None)
    if store.info.document_instruction != info.document_instruction:  # their vectors are not comparable
        def said(x: str | None) -> str:
            return "no instruction" if x is None else f"instruction {x[:60]!r}"

        raise InputError(f"table {table!r} holds texts embedded with {said(store.info.document_instruction)}, these "
                         f"vectors were embedded with {said(info.document_instruction)}; ingest them into a new "
                         "--table (or embed the corpus again as the table's were).")
    return store


def vector_settings(manifest: dict[str, object], table: TableInfo) -> list[object] | None:
    """What made these vectors other than the table's own (its max_length, float32 output), beyond what a
    table checks itself (model, weights, dimension, instruction); None when nothing."""
    settings = [manifest.get("max_length"), manifest.get("dtype_out", "float32")]
    return None if settings == [table.max_length, "float32"] else settings


def _rows(part: pa.Table, job: str, settings: list[object] | None) -> ChunkRows:
    ids = part.column("id").to_pylist()
    texts = part.column("text").to_pylist() if "text" in part.column_names else None
    width = part.schema.field("vector").type.list_size
    flat = part.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(len(ids), width)
    if texts is None:
        hashes = [fingerprint(job, i)[:32] for i in ids]
    else:
        hashes = [doc_hash(Document(i, t)) for i, t in zip(ids, texts, strict=True)]
        if settings is not None:
            hashes = [fingerprint(h, settings)[:32] for h in hashes]
    n = len(ids)
    return ChunkRows(ids=[f"{i}#0" for i in ids], doc_ids=ids, chunks=[0] * n, texts=texts or [""] * n,
                     titles=[""] * n, hashes=hashes, metadata=[{} for _ in range(n)], vectors=vectors)


def _take(rows: ChunkRows, keep: list[int]) -> ChunkRows:
    def pick(values: list[Any]) -> list[Any]:
        return [values[i] for i in keep]

    return ChunkRows(ids=pick(rows.ids), doc_ids=pick(rows.doc_ids), chunks=pick(rows.chunks), texts=pick(rows.texts),
                     titles=pick(rows.titles), hashes=pick(rows.hashes), metadata=pick(rows.metadata),
                     vectors=rows.vectors[keep])


def ingest_vectors(folder: str | os.PathLike[str], db: str | os.PathLike[str], *, table: str = "documents",
                   model: str | os.PathLike[str] | None = None, dim: int | None = None,
                   batch_rows: int = DEFAULT_INGEST_ROWS) -> IngestReport:
    """Upsert the vectors of an embed-corpus output folder into `table` of the LanceDB folder `db`."""
    t0 = time.perf_counter()
    src = Path(folder)
    manifest = read_manifest(src)
    if not manifest.get("complete"):
        raise InputError(f"the embed-corpus run that writes {src} has not finished; run it again to complete it, "
                         "then ingest.")
    _check_model(manifest, model, src)
    if dim is not None and dim != manifest["dim"]:
        raise InputError(f"the vectors in {src} have dim {manifest['dim']}, not {dim}; leave --dim out or embed "
                         "the corpus again with that --dim.")
    if not is_whole(batch_rows, 1):
        raise InputError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    check_db_folder(db)  # as `qwen-embed index` does: a file, a missing parent or a folder of other files refused
    job = str(manifest["job"])
    parts = [p for p, rec in our_parts(src) if rec.get("job") == job]
    store = open_for_vectors(db, table, table_info(manifest))
    settings = vector_settings(manifest, store.info)
    report = IngestReport()
    with store.writing():
        stored = store.doc_hashes()
        for path in parts:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                rows = _rows(pa.Table.from_batches([batch]), job, settings)
                report.rows += len(rows)
                keep = [k for k, (d, h) in enumerate(zip(rows.doc_ids, rows.hashes, strict=True)) if stored.get(d) != h]
                report.unchanged += len(rows) - len(keep)
                if keep:
                    rows = rows if len(keep) == len(rows) else _take(rows, keep)
                    store.replace_documents(rows.doc_ids, rows)
                    report.written += len(rows)
        if report.written or store.maintenance_due():
            report.maintenance = store.maintain()
    report.seconds = time.perf_counter() - t0
    return report
