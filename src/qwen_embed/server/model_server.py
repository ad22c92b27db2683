"""A model process of `serve --workers N`: the model, its dynamic batcher, and a Unix socket the HTTP
workers send token ids to (`model_server_main`).

Every HTTP worker connects to every model process of the models it serves. A worker sends a request's
token-id sequences (wire.py: flat int32 buffers, no pickling); the process puts them in its `Batcher`
(batcher.py, unchanged), so token-budget batches are built from the requests of all workers at once, runs
the batches in the model's worker thread (`Embedder.embed_ids(..., normalize=False)` /
`Reranker.score_ids`, as in process), and sends each request its rows. A `CANCEL` (the client went away,
or the worker's drain deadline passed) cancels the request's future, so its queued batches are skipped;
a worker that disconnects (it died) has all its requests cancelled; the other workers are unaffected.

Admission (429) happens in the workers against the shared `Board` (board.py), before tokenization, so
this batcher's own queue limits are off. The process writes its load (tokens queued or running) and its
throughput to the board, for the workers' choice of process and their Retry-After; and it records its
batch metrics into the shared metrics folder (metrics.py).

Lifecycle: load the model, run the warm-up batches, listen, then set `ready` on the board. It ignores
SIGINT (a Ctrl-C reaches the whole process group; the supervisor ends it after the workers have
drained) and exits on SIGTERM at once, or when its supervisor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection

import numpy as np

from ..errors import QwenEmbedError
from ..processes import exit_with_parent
from ..settings import device_type
from . import wire
from .batcher import Batcher, RunFn, Timing
from .board import Board
from .metrics import Metrics
from .model_process import ModelSpec

UNLIMITED = 1 << 62
WARMUP_TEXT = "warm-up"


@dataclass(frozen=True)
class ModelServerConfig:
    """What one model process needs besides its model: its slot on the board, its socket, its batching."""

    spec: ModelSpec
    label: str  # the model's name in metrics
    model: int  # its index on the board (board.MODELS)
    slot: int  # its index among the model processes (board.py)
    generation: int
    address: str  # the Unix socket path it listens on
    max_batch_requests: int = 256
    max_wait_s: float = 0.005
    inflight: int = 1
    warmup: bool = True
    deterministic: bool = False


class BoardMetrics(Metrics):
    """The batcher's metrics, with the queue gauge going to the board (the workers own the gauge)."""

    def __init__(self, board: Board, slot: int) -> None:
        super().__init__()
        self.board = board
        self.slot = slot
        self.rate = 0.0

    def set_queue(self, model: str, requests: int, tokens: int) -> None:
        self.board.set_load(self.slot, tokens)

    def observe_batch(self, model: str, requests: int, inputs: int, tokens: int, seconds: float,
                      queue_seconds: Sequence[float]) -> None:
        super().observe_batch(model, requests, inputs, tokens, seconds, queue_seconds)
        if seconds > 0:
            rate = tokens / seconds
            self.rate = rate if self.rate == 0 else 0.8 * self.rate + 0.2 * rate
            self.board.set_load(self.slot, self.board.load(self.slot)[0], self.rate)


def load_model(spec: ModelSpec, deterministic: bool) -> tuple[RunFn, list[list[list[int]]]]:
    """The model of `spec` as a `RunFn`, and its warm-up batches: a short input (the CUDA-graph path) and
    a long batch (the compiled path), as the in-process server warms up. A CPU process without a thread
    count takes its share of the cores (`threads.use_threads`: the cores this process may use, divided by
    `spec.thread_share`, unless OMP_NUM_THREADS says otherwise), decided here, not by its parent, so that
    the parent need not import torch."""
    threads = spec.threads
    if threads is None and device_type(spec.device or "cpu") == "cpu":
        from ..threads import use_threads

        threads = use_threads(None, processes=spec.thread_share)
    if spec.kind == "embedding":
        from ..embedder import Embedder

        emb = Embedder.from_pretrained(spec.path, spec.device, spec.dtype, max_length=spec.max_length,
                                       batch_tokens=spec.batch_tokens, compile=spec.compile, threads=threads,
                                       deterministic=deterministic)
        eos = emb.tokenizer.eos_id
        warm = [emb.tokenizer.encode_for_embedding([WARMUP_TEXT], emb.max_length), [[eos] * 1500] * 3]

        def run(seqs: list[Sequence[int]]) -> np.ndarray:
            return emb.embed_ids(seqs, normalize=False, progress=False)

        return run, warm
    from ..reranker import Reranker

    rr = Reranker.from_pretrained(spec.path, spec.device, spec.dtype, spec.template, max_length=spec.max_length,
                                  batch_tokens=spec.batch_tokens, compile=spec.compile, threads=threads,
                                  deterministic=deterministic)

    def score(seqs: list[Sequence[int]]) -> np.ndarray:
        return rr.score_ids(seqs, progress=False)

    return score, [rr.build_input_ids(WARMUP_TEXT, [WARMUP_TEXT])]


def forget(tasks: dict[int, asyncio.Task[None]], rid: int, task: asyncio.Task[None]) -> None:
    """A request's task is done: drop it from its connection's table."""
    tasks.pop(rid, None)


class ModelServer:
    """The batcher and the socket server of one model process (module docstring)."""

    def __init__(self, config: ModelServerConfig, board: Board, run: RunFn) -> None:
        self.config = config
        self.board = board
        spec = config.spec
        self.batcher = Batcher(config.label, run, max_batch_tokens=spec.batch_tokens or 16384,
                               max_batch_requests=config.max_batch_requests, max_wait_s=config.max_wait_s,
                               max_queue=UNLIMITED, max_queue_tokens=UNLIMITED,
                               metrics=BoardMetrics(board, config.slot), max_inflight=config.inflight,
                               admitted=lambda: board.admitted(config.model)[0])
        self.stop = asyncio.Event()

    async def serve(self, warm: list[list[list[int]]]) -> None:
        """Warm up, listen, mark ready; serve until SIGTERM or the supervisor is gone."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        self.batcher.start()
        if self.config.warmup:
            for seqs in warm:
                await self.batcher.call(seqs)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.address)
        server = await asyncio.start_unix_server(self.connection, path=self.config.address)
        self.board.set_ready(self.config.slot, True)
        try:
            await self.stop.wait()
        finally:
            self.board.set_ready(self.config.slot, False)
            server.close()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One worker's requests, until it disconnects (then its requests left are cancelled)."""
        tasks: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    frame = await wire.read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.CancelledError:  # the process is stopping with the worker still connected
                    return  # (re-raised, Python 3.11's stream callback logs it as an error with a traceback)
                if frame.kind == wire.REQUEST:
                    task = asyncio.create_task(self.answer(frame.id, wire.sequences(frame), writer,
                                                           frame.code == wire.WARMUP))
                    tasks[frame.id] = task
                    task.add_done_callback(partial(forget, tasks, frame.id))
                elif frame.kind == wire.CANCEL:
                    running = tasks.get(frame.id)
                    if running is not None:
                        running.cancel()
        finally:
            for task in list(tasks.values()):
                task.cancel()
            writer.close()

    async def answer(self, rid: int, seqs: list[list[int]], writer: asyncio.StreamWriter, warmup: bool) -> None:
        """Run one request through the batcher (a worker's warm-up beside it) and send its rows, or its
        error, once."""
        timing = Timing()
        try:
            out = await (self.batcher.call(seqs) if warmup else self.batcher.submit(seqs, timing))
            parts = wire.rows(rid, out, timing.queue, timing.inference)
        except QwenEmbedError as e:  # the library's and the batcher's own errors: the worker raises them again
            parts = wire.error(rid, type(e).__name__, str(e))
        except Exception as e:  # the model failed on this batch; the process serves on
            parts = wire.error(rid, "ModelError", f"{type(e).__name__}: {e}")
        if not writer.is_closing():
            writer.writelines(parts)
            with contextlib.suppress(ConnectionError):
                await writer.drain()


def model_server_main(config: ModelServerConfig, board: Board, load_errors: Connection,
                      lifeline_end: Connection) -> None:
    """The model process (module docstring). A model that cannot be loaded (a library error: a bad checkpoint)
    is reported as one line through `load_errors` (a pipe's sending end), and the process exits with 2. It
    stops as on SIGTERM once the supervisor is gone (`lifeline_end`: processes.py), while loading too."""
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(lifeline_end)
    tqdm.set_lock(threading.RLock())  # not tqdm's default multiprocessing lock, which os._exit would leak
    try:
        run, warm = load_model(config.spec, config.deterministic)
    except QwenEmbedError as e:
        load_errors.send(str(e))
        load_errors.close()
        sys.exit(2)
    asyncio.run(ModelServer(config, board, run).serve(warm))
    # the workers have drained (or are gone): nothing is left to answer, and a forward pass still running
    # in the model thread need not finish
    os._exit(0)
