"""Embed a corpus on several devices at once: a pool of worker processes, one per device (data parallel).

`DevicePool` starts one worker per device, all at the same time; each pins itself to its device
(`torch.cuda.set_device`, so that pinned buffers, streams and CUDA graphs live on its own GPU, not on
cuda:0), takes its share of the host's CPU threads (torch, the tokenizer's pool and the compiler's
workers: N processes with a pool of every core each would oversubscribe the host), loads the
checkpoint and warms up (compilation, autotuning, the allocator) before it reports ready. The pool
then serves any number of `encode` calls, so start-up is paid once. `encode_on_devices` is a pool used for one call.

One call: the texts are cut into contiguous shards of about equal token count (character count as
the proxy), one per worker; each worker tokenizes its own shard (tokenization overlaps the device
inside `Embedder.encode`), embeds it and writes the vectors straight into its rows of one shared
output array (a memory-mapped .npy in the pool's scratch folder, in /dev/shm when present), so results
are never pickled or concatenated. Each text is embedded exactly as a single process would embed it, so
the result equals a one-device run up to the device's own rounding (batches hold other neighbours).
Workers are forked from the fork server of processes.py (never from this process: CUDA state does not
survive a fork); a failing worker's error is raised in the parent with its device named. Workers end
with their parent, even a parent that was killed: they hold a `lifeline` to it, and the first to see it
gone removes the scratch folder (a killed parent cannot; in /dev/shm it would hold memory until the
next reboot).

    from qwen_embed.multidevice import DevicePool, encode_on_devices
    vecs = encode_on_devices("Qwen/Qwen3-Embedding-0.6B", texts, ["cuda:0", "cuda:1"])
    with DevicePool("Qwen/Qwen3-Embedding-0.6B", ["cuda:0", "cuda:1"]) as pool:   # start-up once
        docs = pool.encode(corpus)
        queries = pool.encode(questions, instruction="Given a question, retrieve passages that answer it")
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import shutil
import tempfile
import time
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .errors import InputError, QwenEmbedError
from .processes import child_context, exit_text, exit_with_parent, lifeline
from .settings import check_dim
from .tokenizer import check_texts

POLL_S = 0.2  # how often the parent checks that its workers are alive while it waits
SCRATCH_PREFIX = "qwen-embed-devices-"
WARMUP_WORDS = (4, 40, 300, 900, 1500)  # one batch over the eager path, then short texts over the graph path


def shard_bounds(texts: Sequence[str], parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges with about equal total length, one per part (some may be empty)."""
    sizes = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    cum = np.cumsum(sizes)
    total = int(cum[-1]) if len(cum) else 0
    cuts = [0] + [int(np.searchsorted(cum, total * k / parts, side="left")) + 1 for k in range(1, parts)] + [len(texts)]
    cuts = [min(max(c, 0), len(texts)) for c in cuts]
    for i in range(1, len(cuts)):  # keep them ordered
        cuts[i] = max(cuts[i], cuts[i - 1])
    return list(itertools.pairwise(cuts))


@dataclass(frozen=True)
class WorkerOptions:
    """What every worker loads and how (plain data: it is pickled to the worker processes)."""

    model: str
    dtype: str | None
    max_length: int | None
    batch_tokens: int | None
    compile: bool | None
    warmup: bool
    threads: int
    deterministic: bool = False


@dataclass(frozen=True)
class Job:
    """One worker's share of an `encode` call: texts [start, start + len(texts)) of the output file."""

    job: int
    texts: list[str]
    start: int
    out: str
    encode_kwargs: dict[str, Any]


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def _warm_up(emb: Any) -> None:
    """Run the code paths a corpus takes once, so that compilation is not part of the first call."""
    emb.encode([" ".join(["warm"] * n) for n in WARMUP_WORDS], progress=False)
    emb.encode(["warm up", "a short one"], progress=False)


def _serve(rank: int, device: str, opts: WorkerOptions, inbox: Any, outbox: Any, lifeline_end: Any,
           scratch: str) -> None:
    """A worker: load and warm up on `device`, report ready, then run jobs until told to stop (None). Should
    the parent go (killed), it removes the pool's `scratch` folder and ends."""
    t0 = time.time()
    exit_with_parent(lifeline_end, on_orphan=lambda: _remove_scratch(scratch))
    try:
        os.environ["RAYON_NUM_THREADS"] = str(opts.threads)  # the tokenizer's pool, before its first use
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(opts.threads))  # compile workers, likewise
        import torch

        torch.set_num_threads(opts.threads)
        t_import = time.time()
        if device.startswith("cuda"):
            torch.cuda.set_device(device)
            torch.zeros(1, device=device)  # the CUDA context, timed apart from loading
        from .embedder import Embedder

        t_cuda = time.time()
        emb = Embedder.from_pretrained(opts.model, device=device, dtype=opts.dtype, max_length=opts.max_length,
                                       batch_tokens=opts.batch_tokens, compile=opts.compile,
                                       deterministic=opts.deterministic)
        t_load = time.time()
        if opts.warmup:
            _warm_up(emb)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t_ready = time.time()
        outbox.put((rank, "ready", {"hidden": emb.hidden_size, "started": t0, "import_s": t_import - t0,
                                    "cuda_init_s": t_cuda - t_import, "load_s": t_load - t_cuda,
                                    "warmup_s": t_ready - t_load, "ready": t_ready}))
    except BaseException as e:  # reported to the parent, which raises it
        outbox.put((rank, "error", _error_text(e)))
        return
    while (job := inbox.get()) is not None:
        try:
            t = time.time()
            vecs = emb.encode(job.texts, progress=False, **job.encode_kwargs)
            t_enc = time.time()
            out = np.load(job.out, mmap_mode="r+")
            if out.shape[1] != vecs.shape[1]:
                raise AssertionError(f"output has {out.shape[1]} columns, vectors have {vecs.shape[1]}")
            out[job.start : job.start + len(vecs)] = vecs
            out.flush()
            del out
            outbox.put((rank, "done", {"job": job.job, "texts": len(vecs), "begin": t, "encode_s": t_enc - t,
                                       "write_s": time.time() - t_enc}))
        except BaseException as e:
            outbox.put((rank, "error", _error_text(e)))


def _scratch_dir() -> str:
    """A folder for the pool's shared outputs: RAM-backed /dev/shm when it exists, else the temp folder."""
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=base)


def _remove_scratch(path: str) -> None:
    """Remove a pool's scratch folder (only one of ours: its name says so)."""
    if Path(path).name.startswith(SCRATCH_PREFIX):
        shutil.rmtree(path, ignore_errors=True)


class DevicePool:
    """Persistent embedding workers, one per device; start-up (load, compile, warm-up) is paid once.

    Use as a context manager (or call `close`). `encode` takes the same arguments as
    `Embedder.encode` and returns float32 [n, dim] in input order. `startup_s` is the time until every
    worker was ready; `last_stats` holds each worker's timings of the latest call. `deterministic`: every
    worker uses batch-invariant kernels (a text's vector does not depend on its batch or its worker's share).
    """

    def __init__(self, model: str | os.PathLike[str], devices: Sequence[str], *, dtype: str | None = None,
                 max_length: int | None = None, batch_tokens: int | None = None, compile: bool | None = None,
                 warmup: bool = True, threads: int | None = None, deterministic: bool = False) -> None:
        devices = list(devices)
        if not devices or not all(isinstance(d, str) and d for d in devices):
            raise InputError(f"devices must be a non-empty list of device names, got {devices!r}; "
                             "pass e.g. ['cuda:0', 'cuda:1'].")
        self.devices = devices
        from .threads import check_threads, default_threads

        threads = check_threads(threads) if threads is not None else default_threads(len(devices))
        opts = WorkerOptions(os.fspath(model), dtype, max_length, batch_tokens, compile, warmup, threads,
                             deterministic)
        ctx = child_context()
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in devices]
        self._scratch = _scratch_dir()  # removed by close, at exit, or by a worker once this process is gone
        self._remove_scratch = weakref.finalize(self, _remove_scratch, self._scratch)
        children_end, self._lifeline = lifeline(ctx)
        self._procs = [ctx.Process(target=_serve, args=(k, dev, opts, self._inboxes[k], self._outbox, children_end,
                                                        self._scratch), daemon=True)
                       for k, dev in enumerate(devices)]
        self._jobs = 0
        self.closed = False
        self.last_stats: list[dict[str, Any]] = []
        t, self._t0 = time.perf_counter(), time.time()
        try:
            for p in self._procs:  # all start at once: loading and compiling overlap across devices
                p.start()
            self.ready = {k: msg for k, msg in self._collect(set(range(len(devices))), "ready")}
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t
        self.hidden_size = int(self.ready[0]["hidden"])

    # -- messages ----------------------------------------------------------------------------------
    def _collect(self, waiting: set[int], kind: str) -> list[tuple[int, dict[str, Any]]]:
        """Wait for one reply from each worker in `waiting` -> their `kind` payloads in rank order.

        A worker's error is raised once every worker has replied (the pool stays usable); a worker that
        dies closes the pool."""
        got: list[tuple[int, dict[str, Any]]] = []
        errors: list[tuple[int, str]] = []
        while waiting:
            try:
                rank, what, payload = self._outbox.get(timeout=POLL_S)
            except queue.Empty:
                for k in sorted(waiting):
                    if not self._procs[k].is_alive():
                        code = self._procs[k].exitcode
                        self.close()
                        raise QwenEmbedError(f"the worker on {self.devices[k]} failed: it {exit_text(code)} without "
                                             "a report (out of memory?); the pool is closed.") from None
                continue
            assert what in (kind, "error") and rank in waiting, (rank, what, kind)
            waiting.discard(rank)
            if what == "error":
                errors.append((rank, payload))
            else:
                got.append((rank, payload))
        if errors:
            rank, text = errors[0]
            raise QwenEmbedError(f"the worker on {self.devices[rank]} failed: {text.splitlines()[0]}")
        return sorted(got, key=lambda x: x[0])

    # -- work --------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], *, instruction: str | None = None, dim: int | None = None,
               normalize: bool = True) -> np.ndarray:
        """Embed `texts` over all workers -> float32 [n, dim] in input order (as `Embedder.encode`)."""
        if self.closed:
            raise QwenEmbedError("this DevicePool is closed; make a new one.")
        items = check_texts(texts)
        width = check_dim(dim, self.hidden_size)  # before any job is sent
        kwargs = {"instruction": instruction, "dim": dim, "normalize": normalize}
        self._jobs += 1
        path = str(Path(self._scratch) / f"vectors-{self._jobs}.npy")
        try:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(items), width))
            del out
            waiting = set()
            for k, (a, b) in enumerate(shard_bounds(items, len(self.devices))):
                if a < b:
                    self._inboxes[k].put(Job(self._jobs, items[a:b], a, path, kwargs))
                    waiting.add(k)
            stats = self._collect(waiting, "done")
            self.last_stats = [{"device": self.devices[k], **s} for k, s in stats]
            return np.array(np.load(path, mmap_mode="r"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def worker_startup(self) -> list[dict[str, Any]]:
        """Each worker's start-up phases in seconds (spawn, import, CUDA init, load, warm-up) with its device."""
        return [{"device": self.devices[k], "spawn_s": self.ready[k]["started"] - self._t0, **self.ready[k]}
                for k in sorted(self.ready)]

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the workers (politely, then by force after a few seconds) and remove the scratch folder."""
        if self.closed:
            return
        self.closed = True
        for p, inbox in zip(self._procs, self._inboxes, strict=True):
            if p.is_alive():
                inbox.put(None)
        deadline = time.monotonic() + 10
        for p in self._procs:
            if p.pid is not None:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join()
        self._remove_scratch()

    def __enter__(self) -> DevicePool:
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _hidden_size(model: str | os.PathLike[str]) -> int:
    """The model's width, from its config alone (no worker, no torch)."""
    from .config import ModelConfig
    from .hub import resolve_model_dir

    return ModelConfig.from_file(resolve_model_dir(os.fspath(model)) / "config.json").hidden_size


def encode_on_devices(model: str | os.PathLike[str], texts: Sequence[str], devices: Sequence[str], *,
                      instruction: str | None = None, dim: int | None = None, normalize: bool = True,
                      dtype: str | None = None, max_length: int | None = None, batch_tokens: int | None = None,
                      compile: bool | None = None, threads: int | None = None) -> np.ndarray:
    """Embed `texts` with one worker process per device -> float32 [n, dim] in input order.

    threads: torch CPU threads of each worker (default: the cores available divided among the workers).

    A `DevicePool` for one call: the workers start, warm up, embed and stop. To embed several
    batches of texts, keep a `DevicePool` open instead, so that start-up is paid once. (The warm-up
    pays for itself: on 4 H200s, 32,768 texts took 23.2 s with it, 29.2 s without, in BENCHMARKS.md.)"""
    items = check_texts(texts)  # refuse bad input before any worker starts
    check_dim(dim, _hidden_size(model))
    with DevicePool(model, devices, dtype=dtype, max_length=max_length, batch_tokens=batch_tokens,
                    compile=compile, threads=threads) as pool:
        return pool.encode(items, instruction=instruction, dim=dim, normalize=normalize)

