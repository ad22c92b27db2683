"""The default vector store: one LanceDB table in a local folder (embedded, no server).

- The table's Arrow schema metadata holds `TableInfo` (model, dim, instruction, tokenizer fingerprint,
  chunking) under the key `qwen_embed`.
- A batch of documents is written with one `merge_insert` on the chunk id that also deletes the
  documents' chunks the batch no longer has (`when_not_matched_by_source_delete` restricted to those
  documents): one Lance commit, so an interrupted run leaves each document either old or new, never
  both or half.
- The table is made by its first write, with those rows in the same commit: a run that fails before
  (bad input, broken weights) leaves no empty table behind.
- Metadata fields become columns (int64, float64, bool or string; lists and objects as JSON strings),
  added on first sight, so that `--where` filters use LanceDB's SQL syntax over them.
- Search: cosine distance; exact (flat) below ANN_MIN_ROWS rows, above it an IVF_SQ index (sqrt(n)/4
  partitions, int8 scalar quantisation). By default a search probes every partition and re-scores the
  best `k * refine_factor` candidates (5) with the full-precision vectors: recall@10 is ~1.0 even on
  random vectors (the worst case: no cluster structure), and the quantised scan is still ~10x faster
  than Lance's exact scan at 100k rows. On real embeddings, which cluster, `nprobes` a quarter of the
  partitions keeps recall high and is faster again.
- Quantized tables (`TableInfo.precision`, see `quantize.py`): `float16` vectors are searched like float32
  ones. `binary` / `ubinary` tables store the packed sign bits in `vector` (uint8, Hamming distance in
  Lance; an IVF_FLAT Hamming index above ANN_MIN_ROWS) and int8 codes in `rescore`; a search takes the
  best `k * rescore_multiplier` (default 4) by Hamming distance and rescores them with the float query
  against the dequantized int8 codes (sentence-transformers' rescoring). `int8` / `uint8` tables store
  the codes in `vector`; Lance cannot search integer vectors with a float query, so the codes are scanned
  in numpy (cached per table version) and scored against the float query. The calibration ranges are
  recorded in `TableInfo.ranges`, given when the table is made or computed from its first batch.
- Faults: Lance reports a failed write as a RuntimeError whose text carries the OS error (`File too
  large (os error 27)`) or `Not found: <file>` when the folder was deleted under it; writes and table
  creation turn these into the OSError they are (`lance_io_error`), naming the database folder, which
  the CLI prints as one line (`errors.describe_os_error`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .. import quantize
from ..errors import InputError, is_whole, native_os_error
from ..files import OutputLock
from .base import (
    ANN_MIN_ROWS,
    INFO_KEY,
    RESERVED_COLUMNS,
    ChunkRows,
    StoreHit,
    TableInfo,
    TableNotFoundError,
    bind_where,
    check_metadata_name,
)

DEFAULT_REFINE_FACTOR = 5
DEFAULT_RESCORE_MULTIPLIER = 4
_VECTOR_TYPES = {"float32": pa.float32(), "float16": pa.float16(), "int8": pa.int8(), "uint8": pa.uint8()}
INDEX_NAME = "vector_idx"
DELETE_BATCH = 512
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SQL_TYPES = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "STRING"}
_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_RUST_SOURCE = re.compile(r", /\S+\.rs:\d+:\d+$")  # where in Lance's source: no use to a user


def lance_io_error(e: BaseException, path: Path) -> OSError | None:
    """The OSError behind one of Lance's I/O failures (see the module docstring), naming the database
    folder `path`; None when `e` is something else."""
    if isinstance(e, OSError) and e.errno is not None:
        return None  # already the real thing (with its own path)
    if not isinstance(e, (RuntimeError, OSError)):
        return None
    text = str(e)
    if _OS_ERROR.search(text):
        return native_os_error(RuntimeError(text), path)
    if "Not found: " in text:
        return OSError(errno.ENOENT, "a file of the table is gone", str(path))
    if "LanceError(IO)" in text:  # e.g. a short read of a file that a full disk cut
        return OSError(errno.EIO, _RUST_SOURCE.sub("", text.splitlines()[0])[:200], str(path))
    return None


@contextlib.contextmanager
def lance_io(path: Path) -> Iterator[None]:
    """Re-raise Lance's I/O failures inside the block as OSErrors (`lance_io_error`)."""
    try:
        yield
    except (RuntimeError, OSError) as e:
        err = lance_io_error(e, path)
        if err is None:
            raise
        raise err from e


def ann_partitions(rows: int) -> int:
    """IVF partitions for a table of `rows` rows: sqrt(rows) / 4, at least 1."""
    return max(1, round(math.sqrt(rows) / 4))


def sql_quote(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_quote(v) for v in values)})"


def vector_fields(info: TableInfo) -> list[pa.Field]:
    """The vector column (and binary tables' int8 rescore column) in the table's precision."""
    if info.precision in ("binary", "ubinary"):
        return [pa.field("vector", pa.list_(pa.uint8(), info.dim // 8)),
                pa.field("rescore", pa.list_(pa.int8(), info.dim))]
    return [pa.field("vector", pa.list_(_VECTOR_TYPES[info.precision], info.dim))]


def base_schema(info: TableInfo) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("title", pa.string()),
            pa.field("hash", pa.string()),
            *vector_fields(info),
        ],
        metadata={INFO_KEY: info.to_json().encode()},
    )


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).reshape(-1)), values.shape[1])


def _matrix(column: pa.ChunkedArray | pa.Array, width: int, dtype: Any) -> np.ndarray:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = arr.flatten().to_numpy(zero_copy_only=False) if len(arr) else np.zeros(0)
    return np.asarray(flat, dtype=dtype).reshape(len(arr), width)


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

    def __init__(self, path: Path, name: str, table: Any, info: TableInfo, conn: Any = None) -> None:
        self.path = path
        self.name = name
        self.table = table  # None until the first write creates it (with those rows: a failed run leaves none)
        self.info = info
        self._conn = conn
        self._codes: tuple[int, list[str], np.ndarray] | None = None  # (version, ids, int8 codes) cache

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
            # made by the first write, with its rows (and a quantized table's ranges calibrated on them), so
            # a run that fails before it (bad input, broken weights) leaves no empty table whose record
            # would bind the next run to its settings
            return cls(path, table, None, info, conn)
        raw = (tbl.schema.metadata or {}).get(INFO_KEY)
        if raw is None:
            raise InputError(f"table {table!r} in {path} was not made by qwen-embed (no {INFO_KEY.decode()} "
                             f"record); choose another --table.")
        stored = TableInfo.from_json(raw)
        vec = tbl.schema.field("vector").type
        width = stored.dim // 8 if stored.precision in ("binary", "ubinary") else stored.dim
        assert getattr(vec, "list_size", width) == width, "vector column and table record disagree"
        return cls(path, table, tbl, stored, conn)

    # -- one writer at a time ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the table's writer lock (an advisory `flock` on `DB/.TABLE.write.lock`).

        Two `qwen-embed index` runs on one table would otherwise both find a document missing and both
        insert it (merge_insert commits do not see each other): the second run waits here, then reads
        the table as the first one left it. Readers (search) never wait. Lance's I/O failures inside
        the block come out as OSErrors (`lance_io`)."""
        lock_path = self.path / f".{self.name}.write.lock"
        with open(lock_path, "ab"):  # made when missing; a read-only folder fails here, before any work
            pass

        def waiting() -> None:
            print(f"table {self.name!r} in {self.path} is being written by another process; waiting for it",
                  file=sys.stderr)

        with OutputLock(lock_path, wait=True, waiting=waiting), lance_io(self.path):
            if self.table is not None:
                self.table.checkout_latest()
            elif self._conn is not None and self.name in self._conn.list_tables().tables:
                self._adopt_created_table()
            yield

    def _adopt_created_table(self) -> None:
        """Another writer made this table while we waited: use it, if its record agrees with ours (all but the
        calibration ranges, which it took from its own first rows)."""
        tbl = self._conn.open_table(self.name)
        theirs = TableInfo.from_json((tbl.schema.metadata or {})[INFO_KEY])
        ours, made = asdict(self.info), asdict(theirs)
        differ = [f"{k}={made[k]!r}, not {ours[k]!r}" for k in ours if k != "ranges" and ours[k] != made[k]]
        if differ:
            raise InputError(f"table {self.name!r} in {self.path} was made by another run while this one waited, "
                             f"with other settings ({'; '.join(differ)}); index into another --table, or "
                             f"rerun with its settings.")
        self.table = tbl
        self.info = theirs

    def duplicate_doc_ids(self) -> set[str]:
        """Documents with a chunk id stored more than once (left by concurrent writers before the lock)."""
        t = self._scan(["id", "doc_id"])
        ids = t["id"].to_pylist()
        if len(set(ids)) == len(ids):
            return set()
        seen: set[str] = set()
        dup: set[str] = set()
        for i, d in zip(ids, t["doc_id"].to_pylist(), strict=True):
            if i in seen:
                dup.add(d)
            seen.add(i)
        return dup

    def maintenance_due(self) -> bool:
        """Whether `maintain` has work: an index to build or refresh, or small files to compact (a run
        that died after its last commit left them)."""
        if self.table is None:
            return False
        n = self.count()
        stats = self._index_stats()
        if not self._integer and stats is None and n >= ANN_MIN_ROWS:
            return True
        if stats is not None and (stats.num_indexed_rows * 2 < n or stats.num_unindexed_rows > 0):
            return True
        frags = self.table.stats().get("fragment_stats", {})
        return int(frags.get("num_small_fragments", 0)) > 1

    # -- reading ------------------------------------------------------------------------------------
    def count(self) -> int:
        return 0 if self.table is None else int(self.table.count_rows())

    def _scan(self, columns: list[str], where: str | None = None) -> pa.Table:
        if self.table is None:
            return pa.table({c: pa.array([], pa.string()) for c in columns})
        query = self.table.search().select(columns).limit(None)
        if where:
            query = query.where(where)
        return query.to_arrow()

    def doc_hashes(self) -> dict[str, str]:
        t = self._scan(["doc_id", "hash"])
        return dict(zip(t["doc_id"].to_pylist(), t["hash"].to_pylist(), strict=True))

    @property
    def ranges(self) -> np.ndarray:
        """The table's int8 calibration ranges [2, dim]."""
        assert self.info.ranges is not None, "a quantized table without ranges"
        return np.asarray(self.info.ranges, dtype=np.float32)

    def vectors(self) -> tuple[list[str], np.ndarray]:
        """All ids and float32 vectors (dequantized for int8 tables, from the rescore codes for binary)."""
        p, dim = self.info.precision, self.info.dim
        column = "rescore" if p in ("binary", "ubinary") else "vector"
        t = self._scan(["id", column])
        if p in ("float32", "float16"):
            return t["id"].to_pylist(), _matrix(t[column], dim, np.float32)
        codes = _matrix(t[column], dim, np.int8 if p != "uint8" else np.uint8)
        return t["id"].to_pylist(), quantize.dequantize(codes, "uint8" if p == "uint8" else "int8", self.ranges)

    def metadata_columns(self) -> dict[str, pa.DataType]:
        if self.table is None:
            return {}
        return {f.name: f.type for f in self.table.schema if f.name not in RESERVED_COLUMNS}

    # -- writing ------------------------------------------------------------------------------------
    @staticmethod
    def _new_columns(rows: ChunkRows, have: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
        """The metadata columns these rows bring that `have` lacks, by name and type."""
        new: dict[str, pa.DataType] = {}
        for doc_id, meta in zip(rows.doc_ids, rows.metadata, strict=True):
            for key, value in meta.items():
                if key in have or key in new:
                    continue
                check_metadata_name(key, doc_id)
                typ = metadata_type(value)
                if typ is not None:
                    new[key] = typ
        return new

    def _ensure_columns(self, rows: ChunkRows) -> dict[str, pa.DataType]:
        """The table's metadata columns, with those these rows bring added (as nulls in the stored rows)."""
        have = self.metadata_columns()
        new = self._new_columns(rows, have)
        if new:
            self.table.add_columns({k: f"CAST(NULL AS {_SQL_TYPES[t]})" for k, t in new.items()})
            have.update(new)
        return have

    def _arrow(self, rows: ChunkRows, schema: pa.Schema, meta_cols: dict[str, pa.DataType]) -> pa.Table:
        n, dim = len(rows), self.info.dim
        vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32)
        if vectors.shape != (n, dim):
            raise InputError(f"vectors have shape {vectors.shape}; the table stores {dim}-dim vectors.")
        if not np.isfinite(vectors).all():
            raise InputError("some vectors hold NaN or infinite values; the model's output is broken (check its "
                             "weights and config) and nothing was written.")
        cols: dict[str, pa.Array] = {
            "id": pa.array(rows.ids, pa.string()),
            "doc_id": pa.array(rows.doc_ids, pa.string()),
            "chunk": pa.array(rows.chunks, pa.int32()),
            "text": pa.array(rows.texts, pa.string()),
            "title": pa.array(rows.titles, pa.string()),
            "hash": pa.array(rows.hashes, pa.string()),
            **self._vector_columns(vectors),
        }
        for key, typ in meta_cols.items():
            values = [coerce(m.get(key), typ, key, d) for m, d in zip(rows.metadata, rows.doc_ids, strict=True)]
            cols[key] = pa.array(values, typ)
        return pa.table([cols[f.name] for f in schema], schema=schema)

    def _vector_columns(self, vectors: np.ndarray) -> dict[str, pa.Array]:
        p = self.info.precision
        if p in ("float32", "float16"):
            return {"vector": _fixed_list(vectors.astype(np.float16 if p == "float16" else np.float32))}
        if p in ("int8", "uint8"):
            return {"vector": _fixed_list(quantize.quantize(vectors, p, ranges=self.ranges))}
        return {"vector": _fixed_list(quantize.quantize(vectors, "ubinary")),
                "rescore": _fixed_list(quantize.quantize(vectors, "int8", ranges=self.ranges))}

    def _create(self, rows: ChunkRows) -> None:
        """Make the table with its first rows in one commit; a quantized table whose ranges were not given is
        calibrated on them."""
        if self.info.needs_ranges and self.info.ranges is None:
            if len(rows) < quantize.MIN_CALIBRATION:
                raise InputError(f"a {self.info.precision} table calibrates its int8 ranges on its first batch, "
                                 f"which holds {len(rows)} chunk; index more documents at once or pass ranges.")
            ranges = quantize.calibration_ranges(np.asarray(rows.vectors, dtype=np.float32))
            self.info = replace(self.info, ranges=ranges.tolist())
        schema = base_schema(self.info)
        meta = self._new_columns(rows, {})
        for key, typ in meta.items():
            schema = schema.append(pa.field(key, typ))
        data = self._arrow(rows, schema, meta)
        self.table = self._conn.create_table(self.name, data=data, schema=schema)

    def replace_documents(self, doc_ids: Sequence[str], rows: ChunkRows) -> None:
        if not doc_ids:
            return
        if len(rows) == 0:
            if self.table is not None:
                self.delete_documents(doc_ids)
            return
        if self.table is None:
            self._create(rows)
            return
        data = self._arrow(rows, self.table.schema, self._ensure_columns(rows))
        (self.table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
         .when_not_matched_by_source_delete(in_list("doc_id", list(doc_ids))).execute(data))

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        if self.table is None:
            return 0
        before = self.count()
        ids = list(doc_ids)
        for i in range(0, len(ids), DELETE_BATCH):
            self.table.delete(in_list("doc_id", ids[i : i + DELETE_BATCH]))
        return before - self.count()

    # -- ANN index ----------------------------------------------------------------------------------
    def _index_stats(self) -> Any | None:
        if self.table is None or not any(ix.name == INDEX_NAME for ix in self.table.list_indices()):
            return None
        return self.table.index_stats(INDEX_NAME)

    def has_ann_index(self) -> bool:
        return self._index_stats() is not None

    def build_index(self) -> int:
        """(Re)build the IVF_SQ index (IVF_FLAT Hamming for binary tables) over the current rows; returns its
        partition count."""
        from lancedb.index import IvfFlat, IvfSq

        parts = ann_partitions(self.count())
        config: Any = (IvfFlat(distance_type="hamming", num_partitions=parts) if self._binary
                       else IvfSq(distance_type="cosine", num_partitions=parts))
        self.table.create_index("vector", config=config, name=INDEX_NAME, replace=True)
        return parts

    @property
    def _binary(self) -> bool:
        return self.info.precision in ("binary", "ubinary")

    @property
    def _integer(self) -> bool:
        return self.info.precision in ("int8", "uint8")

    def maintain(self) -> str | None:
        """Exact below ANN_MIN_ROWS rows; above, build the index, rebuild it when the table has doubled
        since, fold new rows into it otherwise; compact small files. Returns what was done."""
        if self.table is None:
            return None
        n = self.count()
        stats = self._index_stats()
        done: str | None = None
        if self._integer:  # scanned in numpy: no Lance vector index
            self.table.optimize()
            return None
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
               nprobes: int | None = None, refine_factor: int | None = None,
               rescore_multiplier: int | None = None) -> list[StoreHit]:
        if not is_whole(k, 1):
            raise InputError(f"k must be a positive integer, got {k!r}")
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.info.dim:
            raise InputError(f"query vector has {q.shape[0]} dims; the table stores {self.info.dim}.")
        if not np.isfinite(q).all():
            raise InputError("the query vector holds NaN or infinite values; check the model.")
        where = bind_where(where)
        m = DEFAULT_RESCORE_MULTIPLIER if rescore_multiplier is None else rescore_multiplier
        if not is_whole(m, 0):
            raise InputError(f"rescore_multiplier must be an integer >= 0 (0: no rescoring), got {m!r}")
        if self.table is None:
            return []
        if self._integer:
            return self._search_codes(q, k, where)
        meta_cols = list(self.metadata_columns())
        if self._binary:
            code = quantize.quantize(q, "ubinary")
            limit = k * max(m, 1)
            query = self.table.search(code, vector_column_name="vector").distance_type("hamming").limit(limit)
        else:
            query = self.table.search(q, vector_column_name="vector").distance_type("cosine").limit(k)
        if where:
            query = query.where(where, prefilter=True)
        stats = None if exact else self._index_stats()
        if stats is None:
            query = query.bypass_vector_index()
        else:
            query = query.nprobes(nprobes or ann_partitions(stats.num_indexed_rows))
            if not self._binary:
                query = query.refine_factor(refine_factor or DEFAULT_REFINE_FACTOR)
        extra = ["rescore"] if self._binary and m > 0 else []
        query = query.select(["id", "doc_id", "chunk", "text", "title", *meta_cols, *extra, "_distance"])
        rows = self._run(query, where, meta_cols).to_pylist()
        if self._binary:
            if m > 0 and rows:
                codes = np.asarray([r["rescore"] for r in rows], dtype=np.int8)
                scores = quantize.dequantize(codes, "int8", self.ranges) @ q
            else:  # cosine of the sign vectors: 1 - 2 * hamming / dim
                scores = np.asarray([1.0 - 2.0 * float(r["_distance"]) / self.info.dim for r in rows])
            order = sorted(range(len(rows)), key=lambda i: (-float(scores[i]), i))[:k]
            return [self._hit(rows[i], meta_cols, float(scores[i])) for i in order]
        return [self._hit(r, meta_cols, 1.0 - float(r["_distance"])) for r in rows]

    def _run(self, query: Any, where: str | None, meta_cols: list[str]) -> pa.Table:
        try:
            return query.to_arrow()
        except (ValueError, RuntimeError, OSError) as e:
            if where:
                why = _RUST_SOURCE.sub("", str(e).splitlines()[0]) if str(e) else type(e).__name__
                raise InputError(f"--where {where!r} is not a valid filter over the columns "
                                 f"{', '.join(['id', 'doc_id', 'chunk', 'title', *meta_cols])}: {why}") from None
            raise

    @staticmethod
    def _hit(r: dict[str, Any], meta_cols: list[str], score: float) -> StoreHit:
        meta = {c: r[c] for c in meta_cols if r.get(c) is not None}
        return StoreHit(r["id"], r["doc_id"], r["chunk"], r["text"], r["title"], score, meta)

    def _all_codes(self) -> tuple[list[str], np.ndarray]:
        """Every id and int8/uint8 code row, cached until the table's version changes."""
        assert self.table is not None
        version = int(self.table.version)
        if self._codes is None or self._codes[0] != version:
            t = self._scan(["id", "vector"])
            dtype = np.uint8 if self.info.precision == "uint8" else np.int8
            self._codes = (version, t["id"].to_pylist(), _matrix(t["vector"], self.info.dim, dtype))
        return self._codes[1], self._codes[2]

    def _search_codes(self, q: np.ndarray, k: int, where: str | None) -> list[StoreHit]:
        """int8 / uint8 tables: score every (filtered) code row against the float query in numpy."""
        meta_cols = list(self.metadata_columns())
        if where:
            t = self._run(self.table.search().where(where).select(["id", "vector"]).limit(None), where, meta_cols)
            ids = t["id"].to_pylist()
            codes = _matrix(t["vector"], self.info.dim, np.uint8 if self.info.precision == "uint8" else np.int8)
        else:
            ids, codes = self._all_codes()
        if not ids:
            return []
        p = "uint8" if self.info.precision == "uint8" else "int8"
        r = self.ranges
        steps = np.where((r[1] - r[0]) / 255 == 0, 1, (r[1] - r[0]) / 255).astype(np.float32)
        offset = 128.0 if p == "int8" else 0.0
        # q . (start + (code + offset) * step) = q . start + (code + offset) . (q * step), in row blocks
        qs = q * steps
        base = float(q @ r[0]) + offset * float(qs.sum())
        scores = np.empty(len(ids), dtype=np.float32)
        for i in range(0, len(ids), 65536):
            scores[i : i + 65536] = codes[i : i + 65536].astype(np.float32) @ qs + base
        top = np.argsort(-scores, kind="stable")[:k]
        chosen = [ids[i] for i in top]
        t = self._scan(["id", "doc_id", "chunk", "text", "title", *meta_cols], in_list("id", chosen))
        by_id = {r["id"]: r for r in t.to_pylist()}
        return [self._hit(by_id[ids[i]], meta_cols, float(scores[i])) for i in top if ids[i] in by_id]


def open_store(db: str | os.PathLike[str], table: str = "documents", info: TableInfo | None = None) -> LanceStore:
    """The default store: LanceDB in the local folder `db` (created, with the table, when `info` is given)."""
    return LanceStore.open(db, table, info)
