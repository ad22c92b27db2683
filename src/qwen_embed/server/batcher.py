"""Async dynamic batcher: concurrent requests merge into token-budget batches for one model worker.

Each model has one `Batcher`: requests (lists of token-id sequences) join a FIFO queue; the batch
loop takes the oldest request, waits at most `max_wait_s` after its arrival for others to join (or
until the token / request budget is full; a request alone in the server, none other admitted, queued
or running, runs at once: it has nobody to wait for), and runs the merged sequences through `run` in the model's
single worker thread, so the event loop never waits on the model. A request larger than the token
budget is cut into several batches (a sequence is never cut), so that one large request is
interruptible between batches: a client that went away, or a drain deadline, stops it there. While a
batch runs, the next one forms; requests that queued during the run have already waited their time
and go at once. With `max_inflight=2` the next batch is handed to the worker while one runs, so that
it starts the moment the first ends (better for large requests; measured in BENCHMARKS.md). (Models on
one CUDA device share one worker thread, passed in as `worker`: CUDA-graph capture and compilation in
one thread must not race the kernels of another.)

`run` (token-id sequences -> one output row each) is the seam between the HTTP side and the model:
the batcher knows nothing else of the model, so a model process can own the batcher and `run`
(docs/server.md, "Where this goes").

Backpressure: `admit` reserves a place before any tokenization and `submit` refuses a request at once
(`QueueFull`) when the requests or tokens admitted, queued or running would pass `max_queue` /
`max_queue_tokens`. An accepted request is answered exactly once: its future gets the result rows or
the error of its batch; a request whose client went away is skipped. `drain(timeout)` refuses new
work (`ShuttingDown`), runs what was accepted without waiting for batch windows (a request admitted
before the drain and still being tokenized is accepted: it is queued and run when it arrives, and the
loop waits for it), and at the deadline fails what is left with `ShuttingDown`; `stop` drains and ends
the worker thread. The batcher raises its own errors; the HTTP layer maps them to statuses (errors.py).

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

from ..errors import QwenEmbedError
from .metrics import Metrics

RunFn = Callable[[list[Sequence[int]]], np.ndarray]


class QueueFull(QwenEmbedError):
    """The model's queue is full; `retry_after` estimates the seconds until there is room."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(QwenEmbedError):
    """The batcher is draining: it takes no new work, or its drain deadline has passed."""


def ran_out(model: str) -> ShuttingDown:
    """The error of a request that the drain deadline stopped (queued, running, or admitted and not yet queued)."""
    return ShuttingDown(f"the server is shutting down and the {model} drain time ran out before this request "
                        "finished; retry on another replica.")


class BatcherFailed(QwenEmbedError):
    """The batch loop itself ended on an unexpected error (a bug, not a model failure): the requests it held
    get this error instead of waiting forever, and the batcher refuses new work and reports not ready."""


def model_worker(name: str) -> ThreadPoolExecutor:
    """The single thread a model runs in (the only place the server makes a model thread)."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")


@dataclass
class Timing:
    """Seconds a request spent in each stage (sent back as x-*-time headers)."""

    tokenization: float = 0.0
    queue: float = 0.0
    inference: float = 0.0


@dataclass
class Job:
    """One request: its sequences, how far they were sent, and the rows received so far."""

    seqs: Sequence[Sequence[int]]
    tokens: int
    future: asyncio.Future[np.ndarray]
    timing: Timing
    enqueued: float = field(default_factory=time.perf_counter)
    sent: int = 0  # sequences handed to batches so far
    parts: dict[int, np.ndarray] = field(default_factory=dict)  # first sequence index -> rows
    received: int = 0
    released: bool = False
    started: bool = False


Slice = tuple[Job, int, int]  # a job's sequences [start, end) in one batch


class Admission:
    """A place reserved in the queue before tokenization; `submit` turns it into a queued request."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher = batcher
        self.held = True

    async def submit(self, seqs: Sequence[Sequence[int]], timing: Timing | None = None) -> np.ndarray:
        """Queue the sequences under this reservation (also while the batcher drains: the place was
        granted before); returns their rows in order."""
        assert self.held, "an admission submits once"
        self.held = False
        return await self.batcher._enqueue(seqs, timing, reserved=True)

    def release(self) -> None:
        """Give the place back (the request failed or ended before `submit`); idempotent."""
        if self.held:
            self.held = False
            self.batcher._unreserve()
            self.batcher._gauge()


class Batcher:
    """Queue + batch loop + one worker thread for one model."""

    def __init__(self, name: str, run: RunFn, *, max_batch_tokens: int, max_batch_requests: int = 256,
                 max_wait_s: float = 0.005, max_queue: int = 512, max_queue_tokens: int = 1 << 20,
                 metrics: Metrics | None = None, worker: ThreadPoolExecutor | None = None,
                 max_inflight: int = 1, admitted: Callable[[], int] | None = None) -> None:
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
        self.pending_requests = 0  # admitted + queued + running, counted until answered
        self._reserved = 0  # admitted, not yet queued (being tokenized): a drain waits for them
        self.pending_tokens = 0
        self.batches_run = 0
        self._tokens_per_s = 0.0  # moving estimate, for Retry-After
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._expired = False  # the drain deadline passed: nothing more runs
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed: BatcherFailed | None = None  # the batch loop died: what every request gets
        # batches handed to the worker at once: with 2, the next batch waits in the worker's queue while
        # one runs (the device never idles between batches), but it forms earlier, so it is smaller
        self._slots = asyncio.Semaphore(max(1, max_inflight))
        self._running: set[asyncio.Task[None]] = set()
        self._in_batches: list[list[Slice]] = []
        # requests admitted anywhere (tokenizing, queued or running): this batcher's own count, or the
        # count of every HTTP worker when the batcher runs in a model process (model_server.py)
        self.admitted: Callable[[], int] = admitted or (lambda: self.pending_requests)
        # the model's worker thread; a shared one (the caller's, which it shuts down) serialises several models
        self._owns_pool = worker is None
        self._pool = worker or model_worker(name)

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """False while `run` says it cannot run (a model process restarting: its `ready` flag), and for good
        once the batch loop has died (BatcherFailed)."""
        return self._failed is None and bool(getattr(self.run, "ready", True))

    @property
    def failed(self) -> BatcherFailed | None:
        """The error every request gets once the batch loop has died, else None."""
        return self._failed

    def start(self) -> None:
        """Start the batch loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        """The batch loop returned (drained) or died: when it died, answer what it held with BatcherFailed."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        self._failed = BatcherFailed(
            f"the {self.name} batch loop stopped on an internal error ({type(exc).__name__}: {exc}); the "
            "request was not run. The server reports not ready from now on: restart it (and report the error).")
        for job in list(self._queue):
            self._fail(job, self._failed)
        self._queue.clear()
        self._queued_tokens = 0

    def drain(self, timeout: float | None = None) -> None:
        """Refuse new work and run what was accepted; after `timeout` seconds, fail what is left."""
        self._stopping = True
        self._wakeup.set()
        if timeout is not None and self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(max(0.0, timeout), self._expire)

    async def stop(self, timeout: float | None = None) -> None:
        """Drain (within `timeout` seconds when given), then end the worker thread."""
        self.drain(timeout)
        if self._task is not None:
            await self._task
        if self._deadline is not None:
            self._deadline.cancel()
        if self._owns_pool:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _expire(self) -> None:
        """The drain deadline: every request still queued or running gets ShuttingDown."""
        self._expired = True
        error = ran_out(self.name)
        for job in list(self._queue):
            self._fail(job, error)
        self._queue.clear()
        self._queued_tokens = 0
        for batch in self._in_batches:
            for job, _, _ in batch:
                self._fail(job, error)
        self._wakeup.set()

    async def call(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        """Run `run` in the worker thread outside the queue (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.run, list(seqs))

    # -- admission ---------------------------------------------------------------------------------
    def check_room(self, requests: int, tokens: int, reserved: bool = False) -> None:
        """Raise QueueFull when `requests` more requests of `tokens` tokens would not fit, ShuttingDown while
        draining (`reserved`: the place was granted before the drain, refused only once its deadline passed)."""
        if self._failed is not None:
            raise self._failed
        if self._stopping and not reserved:
            raise ShuttingDown("the server is shutting down; retry on another replica.")
        if self._expired:
            raise ran_out(self.name)
        if self.pending_requests + requests > self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({self.pending_requests} requests queued or running, "
                            f"limit {self.max_queue}); retry after the Retry-After seconds.", self._retry_after())
        if self.pending_requests and self.pending_tokens + tokens > self.max_queue_tokens:
            raise QueueFull(f"the {self.name} queue is full ({self.pending_tokens} tokens queued or running, "
                            f"limit {self.max_queue_tokens}); retry after the Retry-After seconds.",
                            self._retry_after())

    def admit(self) -> Admission:
        """Reserve a place for one request before its tokenization (QueueFull / ShuttingDown when none)."""
        self.check_room(1, 0)
        self.pending_requests += 1
        self._reserved += 1
        self._gauge()
        return Admission(self)

    def _unreserve(self) -> None:
        """A reservation ends (queued, refused or given back); a draining loop may end once none is left."""
        self.pending_requests -= 1
        self._reserved -= 1
        self._wakeup.set()

    def _retry_after(self) -> int:
        if self._tokens_per_s <= 0:
            return 1
        return max(1, min(60, math.ceil(self.pending_tokens / self._tokens_per_s)))

    async def submit(self, seqs: Sequence[Sequence[int]], timing: Timing | None = None) -> np.ndarray:
        """Queue one request's sequences; returns their output rows [len(seqs), ...] in order."""
        return await self._enqueue(seqs, timing, reserved=False)

    async def _enqueue(self, seqs: Sequence[Sequence[int]], timing: Timing | None, reserved: bool) -> np.ndarray:
        tokens = sum(len(s) for s in seqs)
        if reserved:
            self._unreserve()  # the reservation becomes the request (checked again as one)
        try:
            self.check_room(1, tokens, reserved=reserved)
        except QwenEmbedError:
            self._gauge()
            raise
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

    def _take(self) -> list[Slice]:
        """The oldest sequences that fit the budget (at least one), whole requests where they fit; a
        request over the budget is cut between sequences. Requests whose client left are dropped."""
        batch: list[Slice] = []
        tokens = 0
        while self._queue and len(batch) < self.max_batch_requests:
            job = self._queue[0]
            if job.future.done():  # cancelled (the client went away) or failed
                self._queue.popleft()
                self._queued_tokens -= sum(len(s) for s in job.seqs[job.sent :])
                self._release(job)
                continue
            start = end = job.sent
            while end < len(job.seqs):
                n = len(job.seqs[end])
                if (batch or end > start) and tokens + n > self.max_batch_tokens:
                    break
                tokens += n
                end += 1
            if end > start:
                batch.append((job, start, end))
                job.sent = end
                self._queued_tokens -= sum(len(s) for s in job.seqs[start:end])
            if job.sent < len(job.seqs):
                break  # the budget is full inside this request
            self._queue.popleft()
        return batch

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()  # a free place in the worker before forming the batch
            while not self._queue or self._expired:
                # requests admitted before the drain and still tokenizing will queue: wait for them, until the
                # drain deadline (after it they are refused, so a place never given back cannot hold the stop)
                if self._stopping and (not self._reserved or self._expired):
                    self._slots.release()
                    if self._running:
                        await asyncio.gather(*self._running, return_exceptions=True)
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # a request alone in the server (none other admitted, queued or running) has nobody to wait for:
            # it runs at once, so a lone query pays no batching window; under load others are always pending
            lone = len(self._queue) == 1 and not self._in_batches and self.admitted() <= 1
            deadline = self._queue[0].enqueued + (0.0 if lone else self.max_wait_s)
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

    async def _run_and_release(self, batch: list[Slice]) -> None:
        self._in_batches.append(batch)
        try:
            await self._run_batch(batch)
        finally:
            self._in_batches.remove(batch)
            self._slots.release()

    async def _run_batch(self, batch: list[Slice]) -> None:
        seqs = [s for job, a, b in batch for s in job.seqs[a:b]]
        tokens = sum(len(s) for s in seqs)
        start = time.perf_counter()
        for job, _, _ in batch:
            if not job.started:
                job.started = True
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
                                       [job.timing.queue for job, a, _ in batch if a == 0])
        row = 0
        for job, a, b in batch:
            job.timing.inference += elapsed
            if error is not None:
                self._fail(job, error)
            elif job.future.done():  # the client went away meanwhile
                if job.sent == len(job.seqs):
                    self._release(job)
            else:
                assert out is not None
                job.parts[a] = out[row : row + b - a]
                job.received += b - a
                if job.received == len(job.seqs):
                    parts = [job.parts[k] for k in sorted(job.parts)]
                    job.future.set_result(parts[0] if len(parts) == 1 else np.concatenate(parts))
                    self._release(job)
            row += b - a

    def _fail(self, job: Job, error: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(error)
        self._release(job)

    def _release(self, job: Job) -> None:
        if job.released:
            return
        job.released = True
        self.pending_requests -= 1
        self.pending_tokens -= job.tokens
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.set_queue(self.name, self.pending_requests, self.pending_tokens)
