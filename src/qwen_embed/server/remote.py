"""An HTTP worker's side of the model processes (`serve --workers N`): `RemoteBatcher`.

It stands where the in-process `Batcher` stands in a service (same `admit` / `submit` / `drain` / `stop`),
but the batching happens in the model processes (model_server.py): a request's token ids go over a Unix socket
(wire.py) to the ready process of the model with the fewest tokens queued or running, and its rows come
back. One `Link` per model process, reconnected after a restart (a new generation on the board; the reconnect
loop polls only while a link is down).

Admission is global: a place is reserved on the shared `Board` before tokenization, and refused (429,
`QueueFull`) when the requests or tokens admitted by all workers together would pass --max-queue /
--max-queue-tokens. An accepted request is answered exactly once: its rows, the model's error, 503 when
its model process dies (`ModelProcessDied`, at once: the socket closes), or 503 at the drain deadline
(`ShuttingDown`). A client that goes away cancels its request in the model process too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, InputError, ModelOutputError, QwenEmbedError, TokenizerError
from . import wire
from .batcher import BatcherFailed, QueueFull, ShuttingDown, Timing, ran_out
from .board import Board
from .metrics import Metrics
from .model_process import ModelError, ModelProcessDied

RECONNECT_S = 0.05
log = logging.getLogger("qwen_embed.server")


@dataclass(frozen=True)
class ModelPlan:
    """One served model under `serve --workers N`, as the supervisor tells each worker: where its folder is
    (the worker reads its config and tokenizer, never its weights), how it is named, and which model
    processes (board slots, on which devices) run it."""

    kind: str  # "embedding" or "reranker"
    model: int  # its index on the board (board.MODELS)
    path: str
    name: str  # the name clients pass as `model`
    label: str  # its name in metrics
    devices: tuple[str, ...]
    slots: tuple[int, ...]
    max_length: int
    batch_tokens: int
    dtype: str | None = None


# errors a model process sends back by name, raised again here as they are (errors.py maps them to statuses)
KNOWN_ERRORS: dict[str, type[QwenEmbedError]] = {
    cls.__name__: cls
    for cls in (ShuttingDown, BatcherFailed, ModelError, ModelOutputError, InputError, TokenizerError, ConfigError)}


def remote_error(name: str, message: str) -> QwenEmbedError:
    """The error a model process reported, as its own class when known, else a ModelError."""
    cls = KNOWN_ERRORS.get(name)
    if cls is None:
        return ModelError(f"the model failed on this request: {name}: {message}")
    return cls(message)


@dataclass
class Pending:
    """A request sent to a model process and not answered yet."""

    future: asyncio.Future[np.ndarray]
    timing: Timing
    tokens: int


@dataclass
class Link:
    """The connection to one model process (`slot` on the board), while it is up."""

    slot: int
    where: str  # for messages: "cpu", "cuda:1"
    generation: int = 0
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, Pending] = field(default_factory=dict)
    tokens: int = 0  # tokens this worker has in flight on it

    @property
    def up(self) -> bool:
        """Connected, and the connection not closing."""
        return self.writer is not None and not self.writer.is_closing()


class RemoteAdmission:
    """A place reserved on the board before tokenization; `submit` sends the request."""

    def __init__(self, batcher: RemoteBatcher) -> None:
        self.batcher = batcher
        self.held = True
        self.tokens = 0

    async def submit(self, seqs: Sequence[Sequence[int]], timing: Timing | None = None) -> np.ndarray:
        """Send the sequences under this reservation; returns their rows in order."""
        assert self.held, "an admission submits once"
        b = self.batcher
        tokens = sum(len(s) for s in seqs)
        try:  # refused or answered, the place is given back
            b.check_room(0, tokens, holding=1, reserved=True)
            b.hold(0, tokens)
            self.tokens = tokens
            return await b.send(seqs, timing or Timing())
        finally:
            self.release()

    def release(self) -> None:
        """Give the place back (answered, failed, or never submitted); idempotent."""
        if self.held:
            self.held = False
            self.batcher.hold(-1, -self.tokens)


class RemoteBatcher:
    """The batcher interface over the model processes of one model (module docstring)."""

    def __init__(self, name: str, model: int, links: Sequence[Link], addresses: str, board: Board, worker: int, *,
                 max_batch_tokens: int, max_queue: int, max_queue_tokens: int, metrics: Metrics | None = None) -> None:
        """`addresses`: the socket path pattern of the model processes, formatted with slot and generation."""
        self.name = name
        self.model = model
        self.links = list(links)
        self.addresses = addresses
        self.board = board
        self.worker = worker
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.max_queue_tokens = max_queue_tokens
        self.metrics = metrics
        self._ids = itertools.count(1)
        self._stopping = False
        self._expired = False  # the drain deadline passed: a reserved request is refused too
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._readers: set[asyncio.Task[None]] = set()
        self._connecting = asyncio.Lock()
        self._link_lost = asyncio.Event()  # set by `_read` when a link goes down: wakes the reconnect loop

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """True while at least one model process is ready: connected, or restarted and not reached yet (the
        next request connects to it, so a worker is ready as soon as the board says so, not one reconnect
        tick later)."""
        return bool(self._live()) or any(self._unreached(link) for link in self.links)

    def _live(self) -> list[Link]:
        """The links connected to a ready model process."""
        return [link for link in self.links if link.up and self.board.ready(link.slot)]

    def _unreached(self, link: Link) -> bool:
        """Its model process is ready in a generation this worker has not connected to yet."""
        return not link.up and self.board.ready(link.slot) and self.board.generation(link.slot) != link.generation

    @property
    def failed(self) -> BatcherFailed | None:
        """Always None: the batch loops run in the model processes, whose failures come back per request
        (BatcherFailed by name) and whose deaths are restarts (`ready`)."""
        return None

    @property
    def pending_requests(self) -> int:
        """Requests this worker holds for the model (admitted, not answered)."""
        return self.board.own(self.worker, self.model)[0]

    def start(self) -> None:
        """Connect to the model processes now and after each restart."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._connect_loop(), name=f"links-{self.name}")

    async def _connect_loop(self) -> None:
        while True:
            await self._connect_ready()
            if all(link.up for link in self.links):  # nothing to reach until a link goes down: sleep till then
                self._link_lost.clear()
                await self._link_lost.wait()
            else:
                await asyncio.sleep(RECONNECT_S)

    async def _connect_ready(self) -> None:
        """Connect to every model process that is ready in a generation this worker has not reached (from the
        reconnect loop, and from a request that finds no connected process)."""
        async with self._connecting:
            for link in self.links:
                if self._unreached(link):
                    g = self.board.generation(link.slot)
                    try:
                        reader, writer = await asyncio.open_unix_connection(self.addresses.format(link.slot, g))
                    except OSError as e:  # it died again before we came: the next generation will do
                        log.debug("cannot reach model process %d of %s: %s", link.slot, self.name, e)
                        continue
                    link.writer, link.generation = writer, g
                    task = asyncio.get_running_loop().create_task(self._read(link, reader))
                    self._readers.add(task)
                    task.add_done_callback(self._readers.discard)

    async def _read(self, link: Link, reader: asyncio.StreamReader) -> None:
        """Answers of one model process until its socket closes; then its requests left get a 503."""
        try:
            while True:
                frame = await wire.read(reader)
                p = link.pending.pop(frame.id, None)
                if p is None:  # cancelled before (its tokens were given back then): the answer is dropped
                    continue
                # given back here also when its client left in this turn of the loop (the future is done): the
                # sender, woken next, finds the request gone and gives nothing back; the answer is dropped
                link.tokens -= p.tokens
                if p.future.done():
                    continue
                if frame.kind == wire.ROWS:
                    p.timing.queue, p.timing.inference = frame.queue_s, frame.inference_s
                    p.future.set_result(wire.array(frame))
                else:
                    p.future.set_exception(remote_error(*wire.error_of(frame)))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if link.writer is not None:
                link.writer.close()
            link.writer = None
            error = ModelProcessDied(f"the model process of {self.name} on {link.where} exited while this request "
                                     "was in it; it is being restarted: retry shortly.")
            for p in link.pending.values():
                if not p.future.done():
                    p.future.set_exception(error)
            link.pending.clear()
            link.tokens = 0
            self._link_lost.set()

    def drain(self, timeout: float | None = None) -> None:
        """Refuse new work; after `timeout` seconds, answer what is still in flight with ShuttingDown."""
        self._stopping = True
        if timeout is not None and self._deadline is None:
            self._deadline = asyncio.get_running_loop().call_later(max(0.0, timeout), self._expire)

    def _expire(self) -> None:
        self._expired = True
        error = ran_out(self.name)
        for link in self.links:
            for rid, p in list(link.pending.items()):
                if not p.future.done():
                    p.future.set_exception(error)
                self._cancel(link, rid)

    async def stop(self, timeout: float | None = None) -> None:
        """Drain (within `timeout` seconds when given), then close the links."""
        self.drain(timeout)
        while any(link.pending for link in self.links):
            await asyncio.sleep(0.01)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for link in self.links:
            if link.writer is not None:
                link.writer.close()
        for task in list(self._readers):
            task.cancel()

    async def call(self, seqs: Sequence[Sequence[int]], timeout: float = 600.0) -> np.ndarray:
        """Run `seqs` outside admission (warm-up: proves the path to a model process), waiting for one
        to be connected, and trying again while the model processes die or restart (a worker that started
        beside a dying model process must not stay unready); until `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            while not self.ready:
                if time.monotonic() > deadline:
                    raise ModelProcessDied(f"no model process of {self.name} became ready in {timeout:.0f} s.")
                await asyncio.sleep(RECONNECT_S)
            try:
                return await self.send(seqs, Timing(), warmup=True)
            except ModelProcessDied:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(RECONNECT_S)

    # -- admission ---------------------------------------------------------------------------------
    def check_room(self, requests: int, tokens: int, holding: int = 0, reserved: bool = False) -> None:
        """Raise QueueFull when `requests` more requests and `tokens` more tokens would not fit the whole
        server's queue (all workers; `holding`: places the caller already holds), ShuttingDown while
        draining (`reserved`: a place granted before the drain, refused only once the drain time ran out).
        A request alone in the queue is always taken, however many tokens it holds."""
        if self._stopping and not reserved:
            raise ShuttingDown("the server is shutting down; retry on another replica.")
        if self._expired:
            raise ran_out(self.name)
        held, held_tokens = self.board.admitted(self.model)
        held -= holding
        if held + requests > self.max_queue:
            raise QueueFull(f"the {self.name} queue is full ({held} requests queued or running, limit "
                            f"{self.max_queue}); retry after the Retry-After seconds.", self._retry_after(held_tokens))
        if held and held_tokens + tokens > self.max_queue_tokens:
            raise QueueFull(f"the {self.name} queue is full ({held_tokens} tokens queued or running, limit "
                            f"{self.max_queue_tokens}); retry after the Retry-After seconds.",
                            self._retry_after(held_tokens))

    def admit(self) -> RemoteAdmission:
        """Reserve a place for one request before its tokenization (QueueFull / ShuttingDown when none)."""
        self.check_room(1, 0)
        self.hold(1, 0)
        return RemoteAdmission(self)

    def hold(self, requests: int, tokens: int) -> None:
        """Count requests and tokens this worker holds (negative: gives them back) on the board."""
        self.board.add(self.worker, self.model, requests, tokens)
        if self.metrics is not None:
            self.metrics.set_queue(self.name, *self.board.own(self.worker, self.model))

    def _retry_after(self, tokens: int) -> int:
        rate = sum(self.board.load(link.slot)[1] for link in self.links)
        return 1 if rate <= 0 else max(1, min(60, math.ceil(tokens / rate)))

    # -- sending -----------------------------------------------------------------------------------
    async def _pick(self) -> Link:
        live = self._live()
        if not live:  # a model process restarted since the last reconnect tick: reach it now
            await self._connect_ready()
            live = self._live()
        if not live:
            raise ModelProcessDied(f"every model process of {self.name} is restarting; retry shortly.")
        return min(live, key=lambda link: self.board.load(link.slot)[0] + link.tokens)

    async def send(self, seqs: Sequence[Sequence[int]], timing: Timing, warmup: bool = False) -> np.ndarray:
        """Send one request to the least-loaded model process; its rows, or its error."""
        link = await self._pick()
        rid = next(self._ids)
        tokens = sum(len(s) for s in seqs)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        link.pending[rid] = Pending(future, timing, tokens)
        link.tokens += tokens
        assert link.writer is not None
        link.writer.writelines(wire.request(rid, seqs, warmup))
        try:
            return await future
        except asyncio.CancelledError:  # the client went away: the model process skips it
            self._cancel(link, rid)
            raise

    def _cancel(self, link: Link, rid: int) -> None:
        p = link.pending.pop(rid, None)
        if p is not None:
            link.tokens -= p.tokens
        if link.up:
            assert link.writer is not None
            link.writer.write(wire.cancel(rid))
