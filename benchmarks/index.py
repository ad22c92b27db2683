"""Indexing throughput and search latency of the retrieval pipeline.

1. Indexing: documents/s and tokens/s of `Index.add` (chunk, embed, write to LanceDB), split into
   embedding and store time, beside the reference path: plain `Embedder.encode` of the same texts with
   no store (the ratio is the pipeline's overhead).
2. Search: p50/p99 latency of one query at `--rows` rows (random unit vectors, default 100k x 1024):
   Lance exact scan, the default ANN index (IVF_SQ, all partitions probed, refine x5), ANN probing a
   quarter of the partitions, and numpy brute force over the same vectors in memory; recall@10 of the
   ANN settings against exact.

    python benchmarks/index.py --quick                                  # CPU check, tiny model, ~1 min
    python benchmarks/index.py --model tiny-0.6b --device cuda          # 0.6B shape, random weights
    python benchmarks/index.py --model /path/to/Qwen3-Embedding-0.6B --device cuda

`--model tiny` (default) and `tiny-0.6b` make random-weight checkpoints on the spot (the small shape,
or the 0.6B shape), so the benchmark runs without the hub.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from qwen_embed import Embedder  # noqa: E402
from qwen_embed.retrieval import Document, Index, read_sources  # noqa: E402
from qwen_embed.store import ChunkRows, TableInfo, open_store  # noqa: E402
from qwen_embed.store.lance import ann_partitions  # noqa: E402

SHAPE_06B = dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072)
WORDS = ["protein", "cell", "gene", "study", "patients", "results", "effect", "model", "data", "analysis",
         "increase", "treatment", "expression", "risk", "disease", "response", "levels", "function", "human"]


def load_model(spec: str, device: str | None, dtype: str | None, tmp: Path) -> Embedder:
    from qwen_embed.tiny import make_checkpoint

    if spec == "tiny":
        return Embedder.from_pretrained(make_checkpoint(tmp / "tiny", "embedding"), device=device, dtype=dtype)
    if spec == "tiny-0.6b":
        path = make_checkpoint(tmp / "tiny-0.6b", "embedding", dtype="bfloat16", **SHAPE_06B)  # type: ignore[arg-type]
        return Embedder.from_pretrained(path, device=device, dtype=dtype)
    return Embedder.from_pretrained(spec, device=device, dtype=dtype)


def make_documents(n: int, corpus: str | None, seed: int = 0) -> list[Document]:
    """SciFact-like documents: the given corpus, SciFact beside the repo when present, else synthetic."""
    path = Path(corpus) if corpus else REPO.parent / "shared/data/beir/scifact"
    if path.exists():
        return read_sources([path]).documents[:n]
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(160), 0.6, n), 16, 1024).astype(int)
    return [Document(f"d{i}", " ".join(rng.choice(WORDS, k)), f"Title {i}") for i, k in enumerate(lengths)]


def bench_indexing(emb: Embedder, docs: list[Document], batch_docs: int, tmp: Path) -> dict[str, float]:
    texts = [d.embedding_text() for d in docs]
    emb.encode(texts[:8])  # warm-up (CUDA context, kernels)
    t0 = time.perf_counter()
    emb.encode(texts, progress=False)
    ref = time.perf_counter() - t0
    index = Index.open(tmp / "index-db", model=emb)
    t0 = time.perf_counter()
    rep = index.add(docs, batch_docs=batch_docs, progress=False)
    total = time.perf_counter() - t0
    return {"documents": len(docs), "chunks": rep.chunks, "tokens": rep.tokens, "total_s": total,
            "embed_s": rep.embed_seconds, "store_s": rep.store_seconds, "docs_per_s": len(docs) / total,
            "tokens_per_s": rep.tokens / total, "embed_tokens_per_s": rep.tokens / rep.embed_seconds,
            "reference_encode_s": ref, "pipeline_over_reference": total / ref}


def _latency(fn: object, queries: np.ndarray) -> tuple[float, float, list[list[str]]]:
    times, results = [], []
    for q in queries:
        t0 = time.perf_counter()
        results.append(fn(q))  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), results


def bench_search(rows: int, dim: int, n_queries: int, tmp: Path, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    qs = rng.standard_normal((n_queries, dim)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    info = TableInfo(model="random", dim=dim, hidden_size=dim, tokenizer_fingerprint="-", query_instruction="-",
                     chunk_tokens=512, overlap=64, max_length=8192)
    store = open_store(tmp / "search-db", "t", info)
    t0 = time.perf_counter()
    step = 50_000
    for s in range(0, rows, step):
        ids = [f"r{i}" for i in range(s, min(rows, s + step))]
        n = len(ids)
        store.replace_documents(ids, ChunkRows(ids, ids, [0] * n, [""] * n, [""] * n, ["h"] * n, [{}] * n,
                                               x[s : s + n]))
    write_s = time.perf_counter() - t0
    out: dict[str, float] = {"rows": rows, "dim": dim, "write_s": write_s}
    stored_ids, vecs = store.vectors()
    id_arr = np.array(stored_ids)

    def numpy_top(q: np.ndarray) -> list[str]:
        s = vecs @ q
        top = np.argpartition(-s, 10)[:10]
        return list(id_arr[top[np.argsort(-s[top])]])

    out["numpy_p50_ms"], out["numpy_p99_ms"], _ = _latency(numpy_top, qs)
    out["exact_p50_ms"], out["exact_p99_ms"], exact = _latency(
        lambda q: [h.id for h in store.search(q, 10, exact=True)], qs)
    t0 = time.perf_counter()
    parts = store.build_index()
    out["ann_build_s"] = time.perf_counter() - t0
    out["ann_partitions"] = parts
    for name, nprobes in (("ann", None), ("ann_quarter", max(1, parts // 4))):
        p50, p99, res = _latency(lambda q, n=nprobes: [h.id for h in store.search(q, 10, nprobes=n)], qs)
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = p50, p99
        out[f"{name}_recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res, exact,
                                                                                              strict=True)]))
    out["exact_over_ann_p50"] = out["exact_p50_ms"] / out["ann_p50_ms"]
    assert parts == ann_partitions(rows)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="tiny (default), tiny-0.6b, a hub id or a local folder")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bf16 on cuda, fp32 on cpu)")
    p.add_argument("--docs", type=int, default=None, help="documents to index (default 8192; --quick 512)")
    p.add_argument("--corpus", default=None, help="corpus to index (default: ../shared SciFact, else synthetic)")
    p.add_argument("--batch-docs", type=int, default=1024, help="documents per atomic write (default 1024)")
    p.add_argument("--rows", type=int, default=100_000, help="rows for the search benchmark (default 100k)")
    p.add_argument("--dim", type=int, default=1024, help="vector dimension for the search benchmark (default 1024)")
    p.add_argument("--queries", type=int, default=200, help="queries timed (default 200)")
    p.add_argument("--quick", action="store_true", help="small sizes for a CPU check (512 docs, 20k x 256 rows)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.rows, args.dim, args.queries, args.batch_docs = 20_000, 256, 50, 256
    if args.docs is None:
        args.docs = 512 if args.quick else 8192
    with tempfile.TemporaryDirectory(prefix="qwen-embed-bench-") as d:
        tmp = Path(d)
        emb = load_model(args.model, args.device, args.dtype, tmp)
        docs = make_documents(args.docs, args.corpus)
        print(f"indexing {len(docs)} documents with {emb!r}")
        ix = bench_indexing(emb, docs, args.batch_docs, tmp)
        print(f"  pipeline : {ix['docs_per_s']:9.1f} docs/s  {ix['tokens_per_s']:10.0f} tokens/s  "
              f"({ix['total_s']:.1f} s = embed {ix['embed_s']:.1f} s + store {ix['store_s']:.1f} s; "
              f"{ix['chunks']} chunks, {ix['tokens']} tokens)")
        print(f"  embedding: {ix['embed_tokens_per_s']:10.0f} tokens/s inside the pipeline; reference "
              f"Embedder.encode alone {ix['reference_encode_s']:.1f} s -> pipeline/reference "
              f"{ix['pipeline_over_reference']:.2f}x")
        print(f"search over {args.rows} random unit vectors of dim {args.dim}, k=10, {args.queries} queries")
        se = bench_search(args.rows, args.dim, args.queries, tmp)
        print(f"  write {se['write_s']:.1f} s, ANN build {se['ann_build_s']:.1f} s "
              f"(IVF_SQ, {int(se['ann_partitions'])} partitions)")
        for name, label in (("numpy", "numpy brute force (reference, in memory)"), ("exact", "Lance exact scan"),
                            ("ann", "ANN default (all partitions, refine x5)"),
                            ("ann_quarter", "ANN, a quarter of the partitions")):
            rec = f"  recall@10 {se[name + '_recall@10']:.3f}" if name.startswith("ann") else ""
            print(f"  {label:<42} p50 {se[name + '_p50_ms']:8.2f} ms  p99 {se[name + '_p99_ms']:8.2f} ms{rec}")
        print(f"  exact / ANN default (p50): {se['exact_over_ann_p50']:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "indexing": ix, "search": se}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
