"""Start-up of qwen-embed's child processes: forked from the fork server (processes.py) against `spawn`.

For each start method, in one process and on the same checkpoint: a `ModelProcess` (the model process of
`serve --devices`) started, used and closed `--restarts` times in a row (the first start under the fork
server includes starting the server itself), then a `DevicePool` over `--devices` started and used once.
Each child's rows are checked against an `Embedder` in this process on the same device (max abs
difference), so the run is also the correctness check of the fork-server children on CUDA. Prints a table
and the ratios spawn / forkserver; `--json` writes the figures.

    PYTHONPATH=src python benchmarks/child_start.py --devices cuda:0,cuda:1 --json out.json   # GPUs
    PYTHONPATH=src python benchmarks/child_start.py --quick                                    # CPU, tiny
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import qwen_embed.multidevice as multidevice
import qwen_embed.server.model_process as model_process
from qwen_embed import Embedder
from qwen_embed.processes import child_context
from qwen_embed.tiny import make_checkpoint

TEXTS = [f"passage {i}: " + "the quick brown fox jumps over the lazy dog " * (1 + i % 7) for i in range(64)]


def use_method(method: str) -> None:
    """Make both starters use `method` ('forkserver': the library's own choice; 'spawn': the one before)."""
    def ctx() -> Any:
        return child_context() if method == "forkserver" else mp.get_context("spawn")

    model_process.child_context = ctx  # type: ignore[assignment]
    multidevice.child_context = ctx  # type: ignore[assignment]


def run_method(method: str, path: Path, device: str, devices: list[str], restarts: int,
               want: np.ndarray) -> dict[str, Any]:
    use_method(method)
    emb = Embedder.from_pretrained(path, device=device)
    seqs = emb.tokenize(TEXTS)
    starts, diffs = [], []
    for _ in range(restarts):
        t0 = time.perf_counter()
        proc = model_process.ModelProcess(model_process.ModelSpec("embedding", str(path), device=device))
        starts.append(time.perf_counter() - t0)
        rows = proc(seqs)
        proc.close()
        got = torch.nn.functional.normalize(torch.from_numpy(np.asarray(rows, dtype=np.float32)), dim=-1).numpy()
        diffs.append(float(np.abs(got - want).max()))
    t0 = time.perf_counter()
    with multidevice.DevicePool(path, devices, warmup=False) as pool:
        pool_start = time.perf_counter() - t0
        pool_rows = pool.encode(TEXTS)
        phases = pool_phases(pool)
    return {"model_process_start_s": starts, "model_process_max_abs": max(diffs), "pool_start_s": pool_start,
            "pool_max_abs": float(np.abs(pool_rows - want).max()), "pool_phases": phases}


def pool_phases(pool: Any) -> list[dict[str, Any]]:
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()} for p in pool.worker_startup()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default=None,
                    help="DevicePool devices, comma-separated (default: every GPU, else cpu,cpu)")
    ap.add_argument("--restarts", type=int, default=3, help="ModelProcess starts per method (default 3)")
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.devices:
        devices = args.devices.split(",")
    elif torch.cuda.is_available() and not args.quick:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    else:
        devices = ["cpu", "cpu"]
    device = devices[0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        if args.quick:
            make_checkpoint(path, "embedding")
        else:  # the 0.6B shape, random weights
            make_checkpoint(path, "embedding", hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                            num_key_value_heads=8, head_dim=128, intermediate_size=3072)
        want = Embedder.from_pretrained(path, device=device).encode(TEXTS)
        # forkserver first: its first start pays for the server, as a user's first model process does
        results = {m: run_method(m, path, device, devices, args.restarts, want) for m in ("forkserver", "spawn")}
    f, s = results["forkserver"], results["spawn"]
    print(f"device {device}, pool {','.join(devices)}")
    print("                          forkserver      spawn   spawn/forkserver")
    for i in range(args.restarts):
        a, b = f["model_process_start_s"][i], s["model_process_start_s"][i]
        print(f"ModelProcess start #{i + 1}     {a:8.2f} s  {b:8.2f} s   {b / a:6.2f}x")
    print(f"DevicePool start            {f['pool_start_s']:8.2f} s  {s['pool_start_s']:8.2f} s   "
          f"{s['pool_start_s'] / f['pool_start_s']:6.2f}x")
    print(f"max abs vs in-process: model process {f['model_process_max_abs']:.2e} / {s['model_process_max_abs']:.2e}, "
          f"pool {f['pool_max_abs']:.2e} / {s['pool_max_abs']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "devices": devices, **results}, indent=2))


if __name__ == "__main__":
    main()
