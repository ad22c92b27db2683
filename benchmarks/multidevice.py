"""Corpus embedding over 1, 2, ... N devices (a `DevicePool`, one worker process each), one corpus, one run.

    PYTHONPATH=src python benchmarks/multidevice.py --devices cuda:0,cuda:1,cuda:2,cuda:3 --counts 1,2,4
    PYTHONPATH=src python benchmarks/multidevice.py --quick                     # CPU check (2 CPU workers)

For each device count: the pool's start-up (spawn, import, load, compile and warm-up, every worker at
once, each count with a fresh, empty compilation cache so that no count profits from another's), then
two `encode` calls of the whole corpus on the warm pool. Reported: start-up; the warm call's time and
texts/s and tokens/s (start-up excluded); start-up + one call (start-up included, as one
`encode_on_devices` call pays it); speed-ups against one device, both ways; the corpus size from which
the start-up-included speed-up reaches the goal (1.9x on 2, 3.7x on 4), from the measured start-up and
rates; each worker's phases (to see whether they overlap); and the largest difference of the vectors
from the one-device run. Last, one plain `encode_on_devices` call on all devices with the compilation
cache warm (the one-shot path of `qwen-embed embed --devices`).
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

from qwen_embed.multidevice import DevicePool, encode_on_devices
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


def compare(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return {"max_abs_diff": float(np.abs(ref - got).max()), "min_cosine": float(cos.min())}


def run_count(path: Path, texts: list[str], devices: list[str], tokens: int, cache_root: Path) -> tuple[dict[str, Any],
                                                                                                       np.ndarray]:
    cache = cache_root / f"cache-{len(devices)}"  # a fresh compilation cache: every count starts cold
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    with DevicePool(path, devices) as pool:
        calls, stats = [], []
        for _ in range(2):
            t = time.perf_counter()
            vecs = pool.encode(texts)
            calls.append(time.perf_counter() - t)
            stats.append(pool.last_stats)
        res = {"devices": devices, "startup_s": pool.startup_s, "first_call_s": calls[0], "warm_call_s": calls[1],
               "texts_per_s": len(texts) / calls[1], "tokens_per_s": tokens / calls[1],
               "with_startup_s": pool.startup_s + calls[0], "workers_startup": pool.worker_startup(),
               "workers_calls": stats}
    return res, vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=None, help="comma-separated, e.g. cuda:0,cuda:1 (default: every GPU)")
    ap.add_argument("--counts", default=None, help="device counts to run, e.g. 1,2,4 (default: 1 and all)")
    ap.add_argument("--texts", type=int, default=32768, help="corpus size (default 32768)")
    ap.add_argument("--quick", action="store_true", help="tiny model, 64 texts, two CPU workers")
    ap.add_argument("--no-oneshot", action="store_true", help="skip the final encode_on_devices call")
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
    n = 64 if args.quick else args.texts
    tmp = Path(tempfile.mkdtemp(prefix="bench-multidevice-"))
    path = make_checkpoint(tmp / "m", "embedding", dtype="float32" if args.quick else "bfloat16",
                           **(TINY if args.quick else SHAPE_0_6B))  # type: ignore[arg-type]
    texts = word_texts(n, 150, seed=5)
    tokens = sum(len(x) + 1 for x in QwenTokenizer.from_dir(path).encode(texts))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    results: dict[str, Any] = {"gpu": gpu, "gpus_visible": torch.cuda.device_count(), "texts": n, "tokens": tokens,
                               "shape": "tiny" if args.quick else "0.6B", "versions": versions(), "counts": {}}
    ref = None
    for c in counts:
        res, vecs = run_count(path, texts, devices[:c], tokens, tmp)
        if ref is None:
            ref, base = vecs, res
        res.update(compare(ref, vecs))
        res["speedup_warm"] = base["warm_call_s"] / res["warm_call_s"]
        res["speedup_with_startup"] = base["with_startup_s"] / res["with_startup_s"]
        goal = GOALS.get(c, 0.925 * c)
        res["goal"] = goal
        res["texts_for_goal_with_startup"] = amortised_at(base["startup_s"], base["texts_per_s"], res["startup_s"],
                                                          res["texts_per_s"], goal) if c > 1 else None
        results["counts"][str(c)] = res
        print(f"{c} device(s): start-up {res['startup_s']:.1f} s, warm call {res['warm_call_s']:.2f} s "
              f"({res['tokens_per_s']:,.0f} tok/s), with start-up {res['with_startup_s']:.1f} s; "
              f"speed-up warm {res['speedup_warm']:.2f}x, with start-up {res['speedup_with_startup']:.2f}x",
              flush=True)
    if not args.no_oneshot:
        t = time.perf_counter()
        vecs = encode_on_devices(path, texts, devices[: max(counts)])
        results["oneshot"] = {"devices": devices[: max(counts)], "s": time.perf_counter() - t,
                              **(compare(ref, vecs) if ref is not None else {})}
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
