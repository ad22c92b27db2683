"""The FastAPI app: `create_app(settings, embedder=..., reranker=...)` wires the parts together.

It takes loaded models (the CLI loads them first, so a bad path fails before the port opens), makes
the threads (pools.py), one service and batcher per model (service.py), the shared state (state.py),
the exception handlers (handlers.py), the Guard middleware (middleware.py), CORS when asked, and the
routes of each API (routes/). At startup each model's batcher starts and one warm-up forward pass
runs in the background; until it has succeeded, /health and the model routes answer 503. At shutdown
the batchers drain within --graceful-timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..embedder import Embedder
from ..errors import QwenEmbedError
from ..reranker import Reranker
from . import handlers
from .board import Board
from .facts import ModelFacts
from .metrics import Metrics, metrics_label
from .middleware import Guard
from .model_pool import ModelPool, start_pool
from .model_process import ModelSpec
from .pools import Pools
from .remote import Link, ModelPlan, RemoteBatcher
from .routes import add_routes
from .service import EmbeddingService, RerankService
from .settings import ServerSettings
from .state import State

log = logging.getLogger("qwen_embed.server")


def create_app(settings: ServerSettings, *, embedder: Embedder | None = None,
               reranker: Reranker | None = None, devices: Sequence[str] | None = None,
               max_lengths: Mapping[str, int] | None = None) -> FastAPI:
    """The server app around loaded models (one or both), or, given `devices`, around model processes
    (one per device and model, loaded from settings.embedding_model / reranker_model; model_pool.py):
    this process then holds only tokenizers and configs; `max_lengths` ({"reranker": 256}) gives a model
    a max length other than settings.max_length."""
    if devices is not None:
        return create_pooled_app(settings, list(devices), max_lengths or {})
    if embedder is None and reranker is None:
        raise QwenEmbedError("create_app needs an embedder, a reranker or both.")
    pools = Pools(settings.tokenization_workers, [m.device for m in (embedder, reranker) if m is not None])
    metrics = Metrics()
    emb = rr = None
    if embedder is not None:
        name = settings.embedding_name or settings.embedding_model or embedder.name
        emb = EmbeddingService(ModelFacts.of(embedder), partial(embedder.embed_ids, normalize=False, progress=False),
                               name, metrics_label(name), settings, metrics, pools.cpu,
                               pools.worker_for(embedder.device))
    if reranker is not None:
        name = settings.reranker_name or settings.reranker_model or reranker.name
        rr = RerankService(ModelFacts.of(reranker), reranker.template.name,
                           partial(reranker.score_ids, progress=False), name, metrics_label(name), settings,
                           metrics, pools.cpu, pools.worker_for(reranker.device))
    return assemble(settings, State(settings, emb, rr, metrics, pools))


def create_pooled_app(settings: ServerSettings, devices: list[str], max_lengths: Mapping[str, int]) -> FastAPI:
    """The app in front of model processes on `devices` (each started and loaded before this returns)."""
    if not settings.embedding_model and not settings.reranker_model:
        raise QwenEmbedError("serving on model processes needs --embedding-model, --reranker-model or both.")
    pools = Pools(settings.tokenization_workers, [])
    metrics = Metrics()
    emb = rr = None
    started: list[ModelPool] = []
    try:
        for kind, model in (("embedding", settings.embedding_model), ("reranker", settings.reranker_model)):
            if not model:
                continue
            facts = ModelFacts.from_folder(model, devices, settings.dtype, max_lengths.get(kind, settings.max_length),
                                           settings.max_batch_tokens)
            spec = ModelSpec(kind, str(facts.path), dtype=settings.dtype, max_length=facts.max_length,  # type: ignore[arg-type]
                             batch_tokens=facts.batch_tokens, compile=settings.compile,
                             template=settings.reranker_template)
            pool = start_pool(spec, devices)
            started.append(pool)
            if kind == "embedding":
                name = settings.embedding_name or model
                emb = EmbeddingService(facts, pool, name, metrics_label(name), settings, metrics, pools.cpu,
                                       pool.worker(), pool.inflight)
            else:
                name = settings.reranker_name or model
                rr = RerankService(facts, settings.reranker_template, pool, name, metrics_label(name), settings,
                                   metrics, pools.cpu, pool.worker(), pool.inflight)
    except BaseException:
        for p in started:
            p.close(2.0)
        raise
    return assemble(settings, State(settings, emb, rr, metrics, pools), started)


def create_worker_app(settings: ServerSettings, models: Sequence[ModelPlan], board: Board, worker: int,
                      addresses: str, metrics_dir: str) -> FastAPI:
    """The app of HTTP worker `worker` under `serve --workers N` (supervisor.py): tokenizers and configs
    only; each model's requests go to its model processes (remote.py), which batch them with the other
    workers' requests. Metrics are recorded into `metrics_dir` and merged from every process on read."""
    pools = Pools(settings.tokenization_workers, [])
    metrics = Metrics(metrics_dir)
    emb = rr = None
    for m in models:
        facts = ModelFacts.from_folder(m.path, list(m.devices), m.dtype, m.max_length, m.batch_tokens)
        remote = RemoteBatcher(m.label, m.model, [Link(s, d) for s, d in zip(m.slots, m.devices, strict=True)],
                               addresses, board, worker, max_batch_tokens=facts.batch_tokens,
                               max_queue=settings.max_queue, max_queue_tokens=settings.max_queue_tokens,
                               metrics=metrics)
        if m.kind == "embedding":
            emb = EmbeddingService(facts, remote, m.name, m.label, settings, metrics, pools.cpu)
        else:
            rr = RerankService(facts, settings.reranker_template, remote, m.name, m.label, settings, metrics,
                               pools.cpu)
    # a worker takes connections once warm: a replaced worker must not answer 503 beside a ready one
    return assemble(settings, State(settings, emb, rr, metrics, pools), warm_first=True,
                    on_ready=partial(board.set_serving, worker))


def assemble(settings: ServerSettings, state: State, model_pools: Sequence[ModelPool] = (),
             warm_first: bool = False, on_ready: Callable[[], None] | None = None) -> FastAPI:
    """The FastAPI app of `state`: lifespan (batchers, warm-up, drain, model processes), handlers,
    middleware, routes. `warm_first`: the warm-up ends before the app starts (and the server listens);
    `on_ready` is called then."""
    pools = state.pools

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for svc in state.services:
            svc.batcher.start()
        if warm_first:
            warming = asyncio.create_task(warm_up(state))
            loop = asyncio.get_running_loop()

            def stop_warmup() -> None:  # from a signal handler: through the loop, which it wakes
                loop.call_soon_threadsafe(warming.cancel)

            state.stop_warmup = stop_warmup
            await asyncio.wait([warming])  # returns when it ends or is cancelled (`State.stop_starting`)
            state.stop_warmup = None
            if warming.cancelled():
                log.info("warm-up stopped: the server is stopping")
            elif on_ready is not None:
                on_ready()
        task = asyncio.create_task(asyncio.sleep(0) if warm_first else warm_up(state))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for svc in state.services:
                await svc.batcher.stop(settings.graceful_timeout)
            pools.shutdown()
            for mp in model_pools:
                mp.close()

    app = FastAPI(title="qwen-embed", version=__version__, lifespan=lifespan,
                  description="Qwen3 Embedding and Reranker: OpenAI embeddings, Cohere/Jina rerank and TEI routes.")
    app.state.qe = state
    handlers.install(app)
    app.add_middleware(Guard, state=state)
    if settings.cors_origins:  # outermost: a browser's preflight is answered before auth
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["x-total-time", "x-tokenization-time",
                                                                 "x-queue-time", "x-inference-time"])
    add_routes(app, state)
    return app


async def warm_up(state: State) -> None:
    """One forward pass per model; /health turns 200 after it."""
    if not state.settings.warmup:
        state.ready = True
        return
    try:
        for svc in state.services:
            await svc.warmup()
        state.ready = True
        log.info("warm-up done; serving %s", ", ".join(s.name for s in state.services))
    except Exception as e:
        state.warmup_error = " ".join(f"{type(e).__name__}: {e}".split())  # one line (a CUDA error spans several)
        if isinstance(e, QwenEmbedError):  # a reason (NaN output of broken weights), not a bug: one line
            log.error("warm-up failed; /health stays 503: %s", e)
        else:
            log.exception("warm-up failed")
