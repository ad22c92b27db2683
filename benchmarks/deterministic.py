"""Cost of the deterministic (batch-invariant) mode against the default path, in one process.

Random weights with the Qwen3-Embedding-0.6B shape (bf16), the workload of benchmarks/gpu.py (8,192
sequences, lognormal lengths around 160 tokens, end token last), the default 65,536-token budget:
  throughput (tokens/s, best of 3 alternating runs) and MFU against a bf16 matmul ceiling measured here,
  for the default path, `deterministic=True` (compiled layers, the default on CUDA) and `compile=False` (eager);
  single-query latency (p50 over 100 queries);
  the linear layers alone: the batch-invariant Triton matmul against torch (cuBLAS) at 65,536 rows;
  accuracy: cosine of each path's vectors against a float32 reference (the same engine in float32 on a
  sample of 64 sequences); bitwise batch invariance of each path (17 sequences alone vs together).
`--sweep` first times the candidate matmul configurations and runs with the fastest.
Writes deterministic-<date>.json into --out and prints a summary.

    PYTHONPATH=src python benchmarks/deterministic.py [--out DIR] [--quick] [--sweep]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPE_0_6B, lognormal_lengths, model_flops, timed, token_corpus, versions, write_result

from qwen_embed import Embedder
from qwen_embed.kernels import batch_invariant as bi
from qwen_embed.tiny import make_checkpoint


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_ceiling(dev: torch.device, n: int) -> float:
    """bf16 TFLOP/s of torch's n x n x n product (median of 12)."""
    a = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    b = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    for i in range(3):
        a[i] @ b[i]
    times = [timed(lambda i=i: a[i % 3] @ b[i % 3], sync)[0] for i in range(12)]
    return 2 * n**3 / float(np.median(times)) / 1e12


def linear_layers(dev: torch.device, rows: int) -> dict[str, Any]:
    """TFLOP/s of the 0.6B layer's linear shapes: torch (cuBLAS) vs the batch-invariant matmul."""
    from qwen_embed.kernels.batch_invariant import bi_mm

    h, i, q = SHAPE_0_6B["hidden_size"], SHAPE_0_6B["intermediate_size"], 16 * 128
    shapes = {"q": (q, h), "kv": (1024, h), "o": (h, q), "gate_up": (i, h), "down": (h, i)}
    out: dict[str, Any] = {}
    for name, (n, k) in shapes.items():
        x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        for label, fn in (("torch", lambda x=x, w=w: torch.nn.functional.linear(x, w)),
                          ("invariant", lambda x=x, w=w: bi_mm(x, w))):
            for _ in range(3):
                fn()
            t = float(np.median([timed(fn, sync)[0] for _ in range(10)]))
            out[f"{name}_{label}_tflops"] = 2 * rows * n * k / t / 1e12
    return out


CANDIDATES = [  # (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), GROUP_M 8
    (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 4, 4),
]


def config_sweep(dev: torch.device, rows: int) -> dict[str, Any]:
    """Time each candidate configuration on the 0.6B linear shapes; set the fastest as MATMUL_CONFIG.

    How the constant in kernels/batch_invariant.py was chosen (one configuration for every shape)."""
    h, i, q = SHAPE_0_6B["hidden_size"], SHAPE_0_6B["intermediate_size"], 16 * 128
    shapes = [(q, h), (1024, h), (h, q), (i, h), (i, h), (h, i)]  # q, k (v alike), o, gate, up, down
    out: dict[str, Any] = {}
    best: tuple[float, dict[str, int]] | None = None
    for bm, bn, bk, warps, stages in CANDIDATES:
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}
        bi.MATMUL_CONFIG = cfg
        total, flop = 0.0, 0.0
        try:
            for n, k in shapes:
                x = torch.randn(rows, k, device=dev, dtype=torch.bfloat16)
                w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
                for _ in range(3):
                    bi.bi_mm(x, w)
                total += float(np.median([timed(lambda x=x, w=w: bi.bi_mm(x, w), sync)[0] for _ in range(10)]))
                flop += 2 * rows * n * k
        except Exception as e:  # a configuration that does not fit this GPU is recorded and skipped
            out[str(cfg)] = repr(e)[:200]
            continue
        out[str(cfg)] = flop / total / 1e12
        if best is None or total < best[0]:
            best = (total, cfg)
    assert best is not None
    bi.MATMUL_CONFIG = best[1]
    return out


def run(dev: torch.device, quick: bool, sweep: bool) -> dict[str, Any]:
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128) if quick else SHAPE_0_6B
    tmp = Path(tempfile.mkdtemp())
    path = make_checkpoint(tmp / "emb", "embedding", dtype="bfloat16", **shape)  # type: ignore[arg-type]
    res: dict[str, Any] = {"meta": {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                                    "versions": versions(), "shape": shape, "quick": quick}}
    if sweep and dev.type == "cuda":
        res["matmul_config_sweep"] = config_sweep(dev, 65536)
    res["matmul_config"] = dict(bi.MATMUL_CONFIG)
    if dev.type == "cuda":
        h, i, q = shape["hidden_size"], shape["intermediate_size"], shape["num_attention_heads"] * shape["head_dim"]
        res["matmul_backend"] = {f"{n}x{k}": bi.matmul_backend(n, k, torch.bfloat16, dev)
                                 for n, k in [(q, h), (shape["num_key_value_heads"] * shape["head_dim"], h), (h, q),
                                              (i, h), (h, i)]}
    paths = {"default": Embedder.from_pretrained(path, device=dev),
             "deterministic": Embedder.from_pretrained(path, device=dev, deterministic=True),
             "deterministic_eager": Embedder.from_pretrained(path, device=dev, deterministic=True, compile=False)}
    cfg = paths["default"].config
    n_docs = 64 if quick else 8192
    lengths = lognormal_lengths(n_docs, seed=0)
    seqs = token_corpus(lengths, paths["default"].tokenizer.eos_id, vocab_hi=min(151000, cfg.vocab_size), seed=0)
    tokens, flops = sum(lengths), model_flops(cfg, lengths)
    ceiling = matmul_ceiling(dev, 1024 if quick else 8192) if dev.type == "cuda" else float("nan")
    res["workload"] = {"docs": n_docs, "tokens": tokens, "model_tflop": flops / 1e12, "ceiling_tflops": ceiling}

    vecs: dict[str, np.ndarray] = {}
    for name, emb in paths.items():  # warm-up: compilation, graph capture
        t0 = time.perf_counter()
        emb.embed_ids(seqs[: min(n_docs, 2048)])
        for s in seqs[:20]:
            emb.embed_ids([s[:24]])
        res[name] = {"warmup_s": time.perf_counter() - t0, "runs_s": []}
    for _ in range(1 if quick else 3):  # alternate, so that clock drift hits both alike
        for name, emb in paths.items():
            dt, vecs[name] = timed(lambda emb=emb: emb.embed_ids(seqs), sync)
            res[name]["runs_s"].append(dt)
    for name, emb in paths.items():
        r = res[name]
        r["tok_s"] = tokens / min(r["runs_s"])
        r["mfu"] = r["tok_s"] * flops / tokens / (ceiling * 1e12)
        lat = []
        for s in seqs[:100]:
            dt, _ = timed(lambda emb=emb, s=s: emb.embed_ids([s[:24]]), sync)
            lat.append(dt)
        r["query_p50_ms"] = 1e3 * float(np.median(lat))
        few = seqs[:17]
        together = emb.embed_ids(few)
        alone = np.concatenate([emb.embed_ids([s]) for s in few])
        r["bitwise_rows_differing_alone_vs_batch"] = int((together != alone).any(1).sum())
        r["max_abs_alone_vs_batch"] = float(np.abs(together - alone).max())
    res["throughput_ratio"] = res["deterministic"]["tok_s"] / res["default"]["tok_s"]
    res["throughput_ratio_eager"] = res["deterministic_eager"]["tok_s"] / res["default"]["tok_s"]

    # accuracy: float32 reference (same engine, float32 weights, no compile) on a sample
    rng = np.random.default_rng(5)
    sample = rng.choice(n_docs, min(64, n_docs), replace=False).tolist()
    ref32 = Embedder.from_pretrained(path, device=dev, dtype="float32", compile=False)
    ref = ref32.embed_ids([seqs[i] for i in sample])
    for name in paths:
        cos = (vecs[name][sample] * ref).sum(1)
        res[name].update(cos_vs_fp32_min=float(cos.min()), cos_vs_fp32_mean=float(cos.mean()))
    if dev.type == "cuda":
        res["linear_layers_65536_rows"] = linear_layers(dev, 4096 if quick else 65536)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (any device), to check the script")
    ap.add_argument("--sweep", action="store_true", help="time the candidate matmul configurations first and use "
                    "the fastest (how MATMUL_CONFIG was chosen)")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = run(dev, args.quick, args.sweep)
    for name in ("default", "deterministic", "deterministic_eager"):
        r = res[name]
        print(f"{name:>13}: {r['tok_s'] / 1e3:,.0f}k tok/s, MFU {100 * r['mfu']:.0f}%, query p50 "
              f"{r['query_p50_ms']:.2f} ms, cos vs fp32 min {r['cos_vs_fp32_min']:.5f}, rows differing alone vs "
              f"batch {r['bitwise_rows_differing_alone_vs_batch']}/17")
    print(f"throughput ratio deterministic/default: {res['throughput_ratio']:.3f}, eager "
          f"{res['throughput_ratio_eager']:.3f}; matmul config {res['matmul_config']}")
    print(f"wrote {write_result('deterministic-quick' if args.quick else 'deterministic', res, Path(args.out))}")


if __name__ == "__main__":
    main()
