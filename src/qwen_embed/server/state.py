"""What the routes share: the services, readiness, drain, metrics, and the lookups every route makes.

`State.embedding_service(model)` / `rerank_service(model)` find the served model a request names
(404 otherwise), check that model's readiness (503 while draining, warming up, or while its own model process
restarts or its batch loop has died) and are where each route starts; /health asks about every model (`down()`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .errors import APIError, as_api_error
from .metrics import Metrics
from .pools import Pools
from .service import EmbeddingService, RerankService, Service
from .settings import ServerSettings


class State:
    """Services, readiness, metrics, pools of one app."""

    def __init__(self, settings: ServerSettings, embedding: EmbeddingService | None, reranker: RerankService | None,
                 metrics: Metrics, pools: Pools) -> None:
        self.settings = settings
        self.embedding = embedding
        self.reranker = reranker
        self.metrics = metrics
        self.pools = pools
        self.ready = False
        self.draining = False
        self.warmup_error: str | None = None
        self.started = int(time.time())
        self.stop_warmup: Callable[[], None] | None = None  # set while a warm-up holds up the start (lifespan)

    @property
    def services(self) -> list[Service]:
        return [s for s in (self.embedding, self.reranker) if s is not None]

    @property
    def main(self) -> Service:
        """The embedding service when there is one, else the reranker."""
        svc = self.embedding or self.reranker
        assert svc is not None
        return svc

    def stop_starting(self) -> None:
        """SIGTERM / Ctrl-C before the server started: stop the warm-up that holds up the start (a worker of
        `serve --workers` waiting on a model process that is gone or slow), so that the process ends at once
        instead of after the warm-up. Safe to call from a signal handler."""
        if self.stop_warmup is not None:
            self.stop_warmup()

    def begin_drain(self, timeout: float) -> None:
        """SIGTERM: refuse new work (503), finish the accepted work within `timeout` seconds."""
        self.draining = True
        for svc in self.services:
            svc.batcher.drain(timeout)

    def down(self, svc: Service | None = None) -> str | None:
        """Why `svc` (any served model when None: /health) cannot run now: its batch loop died (lasting), or
        its `run` reports not ready (a model process restarting); else None."""
        for s in self.services if svc is None else [svc]:
            if (failed := s.batcher.failed) is not None:  # the batch loop died (a bug): lasting
                return str(failed)
            if not s.batcher.ready:
                return f"the model process of {s.name} is restarting"
        return None

    def check_ready(self, svc: Service) -> None:
        """503 unless `svc` can take a request now. Draining wins (the client must go to another replica);
        then `svc`'s own model only (another model's restart leaves this one's routes open): a dead batch
        loop (`batcher_failed` by the errors table, lasting), a restarting model process (retry); then
        the warm-up (failed: lasting; running: retry)."""
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another replica.", code="shutting_down",
                           headers={"Connection": "close"})
        if (failed := svc.batcher.failed) is not None:
            err = as_api_error(failed)
            assert err is not None  # BatcherFailed is in the table
            raise err
        down = self.down(svc)
        if down is not None:
            raise APIError(503, f"{down}; retry shortly.", code="model_unavailable", headers={"Retry-After": "1"})
        if self.warmup_error is not None:  # never retried: the model is broken (NaN output) or did not fit
            raise APIError(503, f"not ready: the warm-up forward pass failed ({self.warmup_error}); fix the model "
                           "and restart the server.", code="not_ready")
        if not self.ready:
            raise APIError(503, "not ready: the model is warming up; retry shortly.", code="not_ready",
                           headers={"Retry-After": "1"})

    def embedding_service(self, model: str | None, *, ready: bool = True) -> EmbeddingService:
        """The embedding service (404 when none, or named otherwise); 503 unless it can take a request now,
        when `ready` (not for what needs no model: its prompts, its tokenizer)."""
        svc = self.embedding
        if svc is None:
            raise APIError(404, "this server serves no embedding model (start it with --embedding-model).",
                           param="model", code="model_not_found")
        self._check_name(svc, model, "the embedding model")
        if ready:
            self.check_ready(svc)
        return svc

    def rerank_service(self, model: str | None) -> RerankService:
        svc = self.reranker
        if svc is None:
            raise APIError(404, "this server serves no reranker (start it with --reranker-model).",
                           param="model", code="model_not_found")
        self._check_name(svc, model, "the reranker")
        self.check_ready(svc)
        return svc

    def _check_name(self, svc: Service, model: str | None, what: str) -> None:
        if model is not None and model != svc.name:
            raise APIError(404, f"model {model[:100]!r} is not served here; {what} is {svc.name!r} "
                           "(GET /v1/models lists them).", param="model", code="model_not_found")
