"""CPU benchmark: qwen-embed against transformers and sentence-transformers on the same token ids.

One process, one random-weight checkpoint of the 0.6B layer shape (hidden 1024, 16/8 heads of 128,
intermediate 3072) with few layers (default 4), float32, the torch thread count of `--threads`
(default: the cores this process may use). Workloads:

- short: `--texts` inputs with lengths lognormal around 160 tokens (16..1024), end token last.
  qwen-embed (packed, token budget swept over `--budgets`), transformers `AutoModel` (sdpa, sorted by
  length, left padded, batches of 32: sentence-transformers' way), sentence-transformers
  (Transformer + last-token Pooling + Normalize modules fed the same padded batches), and qwen-embed
  with `dtype="int8"`. Runs are interleaved (ours, transformers, ...) `--repeat` times and the best of
  each is kept, so that load from other processes hits every path alike.
- long: one input of each length in `--long` (default 4096, 16384, 32768): qwen-embed float32 and int8,
  transformers (one unpadded sequence).

For each run: tokens/s, the peak RSS increase of the call (the process's high-water mark is reset
through /proc/self/clear_refs before it), and the cosine of the embedding against transformers'
float32 one (the reference). Writes benchmarks/results/cpu-DATE.json and prints a table.

    python benchmarks/cpu.py                        # everything (short + 4K/16K took 52 min on 2 loaded cores)
    python benchmarks/cpu.py --long "" --repeat 5   # short texts only
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import SHAPE_0_6B, lognormal_lengths, token_corpus, versions, write_result

from qwen_embed import Embedder
from qwen_embed.threads import available_cores, use_threads
from qwen_embed.tiny import make_checkpoint

RESULTS = Path(__file__).resolve().parent / "results"


# -- measurement --------------------------------------------------------------------------------------
def _hwm_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def measured(fn: Callable[[], np.ndarray]) -> tuple[float, float, np.ndarray]:
    """(seconds, peak RSS increase in MiB, result) of one call."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current RSS
    before = _rss_kib()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    return dt, (_hwm_kib() - before) / 1024, out


# -- the three implementations --------------------------------------------------------------------------
def padded_batches(seqs: Sequence[Sequence[int]], batch: int) -> list[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Sorted by length (longest first), left padded: (indices, input_ids, attention_mask) per batch."""
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    out = []
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        width = len(seqs[idx[0]])
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i])
            mask[r, width - len(seqs[i]) :] = 1
        out.append((idx, ids, mask))
    return out


def hf_embed(model: Any, seqs: Sequence[Sequence[int]], batch: int = 32) -> np.ndarray:
    """transformers: last token of each left-padded row, L2-normalised."""
    out = np.zeros((len(seqs), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(seqs, batch):
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
            out[idx] = torch.nn.functional.normalize(h.float(), dim=-1).numpy()
    return out


def st_embed(model: Any, seqs: Sequence[Sequence[int]], batch: int = 32) -> np.ndarray:
    """sentence-transformers' modules (Transformer -> lasttoken Pooling -> Normalize) on the same batches."""
    out = np.zeros((len(seqs), model[1].get_embedding_dimension()), dtype=np.float32)
    with torch.inference_mode():
        for idx, ids, mask in padded_batches(seqs, batch):
            out[idx] = model({"input_ids": ids, "attention_mask": mask})["sentence_embedding"].numpy()
    return out


def load_hf(path: Path) -> Any:
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()


def load_st(path: Path) -> Any:
    from sentence_transformers import SentenceTransformer, models

    tr = models.Transformer(str(path), model_kwargs={"dtype": torch.float32, "attn_implementation": "sdpa"})
    pool = models.Pooling(tr.get_embedding_dimension(), pooling_mode="lasttoken")
    return SentenceTransformer(modules=[tr, pool, models.Normalize()], device="cpu").eval()


def cos_min(a: np.ndarray, ref: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    return float((a * ref).sum(1).min())


# -- workloads -------------------------------------------------------------------------------------------
def short(path: Path, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    fp32 = Embedder.from_pretrained(path, device="cpu")
    int8 = Embedder.from_pretrained(path, device="cpu", dtype="int8")
    lengths = lognormal_lengths(args.texts, seed=0)
    seqs = token_corpus(lengths, fp32.tokenizer.eos_id, vocab_hi=vocab, seed=0)
    tokens = sum(lengths)
    hf, st = load_hf(path), None if args.skip_st else load_st(path)
    runs: dict[str, Callable[[], np.ndarray]] = {"transformers": lambda: hf_embed(hf, seqs)}
    if st is not None:
        runs["sentence-transformers"] = lambda: st_embed(st, seqs)
    for b in args.budgets:
        runs[f"qwen-embed fp32, budget {b}"] = lambda b=b: (setattr(fp32.engine, "batch_tokens", b),
                                                           fp32.embed_ids(seqs))[1]
        runs[f"qwen-embed int8, budget {b}"] = lambda b=b: (setattr(int8.engine, "batch_tokens", b),
                                                           int8.embed_ids(seqs))[1]
    warm = seqs[:: max(1, len(seqs) // 8)]
    hf_embed(hf, warm), fp32.embed_ids(warm), int8.embed_ids(warm)  # touch the (memory-mapped) weights
    if st is not None:
        st_embed(st, warm)
    best: dict[str, tuple[float, float, np.ndarray]] = {}
    for r in range(args.repeat):
        for name, fn in runs.items():
            m = measured(fn)
            if name not in best or m[0] < best[name][0]:
                best[name] = m
            print(f"  short, round {r + 1}: {name}: {tokens / m[0]:,.0f} tok/s", flush=True)
    ref = best["transformers"][2]
    res: dict[str, Any] = {"texts": args.texts, "tokens": tokens, "mean_len": tokens / args.texts, "paths": {}}
    for name, (dt, mib, vecs) in best.items():
        res["paths"][name] = {"s": dt, "tok_s": tokens / dt, "peak_rss_increase_mib": mib,
                              "cos_min_vs_transformers_fp32": cos_min(vecs, ref)}
    return res


def long(path: Path, args: argparse.Namespace, vocab: int) -> dict[str, Any]:
    res: dict[str, Any] = {}
    top = max(args.long)
    fp32 = Embedder.from_pretrained(path, device="cpu", max_length=top)
    int8 = Embedder.from_pretrained(path, device="cpu", dtype="int8", max_length=top)
    hf = load_hf(path)
    warm = token_corpus([16], fp32.tokenizer.eos_id, vocab_hi=vocab, seed=1)
    hf_embed(hf, warm), fp32.embed_ids(warm), int8.embed_ids(warm)  # touch the (memory-mapped) weights
    for n in args.long:
        seqs = token_corpus([n], fp32.tokenizer.eos_id, vocab_hi=vocab, seed=n)
        row: dict[str, Any] = {}
        paths: list[tuple[str, Callable[[], np.ndarray]]] = [
            ("transformers", lambda s=seqs: hf_embed(hf, s, 1)), ("qwen-embed fp32", lambda s=seqs: fp32.embed_ids(s)),
            ("qwen-embed int8", lambda s=seqs: int8.embed_ids(s))]
        for name, fn in paths:
            dt, mib, vecs = measured(fn)
            row[name] = {"s": dt, "tok_s": n / dt, "peak_rss_increase_mib": mib, "vecs": vecs}
            print(f"  long {n}: {name}: {n / dt:,.0f} tok/s, +{mib:,.0f} MiB", flush=True)
        ref = row["transformers"]["vecs"]
        for v in row.values():
            v["cos_min_vs_transformers_fp32"] = cos_min(v.pop("vecs"), ref)
        res[str(n)] = row
    return res


def save(payload: dict[str, Any], out: str | None) -> Path:
    if out is None:
        return write_result("cpu", payload, RESULTS)
    Path(out).write_text(json.dumps(payload, indent=2))
    return Path(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4, help="decoder layers of the 0.6B shape (default 4)")
    ap.add_argument("--texts", type=int, default=96, help="short inputs (default 96)")
    ap.add_argument("--budgets", default="2048,8192", help="qwen-embed token budgets to sweep")
    ap.add_argument("--long", default="4096,16384,32768", help="long input lengths ('' for none)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds on short texts; best kept")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    ap.add_argument("--skip-st", action="store_true", help="leave out sentence-transformers")
    ap.add_argument("--out", default=None, help="result JSON (default: benchmarks/results/cpu-DATE.json)")
    args = ap.parse_args()
    args.budgets = [int(b) for b in args.budgets.split(",") if b]
    args.long = [int(n) for n in args.long.split(",") if n]
    threads = use_threads(args.threads)
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="qwen-embed-cpu-bench-") as tmp:
        shape = {**SHAPE_0_6B, "num_hidden_layers": args.layers, "max_position_embeddings": 32768}
        path = make_checkpoint(Path(tmp) / "emb", "embedding", **shape)  # type: ignore[arg-type]
        vocab = min(151000, Embedder.from_pretrained(path, device="cpu").config.vocab_size)
        payload: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": platform.processor() or "x86_64",
            "cores_available": available_cores(), "threads": threads, "layers": args.layers,
            "load_average_at_start": load, "versions": versions(),
        }
        payload["short"] = short(path, args, vocab)
        save(payload, args.out)  # partial results survive an interrupted long run
        if args.long:
            payload["long"] = long(path, args, vocab)
    payload["load_average_at_end"] = os.getloadavg()
    out = save(payload, args.out)
    print(f"\nload average {load[0]:.1f} at start, {payload['load_average_at_end'][0]:.1f} at end; "
          f"{threads} threads; results in {out}")
    s = payload["short"]
    print(f"short: {s['texts']} texts, {s['tokens']} tokens")
    hf_tok_s = s["paths"]["transformers"]["tok_s"]
    for name, r in s["paths"].items():
        print(f"  {name:<32} {r['tok_s']:>8,.0f} tok/s  {r['tok_s'] / hf_tok_s:5.2f}x  "
              f"+{r['peak_rss_increase_mib']:>6,.0f} MiB  cos {r['cos_min_vs_transformers_fp32']:.6f}")
    for n, row in payload.get("long", {}).items():
        print(f"long {n}:")
        for name, r in row.items():
            print(f"  {name:<32} {r['tok_s']:>8,.0f} tok/s  +{r['peak_rss_increase_mib']:>6,.0f} MiB  "
                  f"cos {r['cos_min_vs_transformers_fp32']:.6f}")


if __name__ == "__main__":
    main()
