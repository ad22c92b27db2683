"""Corpus embedding over 1, 2, ... N devices (a `DevicePool`, one worker process each), one corpus, one run.

    PYTHONPATH=src python benchmarks/multidevice.py --counts 1,2,4 --big 131072 --big-counts 1,4 \
        --eager-counts 1,4 --cli
    PYTHONPATH=src python benchmarks/multidevice.py --quick                     # CPU check (2 CPU workers)

For each device count: the pool's start-up (spawn, import, load, compile and warm-up, every worker at
once, each count with a fresh, empty compilation cache so that no count profits from another's), then
two `encode` calls of the whole corpus on the warm pool. Reported: start-up; the warm call's time and
texts/s and tokens/s (start-up excluded); start-up + one call (start-up included, as one
`encode_on_devices` call pays it); speed-ups against one device, both ways; the corpus size from which
the start-up-included speed-up reaches the goal (1.9x on 2, 3.7x on 4), from the measured start-up and
rates; each worker's phases (to see whether they overlap); and the largest difference of the vectors
from the one-device run. Optionally: a large corpus on the warm pools (--big), uncompiled pools
(--eager-counts), and `qwen-embed embed --devices` itself on all devices (--cli, one-shot workers,
compilation cache warm). With two GPUs or more, last: an `Embedder` on cuda:1 in a process whose current
device is cuda:0, against one on cuda:0 (the CUDA-graph path of short texts).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPE_0_6B, versions, word_texts

from qwen_embed.multidevice import DevicePool
from qwen_embed.tiny import make_checkpoint
from qwen_embed.tokenizer import QwenTokenizer

GOALS = {2: 1.9, 4: 3.7}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=128)


def amortised_at(s1: float, r1: float, sn: float, rn: float, goal: float) -> float | None:
    """Texts n from which (s1 + n / r1) / (sn + n / rn) >= goal (None: never, the warm ratio is below it)."""
    denom = 1 / r1 - goal / rn
    if denom <= 0:
        return None
    return max(0.0, (goal * sn - s1) / denom)


def save(results: dict[str, Any], path: str | None) -> None:
    """Write the results so far (after every stage: a later failure keeps what was measured)."""
    if path:
        Path(path).write_text(json.dumps(results, indent=1))


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"max_abs_diff": float(np.abs(ref - got).max()), "min_cosine": float(cos.min())}


def run_count(path: Path, texts: list[str], devices: list[str], tokens: int, cache_root: Path, *, compile: bool = True,
              calls: int = 2, big: tuple[list[str], int] | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """A pool on `devices` (fresh compilation cache): start-up, `calls` calls of `texts`, then one of `big`."""
    cache = cache_root / f"cache-{len(devices)}-{compile}"  # a fresh compilation cache: every run starts cold
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    with DevicePool(path, devices, compile=compile) as pool:
        times, stats = [], []
        for _ in range(calls):
            t = time.perf_counter()
            vecs = pool.encode(texts)
            times.append(time.perf_counter() - t)
            stats.append(pool.last_stats)
        warm = times[-1]
        res: dict[str, Any] = {
            "devices": devices, "compile": compile, "startup_s": pool.startup_s, "calls_s": times,
            "first_call_s": times[0], "warm_call_s": warm, "texts_per_s": len(texts) / warm,
            "tokens_per_s": tokens / warm, "with_startup_s": pool.startup_s + times[0],
            "workers_startup": pool.worker_startup(), "workers_calls": stats}
        if big is not None:
            t = time.perf_counter()
            pool.encode(big[0])
            took = time.perf_counter() - t
            res["big"] = {"texts": len(big[0]), "tokens": big[1], "s": took, "texts_per_s": len(big[0]) / took,
                          "tokens_per_s": big[1] / took, "workers": pool.last_stats}
    return res, vecs


def cli_run(path: Path, texts: list[str], devices: list[str], tmp: Path) -> tuple[float, np.ndarray]:
    """`qwen-embed embed --devices ...` as a user runs it (its own process, one-shot workers)."""
    import subprocess

    src = tmp / "texts.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    out = tmp / "cli-vectors.npy"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qwen_embed", "embed", str(src), "--model", str(path), "--output", str(out),
                    "--devices", ",".join(devices)], check=True)
    return time.perf_counter() - t, np.load(out)


def second_gpu_check(path: Path) -> dict[str, Any]:
    """An Embedder on cuda:1 in a process whose current device is cuda:0 (short texts: the CUDA-graph path)."""
    from qwen_embed import Embedder

    texts = word_texts(48, 12, seed=7)
    try:
        got = {d: Embedder.from_pretrained(path, device=d, compile=False).encode(texts, progress=False)
               for d in ("cuda:0", "cuda:1")}
    except Exception as e:  # reported, not fatal: the results above are kept
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    return compare(got["cuda:0"], got["cuda:1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=None, help="comma-separated, e.g. cuda:0,cuda:1 (default: every GPU)")
    ap.add_argument("--counts", default=None, help="device counts to run, e.g. 1,2,4 (default: 1 and all)")
    ap.add_argument("--texts", type=int, default=32768, help="corpus size (default 32768)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 64 texts, two CPU workers")
    ap.add_argument("--big", type=int, default=0, help="also embed a corpus this large on the warm pools (0: no)")
    ap.add_argument("--big-counts", default=None, help="device counts that embed the big corpus (default: all)")
    ap.add_argument("--eager-counts", default="", help="device counts also run uncompiled: start-up + one call")
    ap.add_argument("--cli", action="store_true", help="last, `qwen-embed embed --devices` on all devices")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    import torch

    if args.devices:
        devices = args.devices.split(",")
    elif args.quick or not torch.cuda.is_available():
        devices = ["cpu", "cpu"]
    else:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    counts = [int(c) for c in args.counts.split(",")] if args.counts else sorted({1, len(devices)})
    big_counts = [int(c) for c in args.big_counts.split(",")] if args.big_counts else counts
    n = 64 if args.quick else args.texts
    tmp = Path(tempfile.mkdtemp(prefix="bench-multidevice-"))
    path = make_checkpoint(tmp / "m", "embedding", dtype="float32" if args.quick else "bfloat16",
                           **(TINY if args.quick else SHAPE_0_6B))  # type: ignore[arg-type]
    tok = QwenTokenizer.from_dir(path)
    texts = word_texts(n, 150, seed=5)
    tokens = sum(len(x) + 1 for x in tok.encode(texts))
    big = None
    if args.big:
        big_texts = word_texts(args.big, 150, seed=6)
        big = (big_texts, sum(len(x) + 1 for x in tok.encode(big_texts)))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"gpu": gpu, "gpus_visible": torch.cuda.device_count(), "texts": n, "tokens": tokens,
                               "shape": "tiny" if args.quick else "0.6B", "versions": versions(), "counts": {},
                               "eager": {}}
    ref: np.ndarray | None = None
    base: dict[str, Any] = {}
    for c in counts:
        res, vecs = run_count(path, texts, devices[:c], tokens, tmp, big=big if c in big_counts else None)
        if ref is None:
            ref, base = vecs, res
        res.update(compare(ref, vecs))
        res["speedup_warm"] = base["warm_call_s"] / res["warm_call_s"]
        res["speedup_with_startup"] = base["with_startup_s"] / res["with_startup_s"]
        if "big" in res and "big" in base:
            res["big"]["speedup"] = base["big"]["s"] / res["big"]["s"]
        goal = GOALS.get(c, 0.925 * c)
        res["goal"] = goal
        res["texts_for_goal_with_startup"] = amortised_at(base["startup_s"], base["texts_per_s"], res["startup_s"],
                                                          res["texts_per_s"], goal) if c > 1 else None
        results["counts"][str(c)] = res
        save(results, args.json)
        print(f"{c} device(s): start-up {res['startup_s']:.1f} s, warm call {res['warm_call_s']:.2f} s "
              f"({res['tokens_per_s']:,.0f} tok/s), with start-up {res['with_startup_s']:.1f} s; "
              f"speed-up warm {res['speedup_warm']:.2f}x, with start-up {res['speedup_with_startup']:.2f}x"
              + (f"; big {res['big']['s']:.1f} s" if "big" in res else ""), flush=True)
    for c in [int(x) for x in args.eager_counts.split(",") if x]:
        res, vecs = run_count(path, texts, devices[:c], tokens, tmp, compile=False, calls=1)
        res.update(compare(ref, vecs) if ref is not None else {})
        results["eager"][str(c)] = res
        save(results, args.json)
        print(f"{c} device(s), uncompiled: start-up {res['startup_s']:.1f} s, call {res['first_call_s']:.2f} s, "
              f"with start-up {res['with_startup_s']:.1f} s", flush=True)
    if args.cli:
        took, vecs = cli_run(path, texts, devices[: max(counts)], tmp)
        results["cli"] = {"devices": devices[: max(counts)], "s": took,
                          **(compare(ref, vecs) if ref is not None else {})}
        print(f"qwen-embed embed --devices ({max(counts)}): {took:.1f} s", flush=True)
    if torch.cuda.device_count() >= 2 and not args.quick:
        results["second_gpu_in_one_process"] = second_gpu_check(path)
        print("one process, Embedder on cuda:1 vs cuda:0:", results["second_gpu_in_one_process"], flush=True)
    save(results, args.json)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
