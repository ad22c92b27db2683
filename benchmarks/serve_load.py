"""Throughput through HTTP at concurrency 64 against direct engine calls on the same inputs.

Direct: `Embedder.encode(all texts)` in this process (tokenization + token-budget batches, the best the
library does). HTTP: `qwen-embed serve` in a subprocess, `--concurrency` clients each sending requests
of `--texts-per-request` texts to /v1/embeddings (base64, as the openai client asks) one after another
until all texts are embedded. Prints texts/s and tokens/s of both and the ratio HTTP / direct (goal on
the GPU: >= 0.8). A few served vectors are checked against the direct ones.

Workload: texts of random words whose token counts follow a lognormal around 160 (16..1024), as in
DESIGN.md. Model: `--model PATH`, or a random-weight checkpoint made on the spot: `--shape tiny`
(hidden 64, 2 layers: a CPU check of the plumbing) or `--shape 0.6b` (the Qwen3-Embedding-0.6B shape).

    python benchmarks/serve_load.py --quick                      # CPU, tiny model, a few seconds
    python benchmarks/serve_load.py --shape 0.6b --device cuda   # GPU, 8192 texts
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from qwen_embed import Embedder
from qwen_embed.tiny import make_checkpoint

SHAPES = {
    "tiny": {},
    "0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                 intermediate_size=3072, dtype="bfloat16"),
}
WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he",
    "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she",
    "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so", "no", "will", "more", "can",
    "protein", "cell", "gravity", "river", "search", "engine", "language", "vaccine", "planet", "heart", "water",
]


def make_texts(n: int, rng: np.random.Generator, max_tokens: int) -> list[str]:
    """Texts whose token counts follow lognormal(mean ~160), clipped to 16..max_tokens."""
    lengths = np.clip(rng.lognormal(np.log(160), 0.6, n), 16, max_tokens - 1).astype(int)
    texts = []
    for i, target in enumerate(lengths):
        words = rng.choice(WORDS, size=int(target))  # ~1 token per word with the real tokenizer
        texts.append(f"{i} " + " ".join(words))
    return texts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: str, args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", model, "--port", str(port),
           "--max-length", str(args.max_length), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning",
           "--max-queue", str(max(512, args.concurrency * 2))]
    for flag, value in (("--device", args.device), ("--dtype", args.dtype), ("--max-batch-tokens", args.batch_tokens)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready in 600 s")


def batch_stats(metrics: str) -> tuple[float, float]:
    """(batches run, requests in them) from the server's /metrics."""
    lines = [ln for ln in metrics.splitlines() if ln.startswith("qwen_embed_batch_requests_")]
    count = next((float(ln.split()[-1]) for ln in lines if ln.startswith("qwen_embed_batch_requests_count")), 0.0)
    total = next((float(ln.split()[-1]) for ln in lines if ln.startswith("qwen_embed_batch_requests_sum")), 0.0)
    return count, total


async def load(url: str, chunks: list[list[str]], concurrency: int) -> tuple[float, list[np.ndarray]]:
    """All chunks through `concurrency` clients; returns seconds and the vectors in chunk order."""
    out: list[np.ndarray] = [np.empty(0)] * len(chunks)
    todo: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(chunks)):
        todo.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def worker() -> None:
            while not todo.empty():
                i = todo.get_nowait()
                r = await client.post("/v1/embeddings", json={"input": chunks[i], "encoding_format": "base64"})
                r.raise_for_status()
                out[i] = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                                   for d in r.json()["data"]])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: make one of --shape)")
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="shape of the made checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--texts", type=int, default=8192, help="texts in the workload (default 8192)")
    p.add_argument("--texts-per-request", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass, both paths")
    p.add_argument("--quick", action="store_true", help="512 texts (a CPU check)")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds of each path; the best counts")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    n = 512 if args.quick else args.texts

    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        model = args.model
        if model is None:
            t = time.perf_counter()
            model = str(make_checkpoint(Path(tmp) / f"emb-{args.shape}", "embedding", **SHAPES[args.shape]))
            print(f"made a random-weight {args.shape} checkpoint in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        emb = Embedder.from_pretrained(model, device=args.device, dtype=args.dtype, max_length=args.max_length,
                                       batch_tokens=args.batch_tokens)
        texts = make_texts(n, np.random.default_rng(args.seed), args.max_length)
        tokens = sum(len(s) for s in emb.tokenize(texts))
        warm = texts[: min(n, 1024)]
        emb.encode(warm, progress=False)  # warm-up (allocator, kernels), as the server's below
        device = str(emb.device)
        port = free_port()
        server = start_server(model, args, port)
        url = f"http://127.0.0.1:{port}"
        k = args.texts_per_request
        chunks = [texts[i : i + k] for i in range(0, n, k)]
        direct_s = http_s = float("inf")
        count = total = 0.0
        try:
            asyncio.run(load(url, chunks[: len(warm) // k], args.concurrency))  # warm-up
            for _ in range(args.repeat):  # alternate, keep the best of each (shared machines are noisy)
                start = time.perf_counter()
                direct = emb.encode(texts, progress=False)
                direct_s = min(direct_s, time.perf_counter() - start)
                before = batch_stats(httpx.get(url + "/metrics").text)
                seconds, vecs = asyncio.run(load(url, chunks, args.concurrency))
                after = batch_stats(httpx.get(url + "/metrics").text)
                if seconds < http_s:
                    http_s, count, total = seconds, after[0] - before[0], after[1] - before[1]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        served = np.concatenate(vecs)
        diff = float(np.abs(served - direct).max())

    print(f"model {model if args.model else args.shape + ' (random weights)'} on {device}; {n} texts, "
          f"{tokens} tokens (mean {tokens / n:.0f}); {os.cpu_count()} cpu cores")
    print(f"direct Embedder.encode : {n / direct_s:9.1f} texts/s {tokens / direct_s:11.0f} tokens/s ({direct_s:.2f}s)")
    print(f"HTTP, concurrency {args.concurrency:<4d}: {n / http_s:9.1f} texts/s {tokens / http_s:11.0f} tokens/s "
          f"({http_s:.2f}s, {k} texts/request, {count:.0f} batches of {total / max(count, 1):.1f} requests on average)")
    print(f"ratio HTTP / direct    : {direct_s / http_s:.2f}")
    print(f"max |served - direct|  : {diff:.2e}")


if __name__ == "__main__":
    main()
