"""Quantized embeddings: quality against float search, memory per vector, search latency.

1. Quality (SciFact test, the real BEIR data beside the repo): the corpus and queries are embedded
   once in float32; each precision gets its own LanceDB table built through the store (the code path
   `qwen-embed index --precision` uses), and every test query is searched there. Reported per
   precision: recall@10 of its top 10 against float32 search's top 10, nDCG@10 against the qrels,
   bytes per vector, p50 search latency.
2. Size sweep (random unit vectors, dim 1024 by default): for each size in --sizes, one table per
   precision (the binary table serves both binary settings); bytes per vector searched and on disk,
   p50 latency of an exact search (no ANN index, so the numbers compare the scans themselves), and
   recall@10 / @1 against float32 search. Vectors are made in float32 chunks (1M x 1024 is 4 GiB)
   and each table is deleted once measured, so the 1M row needs about 10 GiB of RAM and 5 GiB of disk.

Both parts run in one process and write one JSON (`--out FILE.json`, or a folder for the dated name):

    python benchmarks/quantized.py --quick                                # CPU, tiny model, 20k vectors
    python benchmarks/quantized.py --sizes 100000 --out q.json            # CPU, tiny model, 100k
    python benchmarks/quantized.py --model tiny-0.6b --device cuda --sizes 100000,1000000 \
        --out benchmarks/results/quantized-gpu.json                       # 0.6B shape (GPU) + 100k and 1M

Random weights make absolute nDCG meaningless; recall against float search measures what quantization
loses, whatever the model.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import versions, write_result  # noqa: E402

from qwen_embed import Embedder  # noqa: E402
from qwen_embed.eval import load_beir, mteb_scores  # noqa: E402
from qwen_embed.files import write_json_atomic  # noqa: E402
from qwen_embed.quantize import bytes_per_vector, calibration_ranges  # noqa: E402
from qwen_embed.store import ChunkRows, TableInfo, open_store  # noqa: E402
from qwen_embed.store.lance import LanceStore  # noqa: E402

SHAPE_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072)
# (label, table precision, rescore multiplier at search)
SETTINGS = [("float32", "float32", None), ("float16", "float16", None), ("int8", "int8", None),
            ("binary", "binary", 0), ("binary+rescore x4", "binary", 4)]


def load_model(spec: str, device: str | None, tmp: Path) -> Embedder:
    from qwen_embed.tiny import make_checkpoint

    if spec == "tiny":
        return Embedder.from_pretrained(make_checkpoint(tmp / "tiny", "embedding", hidden_size=256,
                                                        intermediate_size=512), device=device)
    if spec == "tiny-0.6b":
        path = make_checkpoint(tmp / "tiny-0.6b", "embedding", dtype="bfloat16", **SHAPE_06B)  # type: ignore[arg-type]
        return Embedder.from_pretrained(path, device=device)
    return Embedder.from_pretrained(spec, device=device)


def build_table(db: Path, name: str, vectors: np.ndarray, precision: str, ranges: np.ndarray | None,
                batch: int = 50_000) -> LanceStore:
    """One table of `vectors` (row i is document d{i}) stored in `precision`."""
    dim = vectors.shape[1]
    info = TableInfo(model="bench", dim=dim, hidden_size=dim, tokenizer_fingerprint="-", query_instruction="-",
                     chunk_tokens=512, overlap=0, max_length=512, precision=precision,
                     ranges=None if ranges is None or precision in ("float32", "float16") else ranges.tolist())
    store = open_store(db, name, info)
    for s in range(0, len(vectors), batch):
        ids = [f"d{i}" for i in range(s, min(s + batch, len(vectors)))]
        n = len(ids)
        store.replace_documents(ids, ChunkRows(ids=[f"{i}#0" for i in ids], doc_ids=ids, chunks=[0] * n,
                                               texts=[""] * n, titles=[""] * n, hashes=["h"] * n,
                                               metadata=[{}] * n, vectors=vectors[s : s + batch]))
    return store


def search_all(store: LanceStore, queries: np.ndarray, k: int, rescore: int | None) -> tuple[list[list[str]], float]:
    """Top-k doc ids of every query, and the p50 latency in ms."""
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        hits = store.search(q, k, exact=True, rescore_multiplier=rescore)
        times.append(time.perf_counter() - t)
        out.append([h.doc_id for h in hits])
    return out, 1000 * float(np.median(times))


def quality(embedder: Embedder, scifact: Path, tmp: Path, max_docs: int | None = None) -> list[dict[str, Any]]:
    """SciFact test: recall@10 against float search and nDCG@10 of each precision."""
    ds = load_beir(scifact, "test")
    ids, texts = ds.corpus_ids[:max_docs], ds.corpus_texts[:max_docs]
    keep = set(ids)
    docs = embedder.encode([t or i for t, i in zip(texts, ids, strict=True)], progress=False)
    queries = embedder.encode_queries(ds.query_texts, progress=False)
    ranges = calibration_ranges(docs)
    rows, reference = [], None
    for label, precision, rescore in SETTINGS:
        store = build_table(tmp / "quality", label.replace(" ", "_").replace("+", "_"), docs, precision, ranges)
        found, p50 = search_all(store, queries, 10, rescore)
        ranked = [[ids[int(d[1:])] for d in row] for row in found]
        if reference is None:
            reference = ranked
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ranked, reference, strict=True)]))
        run = {qid: {d: 10.0 - r for r, d in enumerate(row)} for qid, row in zip(ds.query_ids, ranked, strict=True)}
        qrels = {q: {d: g for d, g in j.items() if d in keep} for q, j in ds.qrels.items()}
        qrels = {q: j for q, j in qrels.items() if j}
        mean, _ = mteb_scores(qrels, {q: r for q, r in run.items() if q in qrels}, [10])
        rows.append({"setting": label, "recall_at_10_vs_float": recall, "ndcg_at_10": mean["ndcg_at_10"],
                     "bytes_per_vector": bytes_per_vector(docs.shape[1], precision), "search_p50_ms": p50})
    return rows


def unit_vectors(rng: np.random.Generator, n: int, dim: int, chunk: int = 100_000) -> np.ndarray:
    """[n, dim] random unit vectors, made in float32 chunks (no float64 copy of the whole array)."""
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        part = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        x[s : s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x


def sweep(sizes: list[int], dim: int, tmp: Path, queries: int = 20) -> list[dict[str, Any]]:
    """Latency, memory per vector and recall against float32 at each size, random unit vectors."""
    rng = np.random.default_rng(0)
    out = []
    for n in sizes:
        x = unit_vectors(rng, n, dim)
        q = x[rng.choice(n, queries, replace=False)] + 0.05 * rng.standard_normal((queries, dim), dtype=np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        ranges = calibration_ranges(x[: min(n, 100_000)])
        db = tmp / f"sweep-{n}"
        reference: list[list[str]] | None = None
        built: dict[str, tuple[LanceStore, float, int]] = {}  # precision -> (store, build seconds, disk bytes)
        for i, (label, precision, rescore) in enumerate(SETTINGS):
            if precision not in built:
                t = time.perf_counter()
                store = build_table(db, precision, x, precision, ranges)
                build_s = time.perf_counter() - t
                disk = sum(f.stat().st_size for f in (db / f"{precision}.lance").rglob("*") if f.is_file())
                built[precision] = (store, build_s, disk)
            store, build_s, disk = built[precision]
            store.search(q[0], 10, exact=True, rescore_multiplier=rescore)  # warm caches
            found, p50 = search_all(store, q, 10, rescore)
            if reference is None:
                reference = found
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, reference, strict=True)]))
            top1 = float(np.mean([a[:1] == b[:1] for a, b in zip(found, reference, strict=True)]))
            out.append({"rows": n, "dim": dim, "setting": label, "search_p50_ms": p50, "recall_at_10_vs_float": recall,
                        "recall_at_1_vs_float": top1, "bytes_per_vector": bytes_per_vector(dim, precision),
                        "disk_bytes_per_vector": disk / n, "build_s": build_s})
            print(json.dumps(out[-1]), flush=True)
            if all(p != precision for _, p, _ in SETTINGS[i + 1 :]):  # measured: free its disk and memory
                del built[precision], store
                shutil.rmtree(db / f"{precision}.lance", ignore_errors=True)
        del x
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="tiny (default), tiny-0.6b, or a checkpoint")
    ap.add_argument("--device", default=None)
    ap.add_argument("--scifact", default=str(REPO.parent / "shared/data/beir/scifact"))
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated table sizes of the sweep")
    ap.add_argument("--dim", type=int, default=1024, help="dimension of the sweep's random vectors")
    ap.add_argument("--queries", type=int, default=20, help="queries per size in the sweep (default 20)")
    ap.add_argument("--quick", action="store_true", help="20k vectors only")
    ap.add_argument("--out", default=str(REPO / "benchmarks/results"),
                    help="FILE.json (refused when it exists), or a folder for quantized-{cpu,gpu}-DATE.json")
    args = ap.parse_args()
    sizes = [20_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    if out.suffix == ".json" and out.exists():
        sys.exit(f"--out {out} exists; pass another file name (results are never overwritten).")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result: dict[str, Any] = {"versions": versions(), "model": args.model, "device": args.device or "auto"}
        if Path(args.scifact).is_dir():
            emb = load_model(args.model, args.device, tmp)
            result["quality"] = quality(emb, Path(args.scifact), tmp)
            print("\n| setting | recall@10 vs float | nDCG@10 | bytes/vector | search p50 ms |\n|---|---|---|---|---|")
            for r in result["quality"]:
                print(f"| {r['setting']} | {r['recall_at_10_vs_float']:.3f} | {r['ndcg_at_10']:.4f} | "
                      f"{r['bytes_per_vector']} | {r['search_p50_ms']:.1f} |")
        else:
            print(f"SciFact not found at {args.scifact}: quality part skipped")
        result["sweep"] = sweep(sizes, args.dim, tmp, args.queries)
        print("\n| rows | setting | bytes/vector | disk bytes/vector | search p50 ms | recall@10 vs float | "
              "recall@1 vs float |")
        print("|---|---|---|---|---|---|---|")
        for r in result["sweep"]:
            print(f"| {r['rows']:,} | {r['setting']} | {r['bytes_per_vector']} | {r['disk_bytes_per_vector']:.0f} | "
                  f"{r['search_p50_ms']:.1f} | {r['recall_at_10_vs_float']:.3f} | {r['recall_at_1_vs_float']:.2f} |")
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    if out.suffix == ".json":
        print(write_json_atomic(out, result, overwrite=False))
    else:
        print(write_result("quantized-" + ("gpu" if (args.device or "").startswith("cuda") else "cpu"), result, out))


if __name__ == "__main__":
    main()
