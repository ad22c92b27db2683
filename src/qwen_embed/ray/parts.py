"""The output of `embed-corpus`: a folder of Parquet parts, each written whole, plus a manifest.

    OUTPUT/_qwen_embed_corpus.json      the job: settings, fingerprint, what a table needs, complete or not
    OUTPUT/part-000001-1a2b3c4d.parquet id: string, vector: fixed_size_list<float32|float16>[dim] (, text: string)

Every part is written to a temporary sibling and renamed (`files.atomic_file`), so a killed run leaves
only whole parts; each part's schema metadata records the job fingerprint. Reopening the folder for
the same job reads the ids of its parts (one column) and the run skips them: resuming writes only the
rest, and no id is written twice. Parts of another job are refused unless `overwrite`, which removes
our own parts and manifest only: a file that is not ours (no manifest, other names, parts without our
record) is never touched. One run writes a folder at a time (`files.OutputLock` on the folder, held from
`open` to `finish` / `close`): a second run of the job started meanwhile is refused in one line, since it
would write again every id the first one writes after it looked.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..files import OutputExistsError, OutputLock, atomic_file, check_output_dir, clean_stale_temps, write_json_atomic

MANIFEST = "_qwen_embed_corpus.json"
META_KEY = b"qwen_embed_corpus"
FORMAT = 1
_PART = re.compile(r"^part-(\d{6,})-[0-9a-f]{8}\.parquet$")
VECTOR_DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def part_schema(dim: int, dtype_out: str, keep_text: bool, meta: dict[str, Any]) -> pa.Schema:
    """id: string, vector: fixed_size_list<dtype_out>[dim], optionally text: string; `meta` as JSON metadata."""
    fields = [pa.field("id", pa.string(), nullable=False),
              pa.field("vector", pa.list_(VECTOR_DTYPES[dtype_out], dim), nullable=False)]
    if keep_text:
        fields.append(pa.field("text", pa.string()))
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True).encode()})


def vector_column(vectors: np.ndarray, dtype_out: str) -> pa.FixedSizeListArray:
    """[n, dim] floats -> a fixed-size-list column of `dtype_out`."""
    v = np.ascontiguousarray(vectors, dtype=np.float16 if dtype_out == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def part_record(path: Path) -> dict[str, Any] | None:
    """The qwen-embed record in a part's schema metadata, or None when the file is not one of ours."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid):
        return None
    try:
        record = json.loads(meta[META_KEY])
    except (KeyError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def our_parts(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Parts named and recorded as ours, sorted by name."""
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.iterdir()):
        if _PART.match(p.name) and p.is_file() and (rec := part_record(p)) is not None:
            out.append((p, rec))
    return out


@dataclass
class PartsWriter:
    """Writes a job's parts into `folder`; `done` holds the ids already written (read back on resume).

    Open with `PartsWriter.open`; call `write` per batch, `finish` at the end (or `close` to stop, resumable);
    the folder is locked against other runs from `open` to then."""

    folder: Path
    job: str
    schema: pa.Schema
    manifest: dict[str, Any]
    done: set[str] = field(default_factory=set)
    next_part: int = 1
    rows_written: int = 0
    resumed_parts: int = 0
    lock: OutputLock | None = field(default=None, repr=False, compare=False)

    @staticmethod
    def check(folder: str | os.PathLike[str], *, job: str, overwrite: bool = False) -> dict[str, Any] | None:
        """Refuse an output folder this job may not write (see the module docstring), before any work and
        without changing anything -> the manifest found there, if any."""
        out = Path(folder)
        if out.exists() and not out.is_dir():
            raise InputError(f"output {out} is a file; give a folder (it is created when missing).")
        check_output_dir(out, overwrite=True)  # parent exists, writable; "not empty" is judged below
        if out.is_dir():  # a temporary file of a writer killed mid-write (the first manifest's) is not a user's
            clean_stale_temps(out)
        old = _read_manifest(out)
        entries = list(out.iterdir()) if out.is_dir() else []
        if old is None and entries and not overwrite:
            raise OutputExistsError(f"output folder {out} exists and holds files that embed-corpus did not write "
                                    f"({entries[0].name}, ...); choose a new folder, or pass --overwrite to write "
                                    "beside them (they are left untouched).")
        if old is not None and old.get("job") != job and not overwrite:
            raise OutputExistsError(f"output folder {out} holds the output of another embed-corpus job (other "
                                    "input, model or settings); pass --overwrite to replace it, or choose a new "
                                    "folder.")
        if old is not None and old.get("job") == job and old.get("complete") and not overwrite:
            raise OutputExistsError(f"output folder {out} already holds the complete output of this job "
                                    f"({old.get('rows')} rows); pass --overwrite to embed again, or choose a new "
                                    "folder.")
        return old

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, job: str, manifest: dict[str, Any], dim: int,
             dtype_out: str, keep_text: bool, overwrite: bool = False) -> PartsWriter:
        """Check the folder, read back what this job wrote, write the manifest."""
        out = Path(folder)
        cls.check(out, job=job, overwrite=overwrite)  # refused before the folder is made
        out.mkdir(exist_ok=True)
        lock = OutputLock(out, what="output folder")
        try:
            w = cls._open_locked(out, job=job, manifest=manifest, dim=dim, dtype_out=dtype_out,
                                 keep_text=keep_text, overwrite=overwrite)
        except BaseException:
            lock.release()
            raise
        w.lock = lock
        return w

    @classmethod
    def _open_locked(cls, out: Path, *, job: str, manifest: dict[str, Any], dim: int, dtype_out: str,
                     keep_text: bool, overwrite: bool) -> PartsWriter:
        old = cls.check(out, job=job, overwrite=overwrite)  # again: another run may have changed it meanwhile
        if old is not None and (old.get("job") != job or old.get("complete")):  # only with overwrite
            _remove_ours(out)
        clean_stale_temps(out)
        meta = {"job": job, "format": FORMAT, "model": manifest.get("model"), "dim": dim}
        w = cls(out, job, part_schema(dim, dtype_out, keep_text, meta), manifest)
        for path, rec in our_parts(out):
            n = int(_PART.match(path.name)[1])  # type: ignore[index]
            w.next_part = max(w.next_part, n + 1)
            if rec.get("job") != job:
                continue  # another job's part without its manifest (written beside with --overwrite): left as it is
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
            w.done.update(ids)
            w.resumed_parts += 1
        write_json_atomic(out / MANIFEST, {**manifest, "job": job, "format": FORMAT, "complete": False})
        return w

    def write(self, ids: list[str], vectors: np.ndarray, texts: list[str] | None = None) -> Path | None:
        """Write one part from ids, [n, dim] vectors (and texts when kept) -> its path (see `write_table`)."""
        cols: dict[str, pa.Array] = {"id": pa.array(ids, pa.string()),
                                     "vector": vector_column(vectors, self.dtype_out)}
        if texts is not None:
            cols["text"] = pa.array(texts, pa.string())
        return self.write_table(pa.table(cols))

    @property
    def dtype_out(self) -> str:
        return "float16" if self.schema.field("vector").type.value_type == pa.float16() else "float32"

    def write_table(self, table: pa.Table) -> Path | None:
        """Write one part of the rows whose ids are not written yet (the others are dropped) -> its path,
        None when nothing was left. `table` holds id, vector (and text when kept) in the part schema."""
        ids = table.column("id").to_pylist()
        if len(set(ids)) != len(ids):
            raise AssertionError("a batch holds an id twice")
        keep = [i for i, x in enumerate(ids) if x not in self.done]
        if not keep:
            return None
        if len(keep) != len(ids):
            table = table.take(pa.array(keep, pa.int64()))
        table = pa.Table.from_arrays([table.column(name) for name in self.schema.names], schema=self.schema)
        path = self.folder / f"part-{self.next_part:06d}-{secrets.token_hex(4)}.parquet"
        with atomic_file(path, "wb", overwrite=False) as f:
            pq.write_table(table, f)
        self.next_part += 1
        self.done.update(table.column("id").to_pylist())
        self.rows_written += table.num_rows
        return path

    def finish(self, rows: int) -> None:
        """Record the job complete (every one of `rows` input rows is in a part) and unlock the folder."""
        if len(self.done) != rows:
            raise RuntimeError(f"embed-corpus wrote {len(self.done)} distinct ids for {rows} input rows; the "
                               f"output {self.folder} is left incomplete (a rerun resumes it).")
        write_json_atomic(self.folder / MANIFEST, {**self.manifest, "job": self.job, "format": FORMAT,
                                                   "complete": True, "rows": rows})
        self.close()

    def close(self) -> None:
        """Let another run write the folder (what was written stays, resumable); safe to call twice."""
        if self.lock is not None:
            self.lock.release()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _remove_ours(folder: Path) -> None:
    for path, _ in our_parts(folder):
        path.unlink()
    (folder / MANIFEST).unlink(missing_ok=True)


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an embed-corpus output folder (an InputError when there is none)."""
    out = Path(folder)
    value = _read_manifest(out)
    if value is None:
        raise InputError(f"{out} is not an embed-corpus output folder (no {MANIFEST}); make one with "
                         f"`qwen-embed embed-corpus INPUT -o {out}`.")
    return value
