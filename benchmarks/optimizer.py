"""The training loop's AdamW on the CPU: torch's three forms of the same update, side by side.

`Trainer` uses the fused kernel on CUDA and on the CPU (train/loop.py); torch's default on the CPU is the
per-parameter loop, and the loop used the multi-tensor (foreach) form before. Each form runs in a fresh
child process (so that its peak memory is its own) on the same parameters: the 0.6B model's vocabulary rows
(151,936 x 1024) and `--mlp` MLP matrices (1024 x 3072), gradients of 1e-3, `--steps` timed steps after one
untimed step. Printed: ms per step, peak RSS, the ratio to the fused form, and the largest difference of the
weights to the per-parameter loop's (the reference update). `--json` writes the figures.

    PYTHONPATH=src python benchmarks/optimizer.py --threads 2 --json optimizer.json
    PYTHONPATH=src python benchmarks/optimizer.py --quick      # tiny shapes, seconds
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def child(form: str, vocab: int, hidden: int, mlp: int, steps: int, threads: int, out: Path) -> None:
    """One form: time `steps` steps, record the peak RSS, save the final weights of the first matrix."""
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(vocab, hidden, generator=gen) * 0.02)]
    params += [torch.nn.Parameter(torch.randn(hidden, 3 * hidden, generator=gen) * 0.02) for _ in range(mlp)]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, **FORMS[form])  # type: ignore[arg-type]
    opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    ms = (time.perf_counter() - start) / steps * 1000
    torch.save(params[0].detach(), out / f"{form}.pt")
    row = {"form": form, "ms_per_step": ms, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           "params_m": sum(p.numel() for p in params) / 1e6}
    (out / f"{form}.json").write_text(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151936, help="rows of the embedding matrix")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--mlp", type=int, default=8, help="number of hidden x 3 hidden matrices")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="vocab 4096, hidden 64: a check that runs in seconds")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.vocab, a.hidden = 4096, 64
    if a.child:
        child(a.child, a.vocab, a.hidden, a.mlp, a.steps, a.threads, a.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        rows: dict[str, dict[str, Any]] = {}
        for form in FORMS:
            subprocess.run([sys.executable, __file__, "--child", form, "--out", tmp, "--vocab", str(a.vocab),
                            "--hidden", str(a.hidden), "--mlp", str(a.mlp), "--steps", str(a.steps),
                            "--threads", str(a.threads)], check=True)
            rows[form] = json.loads((Path(tmp) / f"{form}.json").read_text())
        ref = torch.load(Path(tmp) / "loop.pt")
        for form, row in rows.items():
            row["max_abs_vs_loop"] = float((torch.load(Path(tmp) / f"{form}.pt") - ref).abs().max())
            row["time_vs_fused"] = row["ms_per_step"] / rows["fused"]["ms_per_step"]
    print(f"AdamW on the CPU, {rows['fused']['params_m']:.1f}M parameters, {a.threads} threads, torch "
          f"{torch.__version__}")
    print(f"{'form':8} {'ms/step':>9} {'x fused':>8} {'peak RSS GB':>12} {'max abs vs loop':>16}")
    for form, row in rows.items():
        print(f"{form:8} {row['ms_per_step']:9.1f} {row['time_vs_fused']:8.2f} {row['peak_rss_gb']:12.2f} "
              f"{row['max_abs_vs_loop']:16.2e}")
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
