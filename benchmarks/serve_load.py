"""Throughput through HTTP at concurrency 64 against direct engine calls on the same inputs.

Direct: `Embedder.encode(all texts)` in this process (tokenization + token-budget batches, the best the
library does). HTTP: `qwen-embed serve` in a subprocess, `--concurrency` clients each sending requests
of `--texts-per-request` texts to /v1/embeddings (base64, as the openai client asks) one after another
until all texts are embedded, spread over `--client-processes` load-generating processes (one Python client
process cannot send small requests fast enough to load a GPU server). Runs, one after another (`--servers`):

- `in-process`: `serve --device` (one process, the model in it: `--workers 1`);
- `workers`: `serve --workers N --devices D` (issue 16: N HTTP worker processes, one model process per
  device batching every worker's requests);
- `model-processes` (not by default): `serve --devices D`, one HTTP process in front of model processes;
- `infinity`: Infinity (`infinity_emb v2`) on the same folder, device and load, when it can be imported
  (with `--infinity-site`, default build/infinity_site, put first on its PYTHONPATH, or run by
  `--infinity-python`; skipped with a note otherwise),

each at every `--texts-per-request` (8 and 32), plus the median latency of a one-query request. Prints
a table of the ratios to direct and (with `--out`) writes one JSON: texts/s and tokens/s of each, the
ratio to direct (goals on the GPU: >= 0.8 at 8, >= 0.9 at 32, p50 <= 5 ms), and the max difference of
served vectors from direct ones (Infinity pools as its own config says, so its vectors may differ).

Workload: texts of random words whose token counts follow a lognormal around 160 (16..1024), as in
DESIGN.md. Model: `--model PATH`, or a random-weight checkpoint made on the spot: `--shape tiny`
(hidden 64, 2 layers: a CPU check of the plumbing) or `--shape 0.6b` (the Qwen3-Embedding-0.6B shape).

    python benchmarks/serve_load.py --quick                      # CPU, tiny model, a few minutes
    python benchmarks/serve_load.py --shape 0.6b --device cuda --workers 4 --out serve_load.json   # GPU

Infinity on a machine without network (its wheels carried in build/infinity_wheels, see BENCHMARKS.md):
    pip install --no-index --no-deps --target build/infinity_site build/infinity_wheels/*.whl
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


def wait_ready(proc: subprocess.Popen[bytes], url: str, what: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{what} did not become ready in 600 s")


def start_server(model: str, args: argparse.Namespace, port: int, devices: str | None,
                 workers: int = 1) -> subprocess.Popen[bytes]:
    """`qwen-embed serve` in a subprocess: the model in process (devices None), or in model processes
    (one per device) behind `workers` HTTP processes."""
    cmd = [sys.executable, "-m", "qwen_embed", "serve", "--embedding-model", model, "--port", str(port),
           "--max-length", str(args.max_length), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning",
           "--max-queue", str(max(512, args.concurrency * 2)), "--workers", str(workers)]
    device = None if devices is not None else args.device
    for flag, value in (("--device", device), ("--devices", devices), ("--dtype", args.dtype),
                        ("--max-batch-tokens", args.batch_tokens)):
        if value is not None:
            cmd += [flag, str(value)]
    proc = subprocess.Popen(cmd)
    wait_ready(proc, f"http://127.0.0.1:{port}/health", "server")
    return proc


def infinity_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of the Infinity process: its own site folder first on the path, no telemetry."""
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"}
    if args.infinity_site is not None and args.infinity_site.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(args.infinity_site.resolve()), env.get("PYTHONPATH")) if p)
    return env


def start_infinity(model: str, args: argparse.Namespace, port: int, device: str) -> subprocess.Popen[bytes] | str:
    """Infinity (`infinity_emb v2`) on the same folder and device; the reason when it cannot start."""
    env = infinity_env(args)
    probe = subprocess.run([args.infinity_python, "-c", "import infinity_emb"], env=env, capture_output=True, text=True)
    if probe.returncode != 0:
        return "infinity_emb is not importable: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    cuda = device.startswith("cuda")
    cmd = [args.infinity_python, "-m", "infinity_emb.cli", "v2", "--model-id", model, "--port", str(port),
           "--batch-size", str(args.infinity_batch_size), "--engine", "torch", "--device", "cuda" if cuda else "cpu",
           "--dtype", "bfloat16" if cuda else "float32", "--no-bettertransformer", "--no-model-warmup",
           "--url-prefix", "", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}/health", "infinity")
    return proc


def batch_stats(metrics: str) -> tuple[float, float]:
    """(batches run, requests in them) from the server's /metrics."""
    lines = [ln for ln in metrics.splitlines() if ln.startswith("qwen_embed_batch_requests_")]
    count = next((float(ln.split()[-1]) for ln in lines if ln.startswith("qwen_embed_batch_requests_count")), 0.0)
    total = next((float(ln.split()[-1]) for ln in lines if ln.startswith("qwen_embed_batch_requests_sum")), 0.0)
    return count, total


async def load(url: str, chunks: list[list[str]], concurrency: int,
               route: str = "/v1/embeddings") -> tuple[float, list[np.ndarray]]:
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
                r = await client.post(route, json={"input": chunks[i], "encoding_format": "base64"})
                r.raise_for_status()
                out[i] = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4")
                                   for d in r.json()["data"]])

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, out


def _client_process(conn: Any) -> None:
    """One load-generating process, kept for the whole run: per job, load the chunks it was given when the
    parent says go, and send back (end time, vectors)."""
    while True:
        job = conn.recv()
        if job is None:
            return
        url, chunks, concurrency, route = job
        conn.send("ready")
        conn.recv()  # go
        _, vecs = asyncio.run(load(url, chunks, concurrency, route))
        conn.send((time.time(), vecs))


class ClientPool:
    """`processes` load-generating processes sharing the concurrency (one Python client process cannot send
    small requests fast enough to load a GPU server); started once, reused for every round."""

    def __init__(self, processes: int) -> None:
        import multiprocessing as mp

        self.size = max(1, processes)
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        if self.size > 1:
            ctx = mp.get_context("spawn")  # this process may hold CUDA; the clients never touch it
            for _ in range(self.size):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_client_process, args=(child,), daemon=True)
                proc.start()
                self.procs.append(proc)
                self.conns.append(parent)

    def load(self, url: str, chunks: list[list[str]], concurrency: int,
             route: str) -> tuple[float, list[np.ndarray]]:
        """All chunks through `concurrency` clients in all; the seconds from the common start to the last
        process's end, and the vectors in chunk order."""
        n = min(self.size, concurrency, len(chunks))
        if n <= 1:
            return asyncio.run(load(url, chunks, concurrency, route))
        parts = [list(range(p, len(chunks), n)) for p in range(n)]
        shares = [concurrency // n + (p < concurrency % n) for p in range(n)]
        for p in range(n):
            self.conns[p].send((url, [chunks[i] for i in parts[p]], shares[p], route))
        for p in range(n):
            if self.conns[p].recv() != "ready":
                raise RuntimeError("a load client process did not get ready")
        start = time.time()
        for p in range(n):
            self.conns[p].send("go")
        out: list[np.ndarray] = [np.empty(0)] * len(chunks)
        ends = []
        for p in range(n):
            end, vecs = self.conns[p].recv()
            ends.append(end)
            for i, v in zip(parts[p], vecs, strict=True):
                out[i] = v
        return max(ends) - start, out

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=30)


def single_p50(url: str, route: str, n: int = 200) -> dict[str, float]:
    """Median milliseconds of a one-query request (one short text), one at a time on a kept-alive connection,
    sent with the standard library's http.client (a lean client: httpx adds ~1 ms of its own per request),
    with the medians of the server's own stage headers (x-total-time: from the first byte read to the
    response; tokenization, queue and inference inside it) to show where the time goes."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    stages = ("x-total-time", "x-tokenization-time", "x-queue-time", "x-inference-time")
    times: list[float] = []
    seen: dict[str, list[float]] = {h: [] for h in stages}
    try:
        for i in range(n + 10):
            body = json.dumps({"input": [f"what is query {i}?"]})
            t = time.perf_counter()
            conn.request("POST", route, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"one-query request: HTTP {resp.status}: {data[:200]!r}")
            if i >= 10:
                times.append(time.perf_counter() - t)
                for h in stages:
                    value = resp.getheader(h)
                    if value is not None:
                        seen[h].append(float(value))
    finally:
        conn.close()
    out = {"p50_ms": float(np.median(times) * 1000), "p99_ms": float(np.percentile(times, 99) * 1000)}
    out.update({f"server_{h[2:].replace('-', '_')}_p50_ms": float(np.median(v)) for h, v in seen.items() if v})
    return out


def measure(url: str, texts: list[str], ks: list[int], args: argparse.Namespace, direct_s: float, tokens: int,
            direct: np.ndarray, pool: ClientPool, route: str = "/v1/embeddings") -> dict[str, Any]:
    """Throughput at each texts-per-request (best of --repeat), its ratio to direct, the max vector
    difference, and the single-request p50."""
    out: dict[str, Any] = {}
    for k in ks:
        chunks = [texts[i : i + k] for i in range(0, len(texts), k)]
        pool.load(url, chunks[: max(1, 1024 // k)], args.concurrency, route)  # warm-up
        best = float("inf")
        count = total = 0.0
        for _ in range(args.repeat):
            before = batch_stats(httpx.get(url + "/metrics").text) if route == "/v1/embeddings" else (0, 0)
            seconds, vecs = pool.load(url, chunks, args.concurrency, route)
            after = batch_stats(httpx.get(url + "/metrics").text) if route == "/v1/embeddings" else (0, 0)
            if seconds < best:
                best, count, total = seconds, after[0] - before[0], after[1] - before[1]
        diff = float(np.abs(np.concatenate(vecs) - direct).max())
        out[f"{k}_per_request"] = {"texts_per_s": len(texts) / best, "tokens_per_s": tokens / best, "seconds": best,
                                   "ratio_to_direct": direct_s / best, "max_abs_diff": diff,
                                   "batches": count, "requests_per_batch": total / max(count, 1)}
    one = single_p50(url, route)
    out["single_query_p50_ms"] = one.pop("p50_ms")
    out["single_query"] = one
    return out


def summary(result: dict[str, Any], ks: list[int]) -> str:
    """One line per server: texts/s and the ratio to direct at each request size, and the one-query p50."""
    lines = [f"direct: {result['direct']['texts_per_s']:.1f} texts/s, one query "
             f"{result['direct']['single_query_p50_ms']:.2f} ms"]
    for name, r in result.items():
        if not isinstance(r, dict) or name == "direct":
            continue
        if "skipped" in r:
            lines.append(f"{name}: skipped ({r['skipped']})")
            continue
        parts = [f"{k}/req {r[f'{k}_per_request']['texts_per_s']:.1f} texts/s = "
                 f"{r[f'{k}_per_request']['ratio_to_direct']:.2f}x direct" for k in ks]
        lines.append(f"{name}: " + ", ".join(parts) + f", one-query p50 {r['single_query_p50_ms']:.1f} ms")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint folder or hub id (default: make one of --shape)")
    p.add_argument("--shape", default="tiny", choices=sorted(SHAPES), help="shape of the made checkpoint")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--devices", default="auto", help="the model processes' devices of the multi-process run "
                   "(serve --devices; default auto: every CUDA device, else one cpu)")
    p.add_argument("--dtype", default=None)
    p.add_argument("--texts", type=int, default=8192, help="texts in the workload (default 8192)")
    p.add_argument("--texts-per-request", default="8,32", help="comma-separated request sizes (default 8,32)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--client-processes", type=int, default=max(1, min(4, (os.cpu_count() or 1) // 4)),
                   help="load-generating processes sharing --concurrency (default: min(4, cores / 4)); one Python "
                   "client process caps the request rate on its own")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--batch-tokens", type=int, default=None, help="token budget of one forward pass, both paths")
    p.add_argument("--quick", action="store_true", help="512 texts (a CPU check)")
    p.add_argument("--repeat", type=int, default=2, help="timed rounds of each path; the best counts")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="HTTP worker processes of the `workers` server (default: min(4, cores))")
    p.add_argument("--servers", default="in-process,workers,infinity",
                   help="which servers to load, comma-separated, of in-process, workers, model-processes, infinity "
                   "(infinity is skipped when it cannot be imported)")
    p.add_argument("--infinity-site", type=Path, default=Path("build/infinity_site"),
                   help="a folder put first on Infinity's PYTHONPATH (its `pip install --target`)")
    p.add_argument("--infinity-python", default=sys.executable,
                   help="the Python that runs Infinity (default: this one; e.g. a venv of its own)")
    p.add_argument("--infinity-batch-size", type=int, default=64, help="Infinity's --batch-size")
    p.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file (atomically)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    n = 512 if args.quick else args.texts
    ks = [int(x) for x in args.texts_per_request.split(",")]
    servers = [x.strip() for x in args.servers.split(",") if x.strip()]
    unknown = set(servers) - {"in-process", "workers", "model-processes", "infinity"}
    if unknown:
        raise SystemExit(f"--servers: unknown {sorted(unknown)}; use in-process, workers, model-processes, infinity")
    if args.workers < 1:
        raise SystemExit(f"--workers {args.workers}: use at least 1")
    if args.out is not None and args.out.exists():
        raise SystemExit(f"--out {args.out} exists; pass a new path")

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
        emb.encode(texts[: min(n, 1024)], progress=False)  # warm-up (allocator, kernels), as the servers'
        direct_s = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            direct = emb.encode(texts, progress=False)
            direct_s = min(direct_s, time.perf_counter() - start)
        one = []  # the one-query request's text, embedded directly: the floor under the HTTP p50
        for i in range(210):
            start = time.perf_counter()
            emb.encode([f"what is query {i}?"], progress=False)
            one.append(time.perf_counter() - start)
        direct_one_ms = float(np.median(one[10:]) * 1000)
        device = str(emb.device)
        del emb
        gc.collect()
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()  # the servers load their own copies
        result: dict[str, Any] = {
            "model": model if args.model else f"{args.shape} (random weights)", "device": device, "texts": n,
            "tokens": tokens, "concurrency": args.concurrency, "client_processes": args.client_processes,
            "cpu_cores": os.cpu_count(),
            "direct": {"texts_per_s": n / direct_s, "tokens_per_s": tokens / direct_s, "seconds": direct_s,
                       "single_query_p50_ms": direct_one_ms},
        }
        pool = ClientPool(args.client_processes)
        for name in servers:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            if name == "infinity":
                started = start_infinity(model, args, port, device)
                if isinstance(started, str):
                    result[name] = {"skipped": started}
                    print(f"infinity skipped: {started}", file=sys.stderr)
                    continue
                proc = started
                route = "/embeddings"
            else:
                proc = start_server(model, args, port, None if name == "in-process" else args.devices,
                                    args.workers if name == "workers" else 1)
                route = "/v1/embeddings"
            try:
                result[name] = measure(url, texts, ks, args, direct_s, tokens, direct, pool, route)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
            if name in ("model-processes", "workers"):
                result[name]["devices"] = args.devices
            if name == "workers":
                result[name]["workers"] = args.workers
            print(summary(result, ks), file=sys.stderr, flush=True)
            save(result, args.out, partial=True)  # what finished survives a run cut short
        pool.close()

    print(json.dumps(result, indent=1))
    print(summary(result, ks), file=sys.stderr)
    save(result, args.out, partial=False)


def save(result: dict[str, Any], out: Path | None, partial: bool) -> None:
    """Write the figures to `out` atomically (a temp sibling, then rename), marked partial until the end."""
    if out is None:
        return
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(json.dumps({**result, "partial": partial}, indent=1) + "\n", encoding="utf-8")
    tmp_out.replace(out)


if __name__ == "__main__":
    main()
