"""Async dynamic batcher: concurrent requests merge into token-budget batches for one model worker.

Each model has one `Batcher`: requests (lists of token-id sequences) join a FIFO queue; the batch
loop takes the oldest request, waits at most `max_wait_s` after its arrival for others to join (or
until the token / request budget is full), and runs the merged sequences through `run` in the model's
single worker thread, so the event loop never waits on the model. While a batch runs, the next one
forms; requests that queued during the run have already waited their time and go at once. With
`max_inflight=2` the next batch is handed to the worker while one runs, so that it starts the moment
the first ends (better for large requests; measured in BENCHMARKS.md). (Models on
one CUDA device share one worker thread, passed in as `worker`: CUDA-graph capture and compilation in
one thread must not race the kernels of another.)

Backpressure: `submit` refuses a request at once (`Overloaded`, HTTP 429) when the requests or tokens
queued or running would pass `max_queue` / `max_queue_tokens`. An accepted request is answered exactly
once: its future gets the result rows or the error of its batch; a request whose client went away is
skipped. `stop` refuses new work, drains what was accepted and ends the worker thread.

This is the scheme of text-embeddings-inference's queue and vLLM's scheduler reduced to one
forward pass per batch (no KV cache: an embedding request is one forward pass).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .errors import APIError, Overloaded
from .metrics import Metrics

RunFn = Callable[[list[Sequence[int]]], np.ndarray]


@dataclass
class Timing:
    """Seconds a request spent in each stage (sent back as x-*-time headers)."""

    tokenization: float = 0.0
    queue: float = 0.0
    inference: float = 0.0


@dataclass
class Job:
    seqs: Sequence[Sequence[int]]
    tokens: int
    future: asyncio.Future[np.ndarray]
    timing: Timing
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue + batch loop + one worker thread for one model."""

    def __init__(self, name: str, run: RunFn, *, max_batch_tokens: int, max_batch_requests: int = 256,
                 max_wait_s: float = 0.005, max_queue: int = 512, max_queue_tokens: int = 1 << 20,
                 metrics: Metrics | None = None, worker: ThreadPoolExecutor | None = None,
                 max_inflight: int = 1) -> None:
        self.name = name
        self.run = run
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_requests = max_batch_requests
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_queue_tokens = max_queue_tokens
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._queued_tokens = 0
        self.pending_requests = 0  # queued + running, counted until answered
        self.pending_tokens = 0
        self.batches_run = 0
        self._tokens_per_s = 0.0  # moving estimate, for Retry-After
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # batches handed to the worker at once: with 2, the next batch waits in the worker's queue while
        # one runs (the device never idles between batches), but it forms earlier, so it is smaller
        self._slots = asyncio.Semaphore(max(1, max_inflight))
        self._running: set[asyncio.Task[None]] = set()
        # the model's worker thread; a shared one (the caller's, which it shuts down) serialises several models
        self._owns_pool = worker is None
        self._pool = worker or ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, end the worker thread."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._owns_pool:
            self._pool.shutdown(wait=True)

    async def call(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Run `run` in the worker thread outside the queue (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run, list(seqs))

    # -- admission ---------------------------------------------------------------------------------
    def check_room(self, requests: int, tokens: int) -> None:
        """Raise Overloaded when `requests` more requests of `tokens` tokens would not fit."""
        if self._stopping:
            raise APIError(503, "the server is shutting down; retry on another replica.", code="shutting_down")
        if self.pending_requests + requests > self.max_queue:
            raise Overloaded(f"the {self.name} queue is full ({self.pending_requests} requests queued or running, "
                             f"limit {self.max_queue}); retry after the Retry-After seconds.", self._retry_after())
        if self.pending_requests and self.pending_tokens + tokens > self.max_queue_tokens:
            raise Overloaded(f"the {self.name} queue is full ({self.pending_tokens} tokens queued or running, "
                             f"limit {self.max_queue_tokens}); retry after the Retry-After seconds.",
                             self._retry_after())

    def _retry_after(self) -> int:
        if self._tokens_per_s <= 0:
            return 1
        return max(1, min(60, math.ceil(self.pending_tokens / self._tokens_per_s)))

    async def submit(self, seqs: Sequence[Sequence[int]], timing: Timing | None = None) -> np.ndarray:
        """Queue one request's sequences; returns their output rows [len(seqs), ...] in order."""
        tokens = sum(len(s) for s in seqs)
        self.check_room(1, tokens)
        job = Job(seqs, tokens, asyncio.get_running_loop().create_future(), timing or Timing())
        self._queue.append(job)
        self._queued_tokens += tokens
        self.pending_requests += 1
        self.pending_tokens += tokens
        self._gauge()
        self._wakeup.set()
        return await job.future

    # -- the loop ----------------------------------------------------------------------------------
    def _full(self) -> bool:
        return self._queued_tokens >= self.max_batch_tokens or len(self._queue) >= self.max_batch_requests

    def _take(self) -> list[Job]:
        """Pop the oldest jobs that fit the budget (at least one); skip those whose client left."""
        batch: list[Job] = []
        tokens = 0
        while self._queue and len(batch) < self.max_batch_requests:
            job = self._queue[0]
            if job.future.done():  # cancelled: the client went away
                self._queue.popleft()
                self._queued_tokens -= job.tokens
                self._release(job)
                continue
            if batch and tokens + job.tokens > self.max_batch_tokens:
                break
            self._queue.popleft()
            self._queued_tokens -= job.tokens
            batch.append(job)
            tokens += job.tokens
        return batch

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # a free place in the worker before forming the batch
            while not self._queue:
                if self._stopping:
                    self._slots.release()
                    if self._running:
                        await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = self._queue[0].enqueued + self.max_wait_s
            while not self._full() and not self._stopping:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_and_release(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_and_release(self, batch: list[Job]) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self._slots.release()

    async def _run_batch(self, batch: list[Job]) -> None:
        seqs = [s for job in batch for s in job.seqs]
        tokens = sum(job.tokens for job in batch)
        start = time.perf_counter()
        for job in batch:
            job.timing.queue = start - job.enqueued
        try:
            out = await asyncio.get_running_loop().run_in_executor(self._pool, self.run, seqs)
            error: BaseException | None = None
        except Exception as e:  # the model failed: every request of the batch gets the error
            out, error = None, e
        elapsed = time.perf_counter() - start
        self.batches_run += 1
        if elapsed > 0:
            rate = tokens / elapsed
            self._tokens_per_s = rate if self._tokens_per_s == 0 else 0.8 * self._tokens_per_s + 0.2 * rate
        if self.metrics is not None:
            self.metrics.observe_batch(self.name, len(batch), len(seqs), tokens, elapsed,
                                       [job.timing.queue for job in batch])
        row = 0
        for job in batch:
            n = len(job.seqs)
            job.timing.inference = elapsed
            if not job.future.done():
                if error is not None:
                    job.future.set_exception(error)
                else:
                    assert out is not None
                    job.future.set_result(out[row : row + n])
            row += n
            self._release(job)

    def _release(self, job: Job) -> None:
        self.pending_requests -= 1
        self.pending_tokens -= job.tokens
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.set_queue(self.name, self.pending_requests, self.pending_tokens)
