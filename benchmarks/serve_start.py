"""Start and stop of `qwen-embed serve`: seconds from launch to /health 200, and from SIGTERM (idle) to exit.

Side by side on the same checkpoint, each layout started `--runs` times in a row as a process of its own:
`serve` (one process, the model in it), `serve --devices cpu` (a model process) and `serve --workers 2
--devices cpu` (a supervisor, two HTTP workers, a model process). Also reported: whether the `--workers`
supervisor has torch mapped (it should not: it reads configs and tokenizers only). Prints medians per
layout; `--json` writes every run.

    PYTHONPATH=src python benchmarks/serve_start.py --runs 5 --json serve_start.json   # tiny model, CPU
    PYTHONPATH=src python benchmarks/serve_start.py --model Qwen/Qwen3-Embedding-0.6B
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

LAYOUTS = {"in-process": [], "model-process": ["--devices", "cpu"], "workers-2": ["--workers", "2", "--devices", "cpu"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(model: str, flags: list[str], log: Path) -> dict[str, Any]:
    """Launch, wait for /health 200, look at the supervisor's mapped libraries, SIGTERM, wait for the exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", model, "--max-length", "512",
           "--port", str(port), "--log-level", "warning", *flags]
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    ready = time.monotonic() - t0
    torch_mapped = "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text()
    t1 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(60)
    return {"ready_s": ready, "stop_s": time.monotonic() - t1, "exit": code, "torch_in_main_process": torch_mapped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="embedding checkpoint (default: a tiny random-weight one, small tokenizer)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--json", type=Path, help="write every run here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from qwen_embed.tiny import make_checkpoint

            model = str(make_checkpoint(Path(tmp) / "tiny", "embedding", tokenizer="small"))
        runs = {name: [one_run(model, flags, Path(tmp) / f"{name}.log") for _ in range(args.runs)]
                for name, flags in LAYOUTS.items()}
    print(f"{'layout':<15} {'ready (s)':>10} {'stop (s)':>10}  torch in the main process")
    for name, rs in runs.items():
        print(f"{name:<15} {statistics.median(r['ready_s'] for r in rs):>10.2f} "
              f"{statistics.median(r['stop_s'] for r in rs):>10.2f}  {sorted({r['torch_in_main_process'] for r in rs})}"
              f"  exits {sorted({r['exit'] for r in rs})}")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model or "tiny", "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
