"""Ray Data stages and `embed-corpus --engine ray` on a local Ray cluster started once for this module, the
only one that uses Ray (2 CPUs, CPU actors, the tiny checkpoints). Skipped when Ray (the `[ray]` extra) is
not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from qwen_embed import Embedder, Reranker

from .test_job import MANIFEST, corpus_rows, read_output, run_cli, write_jsonl

ray = pytest.importorskip("ray", reason="Ray is the optional extra qwen-embed[ray]")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster shared by this module's tests -> its address (for subprocess drivers).

    Module scope, not session: this is the only module that uses Ray, and a cluster left up until the session
    ends keeps its daemons and idle workers polling (~0.07 CPU-seconds per second, measured) through every later
    test of that pytest process; it is shut down as soon as these tests are done.

    Fewer Python worker processes (each costs ~0.5-1 CPU-second to start, more with its imports): an idle
    worker is kept for the next task of its job (Ray kills it after 1 s idle, and the next test's read task
    started a new one), and a Parquet read lists its footers with one actor, not Ray Data's 32."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 _system_config={"idle_worker_killing_time_threshold_ms": 600_000})
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("tokenize", ["stage", "actor"])
def test_embed_dataset_equals_encode(ray_cluster: str, tiny_embedding_path: Path, embedder: Embedder,
                                     tokenize: str) -> None:
    from qwen_embed.ray import embed_dataset

    rows = corpus_rows(50, seed=1)
    ds = ray.data.from_arrow(pa.Table.from_pylist(rows))
    deterministic = tokenize == "actor"  # batch-invariant kernels in the actors: each text's own bits
    out = embed_dataset(ds, tiny_embedding_path, dim=48, batch_rows=16, tokenize=tokenize,
                        deterministic=deterministic).to_arrow_refs()
    table = pa.concat_tables(ray.get(out))
    assert set(table.column_names) == {"id", "text", "vector"}
    got = dict(zip(table.column("id").to_pylist(),
                   table.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, 48), strict=True))
    if deterministic:
        alone = Embedder.from_pretrained(tiny_embedding_path, deterministic=True)
        want = np.concatenate([alone.encode([r["text"]], dim=48) for r in rows])
        assert np.array_equal(np.stack([got[r["id"]] for r in rows]), want)
        return
    want = embedder.encode([r["text"] for r in rows], dim=48)
    np.testing.assert_allclose(np.stack([got[r["id"]] for r in rows]), want, atol=1e-5)


@pytest.mark.slow
def test_rerank_dataset_equals_score(ray_cluster: str, tiny_reranker_path: Path, reranker: Reranker) -> None:
    from qwen_embed.ray import rerank_dataset

    pairs = [{"query": q, "document": d} for q in ("what is alpha", "beta?") for d in ("alpha beta", "gamma", "pi")]
    table = pa.concat_tables(ray.get(rerank_dataset(ray.data.from_items(pairs), tiny_reranker_path,
                                                    batch_rows=4).to_arrow_refs()))
    got = {(q, d): s for q, d, s in zip(table.column("query").to_pylist(), table.column("document").to_pylist(),
                                        table.column("score").to_pylist(), strict=True)}
    for q in ("what is alpha", "beta?"):
        want = reranker.score(q, ["alpha beta", "gamma", "pi"])
        np.testing.assert_allclose([got[(q, d)] for d in ("alpha beta", "gamma", "pi")], want, atol=1e-5)


@pytest.mark.slow
def test_embed_corpus_on_ray_equals_encode(ray_cluster: str, tmp_path: Path, tiny_embedding_path: Path,
                                           embedder: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    rows = corpus_rows(40, seed=2)
    rows[5]["text"] = "alpha beta " * 110_000  # a 1.2 MB line: over pyarrow's default JSON block of 1 MiB
    src = write_jsonl(tmp_path / "corpus.jsonl", rows)
    out = tmp_path / "out"
    assert run_cli(str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--engine", "ray",
                   "--rows-per-file", "16", "--batch-rows", "8") == 0
    ids, vecs, schema = read_output(out)
    assert schema.names == ["id", "vector"] and schema.field("vector").type.list_size == 64
    assert pa.types.is_fixed_size_list(schema.field("vector").type)
    assert ids == sorted(r["id"] for r in rows)
    np.testing.assert_allclose(vecs, embedder.encode([r["text"] for r in sorted(rows, key=lambda r: r["id"])]),
                               atol=1e-5)
    capsys.readouterr()
    # a bad row is refused in one line, before the cluster does any work
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": None}])
    assert run_cli(str(bad), "-o", str(tmp_path / "bad"), "--model", str(tiny_embedding_path), "--engine", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'b' has no text" in err, err
    # a tokenize stage that would find no free core beside the actors is refused, not left waiting
    assert run_cli(str(src), "-o", str(tmp_path / "busy"), "--model", str(tiny_embedding_path), "--engine", "ray",
                   "--actors", "2", "--tokenize", "stage") == 2
    assert "needs 2.5 CPUs, the cluster has 2" in capsys.readouterr().err


@pytest.mark.slow
def test_ray_run_killed_then_resumed_equals_clean(ray_cluster: str, tmp_path: Path,
                                                  tiny_embedding_path: Path) -> None:
    src = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows(800, seed=3))
    args = [str(src), "--model", str(tiny_embedding_path), "--rows-per-file", "16", "--batch-rows", "16"]
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "embed-corpus", *args, "-o", str(out),
                             "--engine", "ray", "--address", ray_cluster], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(list(out.glob("part-*.parquet")))
    assert 2 <= written < 800 // 16, "the run was not killed in the middle"
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    # resumed on Ray, with two CPU actors taking both cores (the reads reserve none)
    assert run_cli(*args, "-o", str(out), "--engine", "ray", "--actors", "2") == 0
    clean = tmp_path / "clean"
    assert run_cli(*args, "-o", str(clean)) == 0  # the reference: a clean local run
    ids, vecs, _ = read_output(out)
    want_ids, want, _ = read_output(clean)
    assert ids == want_ids and len(set(ids)) == len(ids) == 800
    np.testing.assert_allclose(vecs, want, atol=1e-5)


@pytest.mark.slow
def test_embed_corpus_on_ray_parquet_float16_text(ray_cluster: str, tmp_path: Path, tiny_embedding_path: Path,
                                                  embedder: Embedder) -> None:
    import pyarrow.parquet as pq

    rows = corpus_rows(20, seed=4)
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"doc": [int(r["id"][1:]) for r in rows], "body": [r["text"] for r in rows]}), src)
    out = tmp_path / "out"
    assert run_cli(str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--engine", "ray",
                   "--id-column", "doc", "--text-column", "body", "--dim", "32", "--dtype-out", "float16",
                   "--keep-text", "--tokenize", "stage") == 0
    table = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    assert table.schema.names == ["id", "vector", "text"] and table.schema.field("id").type == pa.string()
    assert table.schema.field("vector").type.value_type == pa.float16()
    assert sorted(table.column("id").to_pylist()) == sorted(str(int(r["id"][1:])) for r in rows)
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    want = embedder.encode(table.column("text").to_pylist(), dim=32)
    np.testing.assert_allclose(flat.astype(np.float32).reshape(-1, 32), want, atol=2e-3)  # float16 rounding


@pytest.mark.slow
def test_a_bad_row_found_on_ray_is_one_line(ray_cluster: str, tmp_path: Path, tiny_embedding_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow.parquet as pq

    src = tmp_path / "in.parquet"  # Parquet texts are checked batch by batch, here inside a Ray task
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["one", None, "three"]}), src)
    assert run_cli(str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_embedding_path), "--engine", "ray") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'b' has no text" in err, err
