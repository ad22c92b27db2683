"""`embed-corpus` rows/s: the Ray pipeline against `--engine local`, same host, same corpus, same model.

    PYTHONPATH=src python benchmarks/scale.py                       # CPU: 2,000 rows, a small random model
    PYTHONPATH=src python benchmarks/scale.py --rows 20000 --shape 0.6b --num-gpus 1   # a GPU machine

Each configuration runs the whole job (`embed_corpus`: read and check the JSONL, load the model, embed,
write Parquet parts) into a fresh output folder, so model loading and actor start-up are included, as a
user pays them; the Ray cluster itself is started once before (its start-up is reported apart). The local
run uses one torch thread, like one CPU actor (two threads on two cores shared with other processes were
several times slower here, as BENCHMARKS.md's CPU section says). Ray runs
with tokenization in a CPU stage (`--tokenize stage`) and inside the model actors (`actor`). Vectors of
every run are compared with the local run's (max abs difference). Results: benchmarks/results/scale-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPE_0_6B, versions, word_texts

from qwen_embed.ray.job import CorpusJob, embed_corpus
from qwen_embed.tiny import make_checkpoint

SHAPES = {"small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=64, intermediate_size=768),
          "0.6b": SHAPE_0_6B}


def vectors(folder: Path) -> dict[str, np.ndarray]:
    table = pa.concat_tables([pq.read_table(p) for p in sorted(folder.glob("part-*.parquet"))])
    flat = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    mat = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, -1)
    return dict(zip(table.column("id").to_pylist(), mat, strict=True))


def run(job: CorpusJob, threads: int | None = None) -> tuple[float, dict[str, np.ndarray]]:
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    report = embed_corpus(job)
    seconds = time.perf_counter() - t
    torch.set_num_threads(before)
    assert report.written == report.rows
    return seconds, vectors(Path(job.output))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--median-words", type=float, default=60)
    ap.add_argument("--shape", default="small", choices=sorted(SHAPES))
    ap.add_argument("--num-gpus", type=int, default=0)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray cluster")
    ap.add_argument("--rows-per-file", type=int, default=500)
    ap.add_argument("--batch-rows", type=int, default=256)
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/scale-<date>.json)")
    args = ap.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="qwen-embed-scale-"))
    model = make_checkpoint(work / "model", "embedding", **SHAPES[args.shape])
    src = work / "corpus.jsonl"
    texts = word_texts(args.rows, args.median_words, seed=0)
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    common = dict(input=str(src), model=str(model), rows_per_file=args.rows_per_file, batch_rows=args.batch_rows,
                  num_gpus=args.num_gpus)
    results: dict[str, Any] = {"args": vars(args), "versions": versions(), "cpus_seen": os.cpu_count(),
                               "load_average": os.getloadavg(), "runs": {}}
    configs: list[tuple[str, dict[str, Any], int | None]] = [
        ("local, torch 1 thread", {"engine": "local"}, 1),
    ]
    gpu_or_cpu = {"num_gpus": args.num_gpus} if args.num_gpus else {"actors": 1, "cpus_per_actor": 1}
    configs += [
        ("ray, tokenize stage, 1 actor", {"engine": "ray", "tokenize": "stage", **gpu_or_cpu}, None),
        ("ray, tokenize in actor, 1 actor", {"engine": "ray", "tokenize": "actor", **gpu_or_cpu}, None),
    ]
    if not args.num_gpus and args.cpus >= 2:
        configs.append(("ray, tokenize in actor, 2 actors", {"engine": "ray", "tokenize": "actor", "actors": 2}, None))
    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    results["ray_init_s"] = time.perf_counter() - t
    ray.data.DataContext.get_current().enable_progress_bars = False
    reference: dict[str, np.ndarray] | None = None
    try:
        for k, (name, opts, threads) in enumerate(configs):
            job = CorpusJob(output=str(work / f"out{k}"), **common, **opts)  # type: ignore[arg-type]
            seconds, vecs = run(job, threads)
            reference = reference or vecs
            diff = max(float(np.abs(vecs[i] - reference[i]).max()) for i in reference)
            results["runs"][name] = {"seconds": seconds, "rows_per_s": args.rows / seconds, "max_abs_vs_local": diff}
            print(f"{name:<36} {seconds:7.2f} s  {args.rows / seconds:8.1f} rows/s  max|diff| {diff:.1e}",
                  flush=True)
    finally:
        ray.shutdown()
    out = Path(args.out or Path(__file__).parent / "results" / f"scale-{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"ray.init: {results['ray_init_s']:.1f} s; results in {out}")


if __name__ == "__main__":
    main()
