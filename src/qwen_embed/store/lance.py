"""The default vector store: one LanceDB table in a local folder (embedded, no server).

- The table's Arrow schema metadata holds `TableInfo` (model, dim, instruction, tokenizer fingerprint,
  chunking) under the key `qwen_embed`.
- A batch of documents is written with one `merge_insert` on the chunk id that also deletes the
  documents' chunks the batch no longer has (`when_not_matched_by_source_delete` restricted to those
  documents): one Lance commit, so an interrupted run leaves each document either old or new, never
  both or half.
- Metadata fields become columns (int64, float64, bool or string; lists and objects as JSON strings),
  added on first sight, so that `--where` filters use LanceDB's SQL syntax over them.
- Search: cosine distance; exact (flat) below ANN_MIN_ROWS rows, above it an IVF_SQ index (sqrt(n)/4
  partitions, int8 scalar quantisation). By default a search probes every partition and re-scores the
  best `k * refine_factor` candidates (5) with the full-precision vectors: recall@10 is ~1.0 even on
  random vectors (the worst case: no cluster structure), and the quantised scan is still ~10x faster
  than Lance's exact scan at 100k rows. On real embeddings, which cluster, `nprobes` a quarter of the
  partitions keeps recall high and is faster again.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError
from .base import ANN_MIN_ROWS, INFO_KEY, RESERVED_COLUMNS, ChunkRows, StoreHit, TableInfo, TableNotFoundError

DEFAULT_REFINE_FACTOR = 5
INDEX_NAME = "vector_idx"
DELETE_BATCH = 512
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SQL_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "STRING"}


def ann_partitions(rows: int) -> int:
    """IVF partitions for a table of `rows` rows: sqrt(rows) / 4, at least 1."""
    return max(1, round(math.sqrt(rows) / 4))


def sql_quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def base_schema(info: TableInfo) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("title", pa.string()),
            pa.field("hash", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), info.dim)),
        ],
        metadata={INFO_KEY: info.to_json().encode()},
    )


def metadata_type(value: Any) -> pa.DataType | None:
    """Column type of a metadata value (None for a null, which says nothing)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()


def coerce(value: Any, typ: pa.DataType, key: str, doc_id: str) -> Any:
    """A metadata value in the column's type, or an InputError naming the field and document."""
    if value is None:
        return None
    if typ == pa.string():
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if typ == pa.float64() and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if metadata_type(value) == typ:
        return value
    raise InputError(
        f"metadata field {key!r} of document {doc_id!r} is {type(value).__name__} {value!r:.40}, but the table "
        f"stores {typ} there; make the field's type consistent in the source or index into a new --table."
    )


class LanceStore:
    """A `VectorStore` over one LanceDB table (see the module docstring)."""

    def __init__(self, path: Path, name: str, table: Any, info: TableInfo) -> None:
        self.path = path
        self.name = name
        self.table = table
        self.info = info

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def open(cls, db: str | os.PathLike[str], table: str = "documents", info: TableInfo | None = None) -> LanceStore:
        """Open `table` in the folder `db`; with `info`, create both when missing."""
        import lancedb

        path = Path(db).expanduser()
        if path.exists() and not path.is_dir():
            raise InputError(f"--db {path} is a file; give a folder for the database: "
                             + ("one made by `qwen-embed index`." if info is None else "a new one is created."))
        if not isinstance(table, str) or not _TABLE_NAME.match(table):
            raise InputError(f"table name {table!r} is not valid; use letters, digits, '_', '-' and '.'.")
        if info is None and not path.is_dir():
            raise TableNotFoundError(f"database folder {path} does not exist; index documents first: "
                             f"qwen-embed index SOURCE --db {path}")
        if info is not None:
            path.mkdir(parents=True, exist_ok=True)
        conn = lancedb.connect(str(path))
        try:
            tbl = conn.open_table(table)
        except (ValueError, FileNotFoundError):
            if info is None:
                names = ", ".join(conn.list_tables().tables) or "none"
                raise TableNotFoundError(f"{path} has no table {table!r} (tables: {names}); index documents into it "
                                 f"first, or pass --table.") from None
            tbl = conn.create_table(table, schema=base_schema(info))
            return cls(path, table, tbl, info)
        raw = (tbl.schema.metadata or {}).get(INFO_KEY)
        if raw is None:
            raise InputError(f"table {table!r} in {path} was not made by qwen-embed (no {INFO_KEY.decode()} "
                             f"record); choose another --table.")
        stored = TableInfo.from_json(raw)
        vec = tbl.schema.field("vector").type
        assert getattr(vec, "list_size", stored.dim) == stored.dim, "vector column and table record disagree"
        return cls(path, table, tbl, stored)

    # -- reading ------------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self.table.count_rows())

    def _scan(self, columns: list[str]) -> pa.Table:
        return self.table.search().select(columns).limit(None).to_arrow()

    def doc_hashes(self) -> dict[str, str]:
        t = self._scan(["doc_id", "hash"])
        return dict(zip(t["doc_id"].to_pylist(), t["hash"].to_pylist(), strict=True))

    def vectors(self) -> tuple[list[str], np.ndarray]:
        t = self._scan(["id", "vector"])
        flat = t["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        return t["id"].to_pylist(), np.asarray(flat, dtype=np.float32).reshape(len(t), self.info.dim)

    def metadata_columns(self) -> dict[str, pa.DataType]:
        return {f.name: f.type for f in self.table.schema if f.name not in RESERVED_COLUMNS}

    # -- writing ------------------------------------------------------------------------------------
    def _ensure_columns(self, rows: ChunkRows) -> dict[str, pa.DataType]:
        have = self.metadata_columns()
        new: dict[str, pa.DataType] = {}
        for doc_id, meta in zip(rows.doc_ids, rows.metadata, strict=True):
            for key, value in meta.items():
                if key in have or key in new:
                    continue
                if key in RESERVED_COLUMNS or not _COLUMN_NAME.match(key):
                    raise InputError(f"metadata field {key!r} of document {doc_id!r} cannot be a column: use a "
                                     f"name of letters, digits and '_' other than {', '.join(RESERVED_COLUMNS)}.")
                typ = metadata_type(value)
                if typ is not None:
                    new[key] = typ
        if new:
            self.table.add_columns({k: f"CAST(NULL AS {_SQL_TYPES[t]})" for k, t in new.items()})
            have.update(new)
        return have

    def _arrow(self, rows: ChunkRows) -> pa.Table:
        meta_cols = self._ensure_columns(rows)
        n, dim = len(rows), self.info.dim
        vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32)
        if vectors.shape != (n, dim):
            raise InputError(f"vectors have shape {vectors.shape}; the table stores {dim}-dim vectors.")
        cols: dict[str, pa.Array] = {
            "id": pa.array(rows.ids, pa.string()),
            "doc_id": pa.array(rows.doc_ids, pa.string()),
            "chunk": pa.array(rows.chunks, pa.int32()),
            "text": pa.array(rows.texts, pa.string()),
            "title": pa.array(rows.titles, pa.string()),
            "hash": pa.array(rows.hashes, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
        for key, typ in meta_cols.items():
            values = [coerce(m.get(key), typ, key, d) for m, d in zip(rows.metadata, rows.doc_ids, strict=True)]
            cols[key] = pa.array(values, typ)
        schema = self.table.schema
        return pa.table([cols[f.name] for f in schema], schema=schema)

    def replace_documents(self, doc_ids: Sequence[str], rows: ChunkRows) -> None:
        if not doc_ids:
            return
        if len(rows) == 0:
            self.delete_documents(doc_ids)
            return
        data = self._arrow(rows)
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(in_list("doc_id", list(doc_ids))).execute(data))

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        before = self.count()
        ids = list(doc_ids)
        for i in range(0, len(ids), DELETE_BATCH):
            self.table.delete(in_list("doc_id", ids[i : i + DELETE_BATCH]))
        return before - self.count()

    # -- ANN index ----------------------------------------------------------------------------------
    def _index_stats(self) -> Any | None:
        if not any(ix.name == INDEX_NAME for ix in self.table.list_indices()):
            return None
        return self.table.index_stats(INDEX_NAME)

    def has_ann_index(self) -> bool:
        return self._index_stats() is not None

    def build_index(self) -> int:
        """(Re)build the IVF_SQ index over the current rows; returns its partition count."""
        from lancedb.index import IvfSq

        parts = ann_partitions(self.count())
        self.table.create_index("vector", config=IvfSq(distance_type="cosine", num_partitions=parts),
                                name=INDEX_NAME, replace=True)
        return parts

    def maintain(self) -> str | None:
        """Exact below ANN_MIN_ROWS rows; above, build the index, rebuild it when the table has doubled
        since, fold new rows into it otherwise; compact small files. Returns what was done."""
        n = self.count()
        stats = self._index_stats()
        done: str | None = None
        if stats is None and n >= ANN_MIN_ROWS:
            done = f"built an ANN index (IVF_SQ, {self.build_index()} partitions) over {n} rows"
        elif stats is not None and n < ANN_MIN_ROWS // 2:
            self.table.drop_index(INDEX_NAME)
            done = f"dropped the ANN index ({n} rows: searches are exact)"
        elif stats is not None and stats.num_indexed_rows * 2 < n:
            done = f"rebuilt the ANN index (IVF_SQ, {self.build_index()} partitions) over {n} rows"
        self.table.optimize()  # compacts the per-batch files and adds unindexed rows to the index
        return done

    # -- search -------------------------------------------------------------------------------------
    def search(self, vector: np.ndarray, k: int, *, where: str | None = None, exact: bool = False,
               nprobes: int | None = None, refine_factor: int | None = None) -> list[StoreHit]:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.info.dim:
            raise InputError(f"query vector has {q.shape[0]} dims; the table stores {self.info.dim}.")
        meta_cols = list(self.metadata_columns())
        query = self.table.search(q, vector_column_name="vector").distance_type("cosine").limit(k)
        if where:
            query = query.where(where, prefilter=True)
        stats = None if exact else self._index_stats()
        if stats is None:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(nprobes or ann_partitions(stats.num_indexed_rows))
            query = query.refine_factor(refine_factor or DEFAULT_REFINE_FACTOR)
        query = query.select(["id", "doc_id", "chunk", "text", "title", *meta_cols, "_distance"])
        try:
            t = query.to_arrow()
        except ValueError as e:
            if where:
                raise InputError(f"--where {where!r} is not a valid filter over the columns "
                                 f"{', '.join(['id', 'doc_id', 'chunk', 'title', *meta_cols])}: {e}") from None
            raise
        out = []
        for r in t.to_pylist():
            meta = {c: r[c] for c in meta_cols if r.get(c) is not None}
            out.append(StoreHit(r["id"], r["doc_id"], r["chunk"], r["text"], r["title"],
                                1.0 - float(r["_distance"]), meta))
        return out


def open_store(db: str | os.PathLike[str], table: str = "documents", info: TableInfo | None = None) -> LanceStore:
    """The default store: LanceDB in the local folder `db` (created, with the table, when `info` is given)."""
    return LanceStore.open(db, table, info)
