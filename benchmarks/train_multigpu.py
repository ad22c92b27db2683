"""Data-parallel training on 1, 2, ... N GPUs (torchrun, NCCL, gathered negatives, GradCache): equality and scaling.

    PYTHONPATH=src python benchmarks/train_multigpu.py --counts 1,2,4          # GPUs, 0.6B shape
    PYTHONPATH=src python benchmarks/train_multigpu.py --quick                 # CPU check: gloo, 1 and 2 processes

The driver makes one random-weight checkpoint of the Qwen3-Embedding-0.6B shape (real tokenizer when
../shared has it) and the Python standard library pairs, then starts `torchrun --standalone
--nproc-per-node N` of this script for each N, on the same data with the same global batch
(strong scaling: N GPUs share the rows of one batch). Each run takes --warmup + --steps optimiser
steps (AdamW, bf16 autocast, GradCache chunks of --chunk-tokens, in-batch negatives gathered across
all ranks). Reported per N: the loss and the gradient norm of every step (the N-GPU values must equal
the one-GPU values within bf16 rounding: the batches split into other chunks), tokens/s over the timed
steps (all ranks' real tokens), the time per step spent in the gradient all-reduce and in loading the
batch, and the speed-up over one GPU. Last, `qwen-embed train embed` itself under torchrun on all GPUs
for a few steps (checkpoint, final model), to show the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHAPE_0_6B, versions

GOALS = {2: 1.8, 4: 3.4}


def train_config(args: argparse.Namespace, ckpt: str, data: str, out: str, device: str) -> dict[str, Any]:
    return {
        "model": {"path": ckpt, "device": device, "precision": "auto"},
        "data": {"train_files": [data], "default_instruction": None, "query_max_length": 64,
                 "doc_max_length": args.doc_len, "num_negatives": 0},
        "optim": {"lr": 1e-5, "warmup_steps": 1},
        "train": {"output_dir": out, "batch_size": args.batch, "grad_cache": True, "chunk_tokens": args.chunk_tokens,
                  "max_steps": 1000, "progress": False, "log_every": 1},
    }


# -- one rank (under torchrun) ---------------------------------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    from qwen_embed.train import distributed as D
    from qwen_embed.train.config import TrainConfig
    from qwen_embed.train.loop import Trainer

    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    info = D.init(device)
    cuda = info.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(info.device)

    reduce_s = [0.0]
    plain_average = D.average_gradients

    def timed_average(*a: Any, **k: Any) -> None:  # the all-reduce's share of a step
        sync()
        t = time.perf_counter()
        plain_average(*a, **k)
        sync()
        reduce_s[0] += time.perf_counter() - t

    D.average_gradients = timed_average  # type: ignore[assignment]
    try:
        cfg = TrainConfig.from_dict(train_config(args, args.ckpt, args.data, str(Path(args.out).parent / "run"),
                                                 device))
        trainer = Trainer(cfg, info)
        startup = time.perf_counter() - t0
        steps: list[dict[str, Any]] = []
        batches = trainer.batches()
        for i in range(args.warmup + args.steps):
            sync()
            t = time.perf_counter()
            batch = next(batches)
            t_data = time.perf_counter() - t
            reduce_s[0] = 0.0
            D.barrier(info)
            sync()
            t = time.perf_counter()
            stats = trainer.train_step(batch)
            sync()
            step_s = time.perf_counter() - t
            tokens = D.average_scalar(float(batch.num_tokens), info) * info.world_size
            steps.append({"step": i + 1, "loss": stats["loss"], "grad_norm": stats["grad_norm"], "step_s": step_s,
                          "data_s": t_data, "allreduce_s": reduce_s[0], "tokens": tokens, "timed": i >= args.warmup})
        timed = [s for s in steps if s["timed"]]
        peak = torch.cuda.max_memory_allocated(info.device) / 2**30 if cuda else None
        if info.is_main:
            Path(args.out).write_text(json.dumps({
                "world_size": info.world_size, "startup_s": startup, "steps": steps,
                "tokens_per_s": sum(s["tokens"] for s in timed) / sum(s["step_s"] for s in timed),
                "step_s_mean": sum(s["step_s"] for s in timed) / len(timed),
                "allreduce_s_mean": sum(s["allreduce_s"] for s in timed) / len(timed),
                "data_s_mean": sum(s["data_s"] for s in timed) / len(timed), "peak_gib_rank0": peak}, indent=1))
        D.barrier(info)
    finally:
        D.shutdown(info)


# -- the driver ------------------------------------------------------------------------------------------------
def torchrun(n: int, script_args: list[str], log: Path, timeout: float, result: Path | None = None) -> int:
    """Run torchrun; a failure raises, unless `result` was written (a crash at exit is reported, not fatal)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", *script_args]
    with log.open("w") as f:
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if done.returncode and (result is None or not result.is_file()):
        sys.stdout.write(log.read_text()[-4000:])
        raise SystemExit(f"torchrun with {n} processes failed (exit {done.returncode}); log above")
    return done.returncode


def compare_steps(ref: list[dict[str, Any]], got: list[dict[str, Any]], k: int) -> dict[str, float]:
    rel = lambda a, b: abs(a - b) / max(abs(b), 1e-30)  # noqa: E731
    return {"loss_max_rel_diff": max(rel(g["loss"], r["loss"]) for r, g in zip(ref[:k], got[:k], strict=True)),
            "grad_norm_max_rel_diff": max(rel(g["grad_norm"], r["grad_norm"]) for r, g in zip(ref[:k], got[:k],
                                                                                            strict=True))}


def cli_check(args: argparse.Namespace, ckpt: str, data: str, tmp: Path, n: int) -> dict[str, Any]:
    """`qwen-embed train embed` under torchrun on n processes, 3 steps, checkpoint at the end."""
    cfg = train_config(args, ckpt, data, str(tmp / "cli-run"), "cpu" if args.quick else "cuda")
    cfg["train"].update(max_steps=3, save_every=3)
    path = tmp / "cli.json"
    path.write_text(json.dumps(cfg))
    t = time.perf_counter()
    torchrun(n, ["-m", "qwen_embed", "train", "embed", "--config", str(path)], tmp / "cli.log", args.timeout)
    run = tmp / "cli-run"
    log = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    return {"processes": n, "s": time.perf_counter() - t, "steps_logged": len(log),
            "final_model": (run / "model" / "model.safetensors").is_file(),
            "checkpoint": (run / "checkpoints" / "step-00000003" / "state.pt").is_file(),
            "last_loss": log[-1].get("loss"), "tokens_per_s_last": log[-1].get("tokens_per_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default=None, help="process counts, e.g. 1,2,4 (default: 1 and every GPU)")
    ap.add_argument("--batch", type=int, default=None, help="global batch in pairs (default 1024; quick 8)")
    ap.add_argument("--chunk-tokens", type=int, default=None, help="GradCache chunk (default 16384; quick 256)")
    ap.add_argument("--doc-len", type=int, default=512, help="document max tokens (default 512)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 4; quick 1)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    ap.add_argument("--compare-steps", type=int, default=3, help="steps whose loss and grad norm are compared")
    ap.add_argument("--quick", action="store_true", help="tiny model on CPU (gloo)")
    ap.add_argument("--no-cli", action="store_true", help="skip the `qwen-embed train embed` run")
    ap.add_argument("--timeout", type=float, default=400, help="seconds allowed to one torchrun")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.batch = args.batch or (8 if args.quick else 1024)
    args.chunk_tokens = args.chunk_tokens or (256 if args.quick else 16384)
    args.steps = args.steps or (1 if args.quick else 4)
    if args.quick:
        args.doc_len = min(args.doc_len, 64)
    if args.worker:
        return worker(args)

    import torch

    from qwen_embed.tiny import make_checkpoint
    from qwen_embed.train.stdlib_pairs import write_pairs

    gpus = torch.cuda.device_count() if not args.quick else 0
    counts = [int(c) for c in args.counts.split(",")] if args.counts else sorted({1, max(gpus, 2 if args.quick else 1)})
    tmp = Path(tempfile.mkdtemp(prefix="bench-train-multigpu-"))
    ckpt = make_checkpoint(tmp / "model", "embedding", tokenizer="small" if args.quick else "auto",
                           dtype="float32" if args.quick else "bfloat16", **({} if args.quick else SHAPE_0_6B))
    data, _, rows, _ = write_pairs(tmp / "data", held_out=0.0)
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0) if gpus else "cpu", "gpus_visible": gpus,
                               "shape": "tiny" if args.quick else "0.6B", "batch": args.batch,
                               "chunk_tokens": args.chunk_tokens, "doc_len": args.doc_len, "rows": rows,
                               "versions": versions(), "counts": {}}
    common = ["--ckpt", str(ckpt), "--data", str(data), "--batch", str(args.batch), "--chunk-tokens",
              str(args.chunk_tokens), "--doc-len", str(args.doc_len), "--steps", str(args.steps), "--warmup",
              str(args.warmup)] + (["--quick"] if args.quick else [])
    base: dict[str, Any] | None = None
    for n in counts:
        out = tmp / f"n{n}" / "result.json"
        out.parent.mkdir(parents=True)
        t = time.perf_counter()
        code = torchrun(n, [__file__, "--worker", "--out", str(out), *common], tmp / f"n{n}.log", args.timeout, out)
        res = json.loads(out.read_text())
        res["exit_code"] = code
        res["wall_s"] = time.perf_counter() - t
        base = base or res
        res["speedup"] = res["tokens_per_s"] / base["tokens_per_s"]
        res["goal"] = GOALS.get(n, 0.85 * n)
        res.update(compare_steps(base["steps"], res["steps"], args.compare_steps))
        results["counts"][str(n)] = res
        print(f"{n} process(es): {res['tokens_per_s']:,.0f} tok/s ({res['speedup']:.2f}x), "
              f"step {res['step_s_mean']:.3f} s (all-reduce {res['allreduce_s_mean']:.3f} s, "
              f"data {res['data_s_mean']:.3f} s); first steps vs 1: loss rel {res['loss_max_rel_diff']:.1e}, "
              f"grad norm rel {res['grad_norm_max_rel_diff']:.1e}", flush=True)
    if not args.no_cli:
        results["cli"] = cli_check(args, str(ckpt), str(data), tmp, max(counts))
        print("cli:", results["cli"], flush=True)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return None


if __name__ == "__main__":
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # keep NVLink multicast off (the lent machines' rule)
    main()
