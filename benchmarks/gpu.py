"""GPU benchmark of the embedding and reranking engine against transformers, in one process.

Builds the real Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B shapes with random weights (bf16) and runs,
on the same inputs:
  embedding, 8,192 sequences (lognormal lengths, median 160, sigma 0.6, clipped to 16..1024, end token
  last, fixed seed): (a) transformers with the official usage (left padding, batches of 32, input
  order), (b) transformers sorted by length in batches of 32 (sentence-transformers' way),
  (c) qwen-embed; tokens/s, model FLOP utilisation against a bf16 matmul ceiling measured here;
  reranking, 16 queries x 100 documents: the official transformers scoring (model-card code, batches
  of 32 pairs) against qwen-embed with and without prefix sharing, in pairs/s;
  single-query latency (p50/p99 over 200 queries of 8..40 tokens) inside the engine;
  peak GPU memory above the weights for one 32,768-token input;
  checks: bf16 embeddings vs the float32 transformers reference (cosine >= 0.999), bf16 batch
  invariance, reranker scores vs float32 reference (<= 0.01) and prefix-shared vs unshared (<= 1e-3).
Writes benchmarks/results/gpu-<date>.json and prints a table. `--quick` runs tiny sizes on any device.

    PYTHONPATH=src python benchmarks/gpu.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    SHAPE_0_6B,
    lognormal_lengths,
    model_flops,
    timed,
    token_corpus,
    versions,
    word_texts,
    write_result,
)

from qwen_embed import Embedder, Reranker
from qwen_embed.reranker import PREFIX, SUFFIX
from qwen_embed.tiny import make_checkpoint

RESULTS: dict[str, Any] = {}


def section(name: str):  # type: ignore[no-untyped-def]
    def wrap(fn):  # type: ignore[no-untyped-def]
        def run(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                RESULTS[name] = fn(*a, **k)
            except Exception as e:  # a failed section is recorded, the others still run
                RESULTS[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
                print(RESULTS[name]["trace"], file=sys.stderr)
            RESULTS.setdefault(name, {})["section_s"] = round(time.perf_counter() - t, 1)
            print(f"[{name}] {RESULTS[name]}", flush=True)
            gc.collect()
            torch.cuda.empty_cache()
        return run
    return wrap


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@section("matmul_ceiling")
def matmul_ceiling(dev: torch.device, n: int) -> dict[str, Any]:
    a = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    b = [torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(3)]
    for i in range(3):
        a[i] @ b[i]
    times = []
    for i in range(12):
        dt, _ = timed(lambda i=i: a[i % 3] @ b[i % 3], sync)
        times.append(dt)
    t = float(np.median(times))
    return {"n": n, "tflops": 2 * n**3 / t / 1e12}


def hf_embed(model: Any, seqs: list[list[int]], batch: int, order: list[int], dev: torch.device) -> np.ndarray:
    """Official usage: left padding, last token, L2-normalise; batches taken in `order`."""
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        width = max(len(seqs[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]):] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]):] = 1
        with torch.no_grad():
            h = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state[:, -1]
        out[idx] = torch.nn.functional.normalize(h.float(), dim=-1).cpu().numpy()
    return out


@section("embedding")
def embedding(path: Path, dev: torch.device, n_docs: int, budgets: list[int]) -> dict[str, Any]:
    from transformers import AutoModel

    emb = Embedder.from_pretrained(path, device=dev)
    cfg = emb.config
    lengths = lognormal_lengths(n_docs, seed=0)
    seqs = token_corpus(lengths, emb.tokenizer.eos_id, seed=0)
    tokens, flops = sum(lengths), model_flops(cfg, lengths)
    res: dict[str, Any] = {"docs": n_docs, "tokens": tokens, "mean_len": tokens / n_docs, "model_tflop": flops / 1e12}

    # (c) qwen-embed: warm-up (compilation) once, then the budget sweep
    t0 = time.perf_counter()
    emb.embed_ids(seqs[: min(len(seqs), 2048)])
    res["warmup_s"] = time.perf_counter() - t0
    best = None
    for b in budgets:
        emb.engine.batch_tokens = b
        emb.embed_ids(seqs[:512])
        runs = [timed(lambda: emb.embed_ids(seqs), sync) for _ in range(2)]
        dt = min(r[0] for r in runs)
        res[f"ours_budget_{b}_tok_s"] = tokens / dt
        if best is None or dt < best[0]:
            best = (dt, b, runs[0][1])
    assert best is not None
    ours_s, ours_budget, ours_vecs = best
    emb.engine.batch_tokens = ours_budget
    res.update(ours_s=ours_s, ours_tok_s=tokens / ours_s, ours_budget=ours_budget)

    # text path: tokenization overlapped with the device through the worker pool
    texts = word_texts(n_docs, 120, seed=3)
    emb.encode(texts[:256])
    dt, _ = timed(lambda: emb.encode(texts), sync)
    text_tokens = sum(len(s) for s in emb.tokenize(texts))
    res.update(text_path_tok_s=text_tokens / dt, text_path_tokens=text_tokens)

    # (a), (b): transformers
    hf = AutoModel.from_pretrained(path, dtype=torch.bfloat16).to(dev).eval()
    hf_embed(hf, seqs[:64], 32, list(range(64)), dev)
    dt_a, _ = timed(lambda: hf_embed(hf, seqs, 32, list(range(len(seqs))), dev), sync)
    by_len = sorted(range(len(seqs)), key=lambda i: -lengths[i])
    dt_b, vec_b = timed(lambda: hf_embed(hf, seqs, 32, by_len, dev), sync)
    res.update(a_s=dt_a, a_tok_s=tokens / dt_a, b_s=dt_b, b_tok_s=tokens / dt_b)
    res["cos_ours_vs_hf_bf16_min"] = float((ours_vecs * vec_b).sum(1).min())
    hf = None

    # float32 reference on a sample, and bf16 batch invariance
    rng = np.random.default_rng(5)
    sample = rng.choice(len(seqs), 64, replace=False).tolist()
    hf32 = AutoModel.from_pretrained(path, dtype=torch.float32).to(dev).eval()
    ref = hf_embed(hf32, [seqs[i] for i in sample], 16, list(range(64)), dev)
    hf32 = None
    cos = (ours_vecs[sample] * ref).sum(1)
    res.update(cos_vs_fp32_min=float(cos.min()), cos_vs_fp32_mean=float(cos.mean()))
    few = [seqs[i] for i in sample[:17]]
    together = emb.embed_ids(few)
    alone = np.concatenate([emb.embed_ids([s]) for s in few])
    res.update(batch_invariance_max_abs=float(np.abs(together - alone).max()),
               batch_invariance_cos_min=float((together * alone).sum(1).min()))
    return res


def official_rerank(model: Any, tok: Any, query: str, docs: list[str], instr: str, dev: torch.device,
                    batch: int = 32) -> np.ndarray:
    """The model card's scoring: prefix + tokenized body + suffix, left padding, full logits, yes/no."""
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    pre = tok.encode(PREFIX, add_special_tokens=False)
    suf = tok.encode(SUFFIX, add_special_tokens=False)
    out = []
    for s in range(0, len(docs), batch):
        pairs = [f"<Instruct>: {instr}\n<Query>: {query}\n<Document>: {d}" for d in docs[s : s + batch]]
        enc = tok(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                  max_length=8192 - len(pre) - len(suf))
        ids = [pre + e + suf for e in enc["input_ids"]]
        inputs = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt").to(dev)
        with torch.no_grad():
            logits = model(**inputs).logits[:, -1, :]
        pair = torch.stack([logits[:, no], logits[:, yes]], dim=1).float()
        out.append(torch.log_softmax(pair, dim=1)[:, 1].exp().cpu().numpy())
    return np.concatenate(out)


@section("reranker")
def reranker(path: Path, dev: torch.device, n_queries: int, n_docs: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen_embed import DEFAULT_INSTRUCTION

    queries = word_texts(n_queries, 8, seed=7, lo=4, hi=16)
    docs = [word_texts(n_docs, 120, seed=100 + q) for q in range(n_queries)]
    pairs = n_queries * n_docs
    rr = Reranker.from_pretrained(path, device=dev)
    prefix_len = len(rr.build_input_ids(queries[0], [docs[0][0]])[0]) - len(
        rr.tokenizer.encode_one(docs[0][0])) - len(rr.tokenizer.encode_one(rr.template.tail))
    rr.score(queries[0], docs[0])  # warm-up
    rr.score(queries[0], docs[0][:7])
    dt, ours = timed(lambda: [rr.score(q, d) for q, d in zip(queries, docs, strict=True)], sync)
    rr.score_many(queries[:2], docs[:2])
    dt_m, many = timed(lambda: rr.score_many(queries, docs), sync)
    rr.share_prefix = False
    rr.score(queries[0], docs[0])
    dt_u, unshared = timed(lambda: [rr.score(q, d) for q, d in zip(queries, docs, strict=True)], sync)
    rr.share_prefix = True
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to(dev).eval()
    official_rerank(hf, tok, queries[0], docs[0][:8], DEFAULT_INSTRUCTION, dev)
    dt_o, off = timed(lambda: [official_rerank(hf, tok, q, d, DEFAULT_INSTRUCTION, dev)
                               for q, d in zip(queries, docs, strict=True)], sync)
    hf = None
    hf32 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(dev).eval()
    ref32 = official_rerank(hf32, tok, queries[0], docs[0], DEFAULT_INSTRUCTION, dev, batch=8)
    hf32 = None
    rr32 = Reranker.from_pretrained(path, device=dev, dtype="float32", compile=False)
    seqs32 = rr32.build_input_ids(queries[0], docs[0])
    fp32_sharing = float(np.abs(rr32.score_ids(seqs32, share_prefix=True)
                                - rr32.score_ids(seqs32, share_prefix=False)).max())
    return {
        "max_abs_shared_vs_unshared_fp32": fp32_sharing,
        "queries": n_queries, "docs_per_query": n_docs, "prefix_tokens": prefix_len,
        "ours_pairs_s": pairs / dt, "ours_unshared_pairs_s": pairs / dt_u, "ours_score_many_pairs_s": pairs / dt_m,
        "max_abs_score_many_vs_score": float(max(np.abs(a - b).max() for a, b in zip(many, ours, strict=True))),
        "official_pairs_s": pairs / dt_o,
        "max_abs_vs_fp32": float(np.abs(ours[0] - ref32).max()),
        "max_abs_unshared_vs_fp32": float(np.abs(unshared[0] - ref32).max()),
        "max_abs_vs_official_bf16": float(max(np.abs(a - b).max() for a, b in zip(ours, off, strict=True))),
        "max_abs_shared_vs_unshared": float(max(np.abs(a - b).max() for a, b in zip(ours, unshared, strict=True))),
        "score_std": float(np.std(np.concatenate(ours))),
    }


@section("latency")
def latency(path: Path, dev: torch.device, n: int) -> dict[str, Any]:
    emb = Embedder.from_pretrained(path, device=dev)
    rng = np.random.default_rng(11)
    seqs = token_corpus(rng.integers(8, 41, n).tolist(), emb.tokenizer.eos_id, seed=11)
    for s in seqs[:40]:  # warm-up: capture the graphs of the buckets these fall in
        emb.embed_ids([s])
    times = []
    for s in seqs:
        t = time.perf_counter()
        emb.embed_ids([s])
        times.append((time.perf_counter() - t) * 1e3)
    eager = Embedder.from_pretrained(path, device=dev, compile=False)
    eager.engine.graphs = None  # type: ignore[attr-defined]
    for s in seqs[:10]:
        eager.embed_ids([s])
    e_times = []
    for s in seqs[:50]:
        t = time.perf_counter()
        eager.embed_ids([s])
        e_times.append((time.perf_counter() - t) * 1e3)
    texts = word_texts(n, 12, seed=12, lo=4, hi=30)
    for t_ in texts[:20]:
        emb.encode_queries([t_])
    q_times = []
    for t_ in texts:
        t = time.perf_counter()
        emb.encode_queries([t_])
        q_times.append((time.perf_counter() - t) * 1e3)
    return {"queries": n, "p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "eager_p50_ms": float(np.percentile(e_times, 50)),
            "text_query_p50_ms": float(np.percentile(q_times, 50)),
            "text_query_p99_ms": float(np.percentile(q_times, 99))}


@section("long_input")
def long_input(path: Path, dev: torch.device, n_tokens: int) -> dict[str, Any]:
    emb = Embedder.from_pretrained(path, device=dev, max_length=32768)
    seq = token_corpus([n_tokens], emb.tokenizer.eos_id, seed=13)[0]
    emb.embed_ids([seq[:1024]])
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    dt, v = timed(lambda: emb.embed_ids([seq]), sync)
    peak = torch.cuda.max_memory_allocated()
    weights = sum(p.numel() * p.element_size() for p in emb.checkpoint.model.parameters())
    return {"tokens": n_tokens, "seconds": dt, "peak_above_weights_gib": (peak - weights) / 2**30,
            "peak_above_resident_gib": (peak - base) / 2**30, "weights_gib": weights / 2**30,
            "finite": bool(np.isfinite(v).all())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (any device), to check the script")
    ap.add_argument("--only", default="", help="comma-separated sections to run")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    quick = args.quick
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128) if quick else SHAPE_0_6B
    only = set(filter(None, args.only.split(",")))
    tmp = Path(tempfile.mkdtemp())
    emb_path = make_checkpoint(tmp / "emb", "embedding", dtype="bfloat16", **shape)  # type: ignore[arg-type]
    rr_path = make_checkpoint(tmp / "rr", "reranker", dtype="bfloat16", **shape)  # type: ignore[arg-type]
    RESULTS["meta"] = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                       "versions": versions(), "shape": shape, "quick": quick,
                       "command": "PYTHONPATH=src python benchmarks/gpu.py" + (" --quick" if quick else "")}
    if not only or "matmul_ceiling" in only:
        matmul_ceiling(dev, 1024 if quick else 8192)
    if not only or "embedding" in only:
        embedding(emb_path, dev, 64 if quick else 8192, [4096] if quick else [32768, 65536, 131072])
    if not only or "reranker" in only:
        reranker(rr_path, dev, 2 if quick else 16, 10 if quick else 100)
    if dev.type == "cuda" and (not only or "latency" in only):
        latency(emb_path, dev, 200)
    if dev.type == "cuda" and (not only or "long_input" in only):
        long_input(emb_path, dev, 32768)
    if only:  # a partial run updates the sections it ran in an existing result file of the day
        import datetime as dt
        import json

        old = Path(args.out) / f"{'gpu-quick' if quick else 'gpu'}-{dt.date.today().isoformat()}.json"
        if old.is_file():
            merged = json.loads(old.read_text())
            merged.update({k: v for k, v in RESULTS.items() if k != "meta"})
            merged.setdefault("meta", {})["updated_sections"] = sorted(only)
            RESULTS.clear()
            RESULTS.update(merged)
    summarise()
    path = write_result("gpu-quick" if quick else "gpu", RESULTS, Path(args.out))
    print(f"wrote {path}")


def summarise() -> None:
    e, r = RESULTS.get("embedding", {}), RESULTS.get("reranker", {})
    ceiling = RESULTS.get("matmul_ceiling", {}).get("tflops", math.nan)
    flop_per_tok = e.get("model_tflop", math.nan) * 1e12 / max(e.get("tokens", 1), 1)

    def mfu(tok_s: float) -> float:
        return tok_s * flop_per_tok / (ceiling * 1e12)

    rows = []
    if "ours_tok_s" in e:
        for name, key in [("(a) transformers, official usage", "a_tok_s"), ("(b) transformers, sorted", "b_tok_s"),
                          ("(c) qwen-embed", "ours_tok_s")]:
            if key in e:
                rows.append((f"embedding {name}", f"{e[key] / 1e3:,.0f}k tok/s", f"MFU {100 * mfu(e[key]):.0f}%"))
        if "b_tok_s" in e:
            rows.append(("embedding ratio (c)/(b), (c)/(a)", f"{e['ours_tok_s'] / e['b_tok_s']:.2f}x",
                         f"{e['ours_tok_s'] / e['a_tok_s']:.2f}x"))
        e["ours_mfu"], e["b_mfu"] = mfu(e["ours_tok_s"]), mfu(e.get("b_tok_s", math.nan))
        e["a_mfu"] = mfu(e.get("a_tok_s", math.nan))
    if "ours_pairs_s" in r:
        rows.append(("rerank qwen-embed score_many (16 queries)", f"{r['ours_score_many_pairs_s']:,.0f} pairs/s",
                     f"{r['ours_score_many_pairs_s'] / r['official_pairs_s']:.1f}x official"))
        rows.append(("rerank qwen-embed score per query (shared)", f"{r['ours_pairs_s']:,.0f} pairs/s",
                     f"{r['ours_pairs_s'] / r['official_pairs_s']:.1f}x official"))
        rows.append(("rerank qwen-embed (no sharing)", f"{r['ours_unshared_pairs_s']:,.0f} pairs/s", ""))
        rows.append(("rerank official transformers", f"{r['official_pairs_s']:,.0f} pairs/s", ""))
    lat = RESULTS.get("latency", {})
    if "p50_ms" in lat:
        rows.append(("single query latency p50 / p99", f"{lat['p50_ms']:.2f} ms", f"{lat['p99_ms']:.2f} ms"))
    li = RESULTS.get("long_input", {})
    if "peak_above_weights_gib" in li:
        rows.append(("32K-token input, peak above weights", f"{li['peak_above_weights_gib']:.2f} GiB",
                     f"{li['seconds']:.2f} s"))
    rows.append(("bf16 matmul ceiling", f"{ceiling:.0f} TFLOP/s", ""))
    width = max(len(a) for a, _, _ in rows)
    print("\n" + "\n".join(f"{a:<{width}}  {b:>18}  {c}" for a, b, c in rows))


if __name__ == "__main__":
    main()
