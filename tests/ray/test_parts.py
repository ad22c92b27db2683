"""`qwen_embed.ray.parts`: the output folder of `embed-corpus` (Parquet parts and the job's manifest). No Ray.

References: every part is read back with pyarrow (`pq.read_table`, `pq.read_schema`, and
`pyarrow.dataset.dataset(folder, format="parquet")`, the reader docs/scale.md names) and compared with
the ids, numpy vectors (float16 against numpy's own rounding) and texts that went in; the manifest with
`json`. The rules checked are those of docs/scale.md and the module docstring: schema
`id: string, vector: fixed_size_list<float32|float16>[dim] (, text: string)`; parts written whole (a
failed write leaves nothing); resuming reads back the ids written and writes only the rest, no id twice,
the same rows as a run never interrupted; refusals (a file, files not ours, another job's output, a
finished output) come before any change and in one line; `overwrite` removes only our parts and manifest.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from qwen_embed.errors import InputError
from qwen_embed.files import OutputBusyError, OutputExistsError
from qwen_embed.ray.parts import (
    MANIFEST,
    PartsWriter,
    our_parts,
    part_record,
    part_schema,
    read_manifest,
    vector_column,
)

DIM = 4
MANIFEST_IN = {"model": "tiny", "dim": DIM, "input": "/corpus.jsonl", "id_column": "id", "text_column": "text"}
PART_NAME = re.compile(r"^part-\d{6}-[0-9a-f]{8}\.parquet$")
DEAD_PID = 4194311  # above Linux's PID_MAX_LIMIT (2**22): no process has it


def open_writer(folder: Path, job: str = "J", **kw: Any) -> PartsWriter:
    kw.setdefault("dim", DIM)
    kw.setdefault("dtype_out", "float32")
    kw.setdefault("keep_text", False)
    return PartsWriter.open(folder, job=job, manifest=MANIFEST_IN, **kw)


def vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every entry of `folder` (hidden ones too) -> its bytes."""
    return {p.name: p.read_bytes() if p.is_file() else b"<dir>" for p in folder.iterdir()} if folder.is_dir() else {}


def folder_rows(folder: Path) -> tuple[list[str], np.ndarray]:
    """All rows of the folder through pyarrow.dataset (the reader docs/scale.md names), sorted by id."""
    table = pds.dataset(folder, format="parquet").to_table()
    ids = table.column("id").to_pylist()
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vecs = np.asarray(flat, np.float32).reshape(len(ids), -1)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return [ids[i] for i in order], vecs[order]


def describe(schema: pa.Schema) -> list[tuple[str, bool, str]]:
    """Name, nullability and type of each field; a list's child is named by its value type only (Parquet
    renames a list's child field `item` to `element`)."""
    out = []
    for f in schema:
        typ = f.type
        text = f"fixed_size_list<{typ.value_type}>[{typ.list_size}]" if pa.types.is_fixed_size_list(typ) else str(typ)
        out.append((f.name, f.nullable, text))
    return out


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg and msg, msg
    return msg


# -- the schema and the vector column ----------------------------------------------------------------------
@pytest.mark.parametrize(("dtype_out", "value_type"), [("float32", pa.float32()), ("float16", pa.float16())])
@pytest.mark.parametrize("keep_text", [False, True])
def test_part_schema_as_documented(dtype_out: str, value_type: pa.DataType, keep_text: bool) -> None:
    meta = {"job": "J", "dim": 7, "model": "m", "format": 1}
    schema = part_schema(7, dtype_out, keep_text, meta)
    want = [pa.field("id", pa.string(), nullable=False), pa.field("vector", pa.list_(value_type, 7), nullable=False)]
    want += [pa.field("text", pa.string())] if keep_text else []
    assert schema.remove_metadata().equals(pa.schema(want))
    assert json.loads(schema.metadata[b"qwen_embed_corpus"]) == meta


@pytest.mark.parametrize(("dtype_out", "np_dtype"), [("float32", np.float32), ("float16", np.float16)])
def test_vector_column_values(dtype_out: str, np_dtype: type) -> None:
    v = np.array([[1.0, -2.5, 1e-3], [np.pi, 65504.0, -0.0]], dtype=np.float64)
    col = vector_column(v, dtype_out)
    assert col.type == pa.list_(pa.from_numpy_dtype(np_dtype), 3) and len(col) == 2
    back = np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(2, 3)
    np.testing.assert_array_equal(back, v.astype(np_dtype))  # numpy's rounding is the reference


def test_vector_column_of_a_fortran_order_slice() -> None:
    v = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))[:, 1:3]
    back = np.asarray(vector_column(v, "float32").flatten().to_numpy()).reshape(3, 2)
    np.testing.assert_array_equal(back, v)


# -- writing parts -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype_out", "keep_text"), [("float32", False), ("float16", True)])
def test_written_part_reads_back_equal(tmp_path: Path, dtype_out: str, keep_text: bool) -> None:
    ids = ["a", "é☃𝄞", "3", "with space", ""]  # an empty-string id is still an id (source refuses only nulls)
    vecs = vectors(5)
    texts = ["x", "naïve 日本語 😀", "t" * 100_000, "line\nbreak", "z"] if keep_text else None
    w = open_writer(tmp_path / "out", dtype_out=dtype_out, keep_text=keep_text)
    path = w.write(ids, vecs, texts)
    assert path is not None and path.parent == tmp_path / "out" and PART_NAME.match(path.name)
    assert path.name.startswith("part-000001-")
    table = pq.read_table(path)
    assert describe(table.schema) == describe(w.schema) == describe(part_schema(DIM, dtype_out, keep_text, {}))
    assert table.schema.metadata == w.schema.metadata
    assert table.column("id").to_pylist() == ids
    got = np.asarray(table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False))
    want = vecs.astype(np.float16 if dtype_out == "float16" else np.float32)
    np.testing.assert_array_equal(got.reshape(5, DIM), want)
    if keep_text:
        assert table.column("text").to_pylist() == texts
    assert part_record(path) == {"job": "J", "format": 1, "model": "tiny", "dim": DIM}
    assert (w.rows_written, w.next_part, w.done) == (5, 2, set(ids))
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest == {**MANIFEST_IN, "job": "J", "format": 1, "complete": False}


def test_write_table_orders_columns_by_the_schema(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    table = pa.table({"vector": vector_column(vectors(2), "float32"), "id": ["b", "a"]})
    path = w.write_table(table)
    assert path is not None and pq.read_table(path).column_names == ["id", "vector"]


def test_ids_already_written_are_dropped(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    v = vectors(4)
    first = w.write(["a", "b"], v[:2])
    second = w.write(["b", "c", "a", "d"], v)  # only c and d are new
    assert first is not None and second is not None and second.name.startswith("part-000002-")
    t = pq.read_table(second)
    assert t.column("id").to_pylist() == ["c", "d"]
    np.testing.assert_array_equal(np.asarray(t.column("vector").combine_chunks().flatten()).reshape(2, DIM), v[[1, 3]])
    assert w.write(["a", "d"], v[:2]) is None  # nothing new: no part, no number used
    assert w.write([], np.zeros((0, DIM), np.float32)) is None
    assert w.next_part == 3 and w.rows_written == 4
    assert folder_rows(tmp_path / "out")[0] == ["a", "b", "c", "d"]


def test_a_batch_with_an_id_twice_is_refused(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    before = snapshot(tmp_path / "out")
    with pytest.raises(AssertionError, match="twice"):
        w.write(["a", "b", "a"], vectors(3))
    assert snapshot(tmp_path / "out") == before and not w.done


BAD_WRITES: list[tuple[str, list[Any], np.ndarray]] = [
    ("wrong dim", ["a"], vectors(1, dim=DIM + 1)),
    ("fewer vectors than ids", ["a", "b"], vectors(1)),
    ("null id", [None], vectors(1)),
    ("int id", [1], vectors(1)),
]


@pytest.mark.parametrize(("ids", "vecs"), [b[1:] for b in BAD_WRITES], ids=[b[0] for b in BAD_WRITES])
def test_a_failed_write_leaves_nothing(tmp_path: Path, ids: list[Any], vecs: np.ndarray) -> None:
    w = open_writer(tmp_path / "out")
    w.write(["z"], vectors(1))
    before = snapshot(tmp_path / "out")
    with pytest.raises((pa.ArrowException, TypeError, ValueError)):
        w.write(ids, vecs)
    assert snapshot(tmp_path / "out") == before and (w.next_part, w.done, w.rows_written) == (2, {"z"}, 1)


def test_finish_records_complete_and_checks_the_count(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    w.write(["a", "b"], vectors(2))
    with pytest.raises(RuntimeError, match="wrote 2 distinct ids for 3 input rows"):  # an error, not an assert
        w.finish(3)
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["complete"] is False
    w.finish(2)
    assert read_manifest(tmp_path / "out") == {**MANIFEST_IN, "job": "J", "format": 1, "complete": True, "rows": 2}


def test_caller_manifest_cannot_override_job_or_state(tmp_path: Path) -> None:
    PartsWriter.open(tmp_path / "out", job="J", manifest={"model": "m", "job": "X", "complete": True, "format": 9},
                     dim=DIM, dtype_out="float32", keep_text=False)
    m = read_manifest(tmp_path / "out")
    assert (m["job"], m["complete"], m["format"]) == ("J", False, 1)


# -- resuming ------------------------------------------------------------------------------------------------
def test_resume_reads_back_and_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    ids = [f"d{i}" for i in range(10)]
    vecs = vectors(10, seed=3)
    clean = open_writer(tmp_path / "clean")
    for s in range(0, 10, 4):
        clean.write(ids[s:s + 4], vecs[s:s + 4])
    clean.finish(10)

    first = open_writer(tmp_path / "out")
    first.write(ids[:3], vecs[:3])
    first.write(ids[3:5], vecs[3:5])  # ... killed here
    first.close()  # (a killed run's lock ends with its process)
    again = open_writer(tmp_path / "out")
    written = {i for p in (tmp_path / "out").glob("part-*.parquet") for i in pq.read_table(p).column("id").to_pylist()}
    assert again.done == written == set(ids[:5])
    assert (again.next_part, again.resumed_parts, again.rows_written) == (3, 2, 0)
    again.write(ids, vecs)  # the engine hands every row; only the rest is written
    again.finish(10)
    got_ids, got = folder_rows(tmp_path / "out")
    want_ids, want = folder_rows(tmp_path / "clean")
    assert got_ids == want_ids == sorted(ids)
    np.testing.assert_array_equal(got, want)
    assert read_manifest(tmp_path / "out")["complete"] is True


def test_part_numbers_continue_after_the_highest(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    for k in range(3):
        w.write([f"r{k}"], vectors(1, k))
    (p2,) = (tmp_path / "out").glob("part-000002-*.parquet")
    p2.unlink()  # a gap: numbering continues after the highest, the lost ids are written again
    w.close()  # the run ends (a killed run's lock ends with its process)
    again = open_writer(tmp_path / "out")
    assert again.next_part == 4 and again.done == {"r0", "r2"}
    path = again.write(["r0", "r1", "r2"], vectors(3))
    assert path is not None and path.name.startswith("part-000004-")
    assert pq.read_table(path).column("id").to_pylist() == ["r1"]


def test_stale_temp_of_a_killed_run_removed_live_one_kept(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    w.write(["a"], vectors(1))
    dead = tmp_path / "out" / f".part-000002-0123abcd.parquet.tmp-{DEAD_PID}-89abcdef"
    live = tmp_path / "out" / f".part-000002-0123abcd.parquet.tmp-{os.getpid()}-89abcdef"
    dead.write_bytes(b"PAR1 torn")
    live.write_bytes(b"PAR1 being written")
    w.close()
    again = open_writer(tmp_path / "out")
    assert not dead.exists() and live.exists() and again.done == {"a"}


def test_torn_part_is_neither_counted_nor_removed(tmp_path: Path) -> None:
    """A file with our part name that pyarrow cannot read is not ours (no record): its ids are written
    again, and it is not deleted (never delete what we cannot tell we made)."""
    w = open_writer(tmp_path / "out")
    path = w.write(["a", "b"], vectors(2))
    assert path is not None
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    w.close()
    again = open_writer(tmp_path / "out")
    assert again.done == set() and again.next_part == 1 and path.exists()
    new = again.write(["a", "b"], vectors(2))
    assert new is not None and new != path and path.read_bytes() == raw[: len(raw) // 2]


def test_other_jobs_orphan_parts_left_beside(tmp_path: Path) -> None:
    """Parts of another job without its manifest (`--overwrite` into such a folder): left as they are, and
    their numbers are not reused."""
    k = open_writer(tmp_path / "out", job="K")
    orphan = k.write(["a"], vectors(1))
    (tmp_path / "out" / MANIFEST).unlink()
    assert orphan is not None
    k.close()
    with pytest.raises(OutputExistsError):  # no manifest: not judged ours without --overwrite
        PartsWriter.check(tmp_path / "out", job="J")
    w = open_writer(tmp_path / "out", job="J", overwrite=True)
    assert w.done == set() and w.next_part == 2 and orphan.exists()
    assert [rec["job"] for _, rec in our_parts(tmp_path / "out")] == ["K"]


# -- refusals and overwrite ------------------------------------------------------------------------------------
def finished(folder: Path, job: str = "J") -> Path:
    w = open_writer(folder, job=job)
    w.write(["a"], vectors(1))
    w.finish(1)
    return folder


def a_file(path: Path) -> Path:
    path.write_text("x")
    return path


def not_ours(folder: Path) -> Path:
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    return folder


REFUSALS: list[tuple[str, Callable[[Path], Path], type[Exception], tuple[str, ...]]] = [
    ("a file", a_file, InputError, ("is a file", "give a folder")),
    ("no parent", lambda p: p / "deeper", InputError, ("does not exist", "create it first")),
    ("files not ours", not_ours, OutputExistsError, ("notes.txt", "did not write", "--overwrite")),
    ("another job", lambda p: finished(p, job="K"), OutputExistsError, ("another embed-corpus job", "--overwrite")),
    ("finished", finished, OutputExistsError, ("complete output", "1 rows", "--overwrite")),
]


@pytest.mark.parametrize(("make", "error", "needles"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused_before_any_change_in_one_line(tmp_path: Path, make: Callable[[Path], Path],
                                               error: type[Exception], needles: tuple[str, ...]) -> None:
    out = make(tmp_path / "out")
    before = snapshot(tmp_path), snapshot(out)
    for call in (lambda: PartsWriter.check(out, job="J"), lambda: open_writer(out)):
        with pytest.raises(error) as info:
            call()
        msg = one_line(info.value)
        assert all(n in msg for n in needles), msg
        assert (snapshot(tmp_path), snapshot(out)) == before


@pytest.mark.parametrize("state", ["missing", "empty", "same job, unfinished"])
def test_check_accepts_and_changes_nothing(tmp_path: Path, state: str) -> None:
    out = tmp_path / "out"
    if state == "empty":
        out.mkdir()
    elif state != "missing":
        open_writer(out).write(["a"], vectors(1))
    before = snapshot(tmp_path), snapshot(out)
    found = PartsWriter.check(out, job="J")
    assert (snapshot(tmp_path), snapshot(out)) == before
    assert (found is None) == (state != "same job, unfinished")


@pytest.mark.parametrize("old_job", ["K", "J"], ids=["another job", "same job finished"])
def test_overwrite_replaces_only_our_parts_and_manifest(tmp_path: Path, old_job: str) -> None:
    out = finished(tmp_path / "out", job=old_job)
    (out / "notes.txt").write_text("mine")
    (out / "part-000009-abcdef12.parquet").write_bytes(b"not parquet")  # our name, not ours
    pq.write_table(pa.table({"id": ["u"]}), out / "part-000010-abcdef12.parquet")  # Parquet without our record
    (out / "sub").mkdir()
    theirs = {n: b for n, b in snapshot(out).items() if not n.startswith("part-000001-") and n != MANIFEST}
    w = open_writer(out, job="J", overwrite=True)
    assert w.done == set() and w.resumed_parts == 0
    assert read_manifest(out) == {**MANIFEST_IN, "job": "J", "format": 1, "complete": False}
    assert {n: b for n, b in snapshot(out).items() if n != MANIFEST} == theirs


def test_overwrite_into_a_folder_of_other_files_writes_beside(tmp_path: Path) -> None:
    out = not_ours(tmp_path / "out")
    w = open_writer(out, overwrite=True)
    w.write(["a"], vectors(1))
    w.finish(1)
    assert (out / "notes.txt").read_text() == "mine"
    assert [rec["job"] for _, rec in our_parts(out)] == ["J"]


# -- reading what is there -----------------------------------------------------------------------------------
def test_part_record_of_files_not_ours(tmp_path: Path) -> None:
    cases = {"text.parquet": None, "plain.parquet": pa.table({"id": ["a"]}),
             "list.parquet": pa.table({"id": ["a"]}).replace_schema_metadata({b"qwen_embed_corpus": b"[1]"}),
             "badjson.parquet": pa.table({"id": ["a"]}).replace_schema_metadata({b"qwen_embed_corpus": b"{"})}
    for name, table in cases.items():
        if table is None:
            (tmp_path / name).write_text("hello")
        else:
            pq.write_table(table, tmp_path / name)
        assert part_record(tmp_path / name) is None, name
    assert part_record(tmp_path / "absent.parquet") is None


def test_our_parts_sorted_and_by_name_and_record(tmp_path: Path) -> None:
    w = open_writer(tmp_path / "out")
    paths = [w.write([f"r{k}"], vectors(1)) for k in range(3)]
    out = tmp_path / "out"
    assert paths[0] is not None
    for name in ["part-000004-ABCDEF12.parquet", "part-00005-abcdef12.parquet", "part-000006-abcdef12.parq",
                 "xpart-000007-abcdef12.parquet"]:
        (out / name).write_bytes(paths[0].read_bytes())  # our bytes under names that are not ours
    (out / "part-000008-abcdef12.parquet").mkdir()
    assert [p for p, _ in our_parts(out)] == paths
    assert our_parts(tmp_path / "absent") == []


def test_read_manifest_of_a_folder_without_one(tmp_path: Path) -> None:
    (tmp_path / MANIFEST).write_text("[1, 2]")  # not a manifest (not an object)
    for folder in (tmp_path, tmp_path / "absent"):
        with pytest.raises(InputError) as info:
            read_manifest(folder)
        msg = one_line(info.value)
        assert "not an embed-corpus output folder" in msg and "embed-corpus INPUT -o" in msg


def test_whole_folder_reads_as_one_dataset(tmp_path: Path) -> None:
    """docs/scale.md: `pyarrow.dataset.dataset("vectors/", format="parquet")` reads the output (the manifest's
    leading underscore keeps it out)."""
    w = open_writer(tmp_path / "out", dtype_out="float16")
    v = vectors(5)
    w.write(["c", "a"], v[:2])
    w.write(["e", "b", "d"], v[2:])
    w.finish(5)
    ids, got = folder_rows(tmp_path / "out")
    assert ids == ["a", "b", "c", "d", "e"]
    np.testing.assert_array_equal(got, v.astype(np.float16).astype(np.float32)[[1, 3, 0, 4, 2]])


# -- one run at a time ------------------------------------------------------------------------------------
def test_concurrent_writers_never_write_an_id_twice(tmp_path: Path) -> None:
    """A second run of the job while the first writes is refused in one line (it would skip only the ids
    the first had written when it looked); once the first stops, a run resumes with what it wrote."""
    first = open_writer(tmp_path / "out")
    with pytest.raises(OutputBusyError) as refused:
        open_writer(tmp_path / "out")
    assert len(str(refused.value).splitlines()) == 1 and str(tmp_path / "out") in str(refused.value)
    first.write(["a", "b"], vectors(2))
    first.close()  # stopped (as by an error): resumable by the next run
    second = open_writer(tmp_path / "out")
    assert second.done == {"a", "b"}
    second.write(["b", "c"], vectors(2))
    second.finish(3)
    ids = folder_rows(tmp_path / "out")[0]
    assert ids == ["a", "b", "c"]
    open_writer(tmp_path / "out", overwrite=True).close()  # finish unlocked the folder


def test_a_folder_locked_by_another_process_is_refused_until_it_ends(tmp_path: Path) -> None:
    """The lock is a plain flock on the folder: another process holding one (here a bare Python) refuses
    the run; when that process is killed, the lock ends with it and nothing is left to clean up."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputBusyError):
            open_writer(out)
        assert os.listdir(out) == []  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    w = open_writer(out)
    assert sorted(os.listdir(out)) == [MANIFEST]
    w.close()


def test_resume_after_a_kill_during_the_first_manifest_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / f".{MANIFEST}.tmp-{DEAD_PID}-0123abcd").write_text('{"model": ')
    w = open_writer(out)
    assert w.done == set() and sorted(os.listdir(out)) == [MANIFEST]
