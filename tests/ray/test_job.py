"""`qwen-embed embed-corpus --engine local` (no Ray needed): vectors, Parquet schema, resuming, refusals,
and `qwen-embed index --vectors`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qwen_embed import Embedder
from qwen_embed.cli import main
from qwen_embed.files import OutputLock
from qwen_embed.ray.parts import MANIFEST
from qwen_embed.store import open_store

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
         "xi", "omicron", "pi"]


def corpus_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    return [{"id": f"d{i}", "text": " ".join(rng.choice(WORDS, size=int(rng.integers(1, 30))))} for i in range(n)]


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_output(folder: Path) -> tuple[list[str], np.ndarray, pa.Schema]:
    """All rows of an output folder sorted by id: ids, vectors [n, dim], and the parts' schema."""
    parts = sorted(folder.glob("part-*.parquet"))
    tables = [pq.read_table(p) for p in parts]
    table = pa.concat_tables(tables)
    order = np.argsort(np.array(table.column("id").to_pylist()))
    ids = [table.column("id").to_pylist()[i] for i in order]
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vecs = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)[order]
    return ids, vecs, tables[0].schema


def run_cli(*argv: str) -> int:
    return main(["embed-corpus", *argv])


def test_local_vectors_equal_encode_and_schema(tmp_path: Path, tiny_embedding_path: Path,
                                               embedder: Embedder) -> None:
    rows = corpus_rows(40)
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "out"
    assert run_cli(str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--rows-per-file", "16") == 0
    parts = sorted(out.glob("part-*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [16, 16, 8]
    ids, vecs, schema = read_output(out)
    assert schema.field("id").type == pa.string() and schema.names == ["id", "vector"]
    assert pa.types.is_fixed_size_list(schema.field("vector").type)
    assert schema.field("vector").type.value_type == pa.float32() and schema.field("vector").type.list_size == 64
    want = embedder.encode([r["text"] for r in sorted(rows, key=lambda r: r["id"])])
    assert ids == sorted(r["id"] for r in rows)
    np.testing.assert_allclose(vecs, want, atol=1e-5)
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_parquet_input_float16_dim_and_text(tmp_path: Path, tiny_embedding_path: Path, embedder: Embedder) -> None:
    rows = corpus_rows(12)
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"doc": [int(r["id"][1:]) for r in rows], "body": [r["text"] for r in rows]}),
                   src / "a.parquet")
    out = tmp_path / "out"
    assert run_cli(str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--id-column", "doc",
                   "--text-column", "body", "--dim", "32", "--dtype-out", "float16", "--keep-text") == 0
    table = pq.read_table(next(out.glob("part-*.parquet")))
    assert table.schema.names == ["id", "vector", "text"]
    assert table.schema.field("vector").type.value_type == pa.float16()
    assert table.schema.field("vector").type.list_size == 32
    got = dict(zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True))
    assert got == {str(int(r["id"][1:])): r["text"] for r in rows}
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    want = embedder.encode(table.column("text").to_pylist(), dim=32)
    np.testing.assert_allclose(flat.astype(np.float32).reshape(-1, 32), want, atol=2e-3)  # float16 rounding


def test_resume_writes_only_the_rest(tmp_path: Path, tiny_embedding_path: Path) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(30))
    clean = tmp_path / "clean"
    assert run_cli(str(src), "-o", str(clean), "--model", str(tiny_embedding_path), "--rows-per-file", "8") == 0
    # A run that stopped after two parts: those parts and an unfinished manifest.
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in sorted(clean.glob("part-*.parquet"))[:2]:
        shutil.copy(p, partial / p.name)
    manifest = json.loads((clean / MANIFEST).read_text())
    (partial / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    stamps = {p.name: p.stat().st_mtime_ns for p in partial.glob("part-*.parquet")}
    assert run_cli(str(src), "-o", str(partial), "--model", str(tiny_embedding_path), "--rows-per-file", "8") == 0
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in partial.glob("part-*.parquet") if p.name in stamps)
    ids, vecs, _ = read_output(partial)
    want_ids, want, _ = read_output(clean)
    assert ids == want_ids and len(set(ids)) == 30
    np.testing.assert_allclose(vecs, want, atol=1e-5)


def test_deterministic_vectors_are_each_texts_own_bits(tmp_path: Path, tiny_embedding_path: Path) -> None:
    """--deterministic: batch-invariant kernels, so each row's vector is bitwise the vector of its text embedded
    alone (the reference: Embedder(deterministic=True).encode of one text); it is another job than the default."""
    rows = corpus_rows(12, seed=5)
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "out"
    model = ["--model", str(tiny_embedding_path)]
    assert run_cli(str(src), "-o", str(out), *model, "--deterministic", "--rows-per-file", "5") == 0
    ids, vecs, _ = read_output(out)
    emb = Embedder.from_pretrained(tiny_embedding_path, deterministic=True)
    by_id = {r["id"]: r["text"] for r in rows}
    alone = np.concatenate([emb.encode([by_id[i]]) for i in ids])
    assert np.array_equal(vecs, alone)
    assert json.loads((out / MANIFEST).read_text())["deterministic"] is True
    assert run_cli(str(src), "-o", str(out), *model) == 2  # the default kernels: another job's output
    assert run_cli(str(src), "-o", str(tmp_path / "plain"), *model) == 0  # whose manifest (and so fingerprint)
    assert "deterministic" not in json.loads((tmp_path / "plain" / MANIFEST).read_text())  # is as before the setting


@pytest.mark.slow
def test_sigkill_then_resume_equals_clean_run(tmp_path: Path, tiny_embedding_path: Path) -> None:
    n = 1000  # the kill lands at 3 parts of 16 rows, with 59 parts (about a second of work) still to come
    src = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(n))
    args = [str(src), "--model", str(tiny_embedding_path), "--rows-per-file", "16"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "embed-corpus", *args, "-o", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < n // 16, "the run was not killed in the middle"
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    assert run_cli(*args, "-o", str(out)) == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "a temporary file was left"
    clean = tmp_path / "clean"
    assert run_cli(*args, "-o", str(clean)) == 0
    ids, vecs, _ = read_output(out)
    want_ids, want, _ = read_output(clean)
    assert ids == want_ids and len(set(ids)) == len(ids) == n
    np.testing.assert_allclose(vecs, want, atol=1e-5)


@pytest.mark.parametrize(("rows", "extra", "needle"), [
    ([{"id": "a", "body": "x"}], [], "has no column 'text'"),
    ([{"id": "a", "text": "x"}, {"id": "b", "text": 5}], [], "cannot be read"),
    ([{"id": "a", "text": "x"}, {"id": "a", "text": "y"}], [], "id 'a' appears 2 times"),
    ([{"id": "a", "text": ""}], [], "has no text"),
    ([{"id": "a", "text": "x"}], ["--rows-per-file", "0"], "rows_per_file must be a positive integer"),
])
def test_bad_input_is_one_line(tmp_path: Path, tiny_embedding_path: Path, capsys: pytest.CaptureFixture[str],
                               rows: list[dict[str, object]], extra: list[str], needle: str) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    assert run_cli(str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_embedding_path), *extra) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def test_empty_and_missing_inputs(tmp_path: Path, tiny_embedding_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}),
                   tmp_path / "empty.parquet")
    for name, needle in (("empty.jsonl", "holds no"), ("empty.parquet", "holds no rows"), ("nope.jsonl", "does not")):
        assert run_cli(str(tmp_path / name), "-o", str(tmp_path / "out"), "--model", str(tiny_embedding_path)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err


def test_output_rules(tmp_path: Path, tiny_embedding_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(5))
    model = ["--model", str(tiny_embedding_path)]
    (tmp_path / "afile").write_text("x")
    assert run_cli(str(src), "-o", str(tmp_path / "afile"), *model) == 2
    assert "is a file" in capsys.readouterr().err
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    assert run_cli(str(src), "-o", str(theirs), *model) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did not write" in err and "--overwrite" in err
    assert run_cli(str(src), "-o", str(theirs), *model, "--overwrite") == 0
    assert (theirs / "notes.txt").read_text() == "keep me" and len(list(theirs.glob("part-*"))) == 1
    out = tmp_path / "out"
    assert run_cli(str(src), "-o", str(out), *model) == 0
    assert run_cli(str(src), "-o", str(out), *model) == 2  # a finished output exists
    assert "already holds the complete output" in capsys.readouterr().err
    assert run_cli(str(src), "-o", str(out), *model, "--dim", "32") == 2  # another job's output
    assert "another embed-corpus job" in capsys.readouterr().err
    (out / "mine.txt").write_text("keep me too")
    assert run_cli(str(src), "-o", str(out), *model, "--dim", "32", "--overwrite") == 0
    parts = list(out.glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_schema(parts[0]).field("vector").type.list_size == 32
    assert (out / "mine.txt").read_text() == "keep me too"
    busy = tmp_path / "busy"  # another run is writing it: refused in one line, nothing written
    busy.mkdir()
    capsys.readouterr()
    with OutputLock(busy):
        assert run_cli(str(src), "-o", str(busy), *model) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "being written by another run" in err and os.listdir(busy) == []


def test_index_ingests_vectors_without_embedding(tmp_path: Path, tiny_embedding_path: Path, embedder: Embedder,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rows = corpus_rows(20)
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "vectors"
    assert run_cli(str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--dim", "32", "--keep-text",
                   "--rows-per-file", "7") == 0
    db = tmp_path / "db"
    assert main(["index", "--vectors", str(out), "--db", str(db)]) == 0
    assert "20 written" in capsys.readouterr().err
    store = open_store(db)
    assert store.info.dim == 32 and store.info.model == str(tiny_embedding_path.resolve())
    ids, vecs = store.vectors()
    want = embedder.encode([r["text"] for r in rows], dim=32)
    got = np.stack([vecs[ids.index(f"{r['id']}#0")] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert main(["index", "--vectors", str(out), "--db", str(db)]) == 0  # again: nothing to write
    assert "0 written, 20 already stored" in capsys.readouterr().err
    assert main(["search", rows[3]["text"], "--db", str(db), "--json", "--k", "1"]) == 0
    best = int(np.argmax(want @ embedder.encode_queries([rows[3]["text"]], dim=32)[0]))  # brute force
    assert json.loads(capsys.readouterr().out)[0]["id"] == rows[best]["id"]
    # vectors of another dimension, and a --model that is not theirs, are refused
    other = tmp_path / "vectors64"
    assert run_cli(str(src), "-o", str(other), "--model", str(tiny_embedding_path)) == 0
    assert main(["index", "--vectors", str(other), "--db", str(db)]) == 2
    assert "32-dim vectors" in capsys.readouterr().err
    assert main(["index", "--vectors", str(out), "--db", str(tmp_path / "db2"), "--model", "Qwen/Other"]) == 2
    assert "were made with model" in capsys.readouterr().err
