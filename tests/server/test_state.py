"""What the routes share (server/state.py): model lookup by name, readiness, drain.

References: the module docstring (the named model or 404, readiness or 503), docs/server.md's error table
(503: warming up with Retry-After; a failed warm-up, lasting, without Retry-After; shutting down with
`code: shutting_down` and `Connection: close`; a batch loop that died: `code: batcher_failed`, lasting,
restart), its drain section (on SIGTERM new requests answer 503 with `Connection: close`), and the project's
rule for user errors: one line giving the value, the limit and the fix. The services are real ones around the
tiny checkpoints' facts; only the model (`run`, the batcher's seam) is a fake, whose `ready` flag is what a
model pool reports while a model process restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from qwen_embed.server.batcher import Batcher, BatcherFailed, ShuttingDown
from qwen_embed.server.errors import APIError
from qwen_embed.server.facts import ModelFacts
from qwen_embed.server.metrics import Metrics
from qwen_embed.server.pools import Pools
from qwen_embed.server.service import EmbeddingService, RerankService
from qwen_embed.server.settings import ServerSettings
from qwen_embed.server.state import State


class FakeModel:
    """The batcher's seam: token ids -> one zero row each; `ready` as a model pool reports it."""

    def __init__(self) -> None:
        self.ready = True

    def __call__(self, seqs: list[Sequence[int]]) -> np.ndarray:
        return np.zeros((len(seqs), 4), np.float32)


@pytest.fixture(scope="module")
def cpu_pool() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(1)
    yield pool
    pool.shutdown()


Parts = tuple[ServerSettings, Metrics, ThreadPoolExecutor]


@pytest.fixture
def parts(cpu_pool: ThreadPoolExecutor) -> Parts:
    return ServerSettings(embedding_model="emb", reranker_model="rr"), Metrics(), cpu_pool


@pytest.fixture
def emb(tiny_embedding_path: Path, parts: Parts) -> EmbeddingService:
    facts = ModelFacts.from_folder(str(tiny_embedding_path), ["cpu"], None, 64, None)
    return EmbeddingService(facts, FakeModel(), "emb", "emb", *parts)


@pytest.fixture
def rr(tiny_reranker_path: Path, parts: Parts) -> RerankService:
    facts = ModelFacts.from_folder(str(tiny_reranker_path), ["cpu"], None, 128, None)
    return RerankService(facts, "card", FakeModel(), "rr", "rr", *parts)


def make_state(parts: Parts, emb: EmbeddingService | None, rr: RerankService | None, ready: bool = True) -> State:
    settings, metrics, _ = parts
    state = State(settings, emb, rr, metrics, Pools(1, []))
    state.ready = ready
    return state


@pytest.fixture
def state(parts: Parts, emb: EmbeddingService, rr: RerankService) -> Iterator[State]:
    s = make_state(parts, emb, rr)
    yield s
    s.pools.shutdown()


def refused(call: object, *args: object) -> APIError:
    assert callable(call)
    with pytest.raises(APIError) as info:
        call(*args)
    err = info.value
    assert "\n" not in err.message, err.message
    return err


# -- lookup ------------------------------------------------------------------------------------------------------
def test_a_ready_state_gives_the_named_service(state: State, emb: EmbeddingService, rr: RerankService) -> None:
    assert state.embedding_service(None) is emb and state.embedding_service("emb") is emb
    assert state.rerank_service(None) is rr and state.rerank_service("rr") is rr
    assert state.services == [emb, rr] and state.main is emb


def test_main_is_the_reranker_when_it_is_the_only_model(parts: Parts, rr: RerankService) -> None:
    s = make_state(parts, None, rr)
    assert s.services == [rr] and s.main is rr
    s.pools.shutdown()


@pytest.mark.parametrize(("lookup", "model", "message"), [
    ("embedding_service", "rr", "model 'rr' is not served here; the embedding model is 'emb' (GET /v1/models lists "
                                "them)."),
    ("rerank_service", "emb", "model 'emb' is not served here; the reranker is 'rr' (GET /v1/models lists them)."),
    ("embedding_service", "", "model '' is not served here; the embedding model is 'emb' (GET /v1/models lists "
                              "them)."),
    ("embedding_service", "EMB", "model 'EMB' is not served here; the embedding model is 'emb' (GET /v1/models "
                                 "lists them)."),
])
def test_another_models_name_is_a_404(state: State, lookup: str, model: str, message: str) -> None:
    err = refused(getattr(state, lookup), model)
    assert (err.status, err.code, err.param, err.message) == (404, "model_not_found", "model", message)


@pytest.mark.parametrize("model", ["x" * 10_000, "line\nbreak\r" * 50, "\ud800 lone", "名前\x00"], ids=repr)
def test_a_hostile_model_name_is_shown_on_one_short_line(state: State, model: str) -> None:
    err = refused(state.embedding_service, model)
    assert err.status == 404 and len(err.message) < 250
    assert err.message.encode("utf-8")  # sendable as JSON text: no lone surrogate left raw


@pytest.mark.parametrize(("kind", "message"), [
    ("embedding", "this server serves no embedding model (start it with --embedding-model)."),
    ("reranker", "this server serves no reranker (start it with --reranker-model)."),
])
def test_a_model_kind_not_served_is_a_404_saying_how_to_serve_it(parts: Parts, emb: EmbeddingService,
                                                                 rr: RerankService, kind: str, message: str) -> None:
    s = make_state(parts, None, rr) if kind == "embedding" else make_state(parts, emb, None)
    lookup = s.embedding_service if kind == "embedding" else s.rerank_service
    for model in (None, "emb", "rr"):
        err = refused(lookup, model)
        assert (err.status, err.code, err.param, err.message) == (404, "model_not_found", "model", message)
    s.pools.shutdown()


# -- readiness ---------------------------------------------------------------------------------------------------
def test_warming_up_is_a_503_to_retry(state: State) -> None:
    state.ready = False
    for lookup in (state.embedding_service, state.rerank_service):
        err = refused(lookup, None)
        assert (err.status, err.code, err.headers) == (503, "not_ready", {"Retry-After": "1"})
        assert err.message == "not ready: the model is warming up; retry shortly."


def test_a_failed_warm_up_is_a_lasting_503_naming_the_error(state: State) -> None:
    state.ready = False
    state.warmup_error = "ModelOutputError: NaN in the output"
    err = refused(state.embedding_service, None)
    assert (err.status, err.code, err.headers) == (503, "not_ready", {})  # no Retry-After: retrying cannot help
    assert err.message == ("not ready: the warm-up forward pass failed (ModelOutputError: NaN in the output); fix the "
                           "model and restart the server.")


def test_draining_is_a_503_that_closes_the_connection(state: State) -> None:
    state.draining = True
    err = refused(state.rerank_service, "rr")
    assert (err.status, err.code, err.headers) == (503, "shutting_down", {"Connection": "close"})
    assert err.message == "the server is shutting down; retry on another replica."


@pytest.mark.parametrize("other", ["warming up", "warm-up failed"])
def test_draining_wins_over_not_ready(state: State, other: str) -> None:
    """docs/server.md: on SIGTERM new requests answer 503 with Connection: close, whatever else holds."""
    state.ready = False
    state.warmup_error = "RuntimeError: x" if other == "warm-up failed" else None
    state.draining = True
    err = refused(state.embedding_service, None)
    assert (err.code, err.headers) == ("shutting_down", {"Connection": "close"})


@pytest.mark.parametrize("which", ["emb", "rr"])
def test_a_restarting_model_process_is_a_503_to_retry_naming_the_model(state: State, which: str) -> None:
    svc = state.embedding if which == "emb" else state.reranker
    assert svc is not None
    svc.batcher.run.ready = False  # type: ignore[union-attr]
    assert state.down() == f"the model process of {which} is restarting"
    lookup = state.embedding_service if which == "emb" else state.rerank_service
    err = refused(lookup, None)
    assert (err.status, err.code, err.headers) == (503, "model_unavailable", {"Retry-After": "1"})
    assert err.message == f"the model process of {which} is restarting; retry shortly."
    svc.batcher.run.ready = True  # type: ignore[union-attr]
    assert state.down() is None and lookup(None) is svc


def test_draining_wins_over_a_restarting_model_process(state: State) -> None:
    assert state.embedding is not None
    state.embedding.batcher.run.ready = False  # type: ignore[union-attr]
    state.draining = True
    for lookup in (state.embedding_service, state.rerank_service):
        err = refused(lookup, None)
        assert (err.status, err.code, err.headers) == (503, "shutting_down", {"Connection": "close"})


def test_draining_wins_over_a_dead_batch_loop(state: State, emb: EmbeddingService,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    kill_batch_loop(emb, monkeypatch)
    state.draining = True
    err = refused(state.embedding_service, None)
    assert (err.status, err.code, err.headers) == (503, "shutting_down", {"Connection": "close"})


def test_a_restarting_model_process_leaves_the_other_models_routes_open(state: State) -> None:
    assert state.embedding is not None
    state.embedding.batcher.run.ready = False  # type: ignore[union-attr]
    assert refused(state.embedding_service, None).code == "model_unavailable"
    assert state.rerank_service(None) is state.reranker and state.rerank_service("rr") is state.reranker
    assert state.down(state.reranker) is None  # the reranker's own readiness
    assert state.down() == "the model process of emb is restarting"  # /health: every model


def kill_batch_loop(svc: EmbeddingService, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug that kills the batch loop (forming a batch raises, as in test_hardening.py): the request sent gets
    BatcherFailed, and the batcher stays failed."""

    def broken(self: Batcher) -> list[object]:
        raise RuntimeError("a bug in forming the batch")

    async def scenario() -> None:
        assert isinstance(svc.batcher, Batcher)
        monkeypatch.setattr(Batcher, "_take", broken)
        svc.batcher.start()
        adm = svc.batcher.admit()
        with pytest.raises(BatcherFailed):
            await adm.submit([[1, 2, 3]])
        with contextlib.suppress(RuntimeError):
            await svc.batcher.stop(0)

    asyncio.run(scenario())
    assert svc.batcher.failed is not None


def test_a_dead_batch_loop_is_a_lasting_503(state: State, emb: EmbeddingService,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    kill_batch_loop(emb, monkeypatch)
    down = state.down()
    assert down is not None and "RuntimeError: a bug in forming the batch" in down
    err = refused(state.embedding_service, None)
    assert err.status == 503 and "RuntimeError: a bug in forming the batch" in err.message


def test_a_dead_batch_loop_is_answered_as_documented(state: State, emb: EmbeddingService,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    kill_batch_loop(emb, monkeypatch)
    err = refused(state.embedding_service, None)
    assert (err.status, err.code, err.headers) == (503, "batcher_failed", {})  # lasting: no Retry-After
    assert err.message == str(emb.batcher.failed)  # the batcher's own message, as the errors table sends it
    assert "restart it" in err.message and "retry shortly" not in err.message
    assert state.rerank_service(None) is state.reranker  # the other model's loop is alive


# -- drain and start ---------------------------------------------------------------------------------------------
def test_begin_drain_refuses_new_work_in_every_batcher(state: State) -> None:
    async def scenario() -> None:
        state.begin_drain(5.0)
        for svc in state.services:
            with pytest.raises(ShuttingDown, match="shutting down"):
                svc.batcher.admit()
            await svc.batcher.stop(0)

    asyncio.run(scenario())
    assert state.draining
    assert refused(state.embedding_service, None).code == "shutting_down"


def test_stop_starting_stops_the_warm_up_when_one_holds_up_the_start(state: State) -> None:
    state.stop_starting()  # nothing holds it up: nothing to do
    calls: list[str] = []
    state.stop_warmup = lambda: calls.append("stop")
    state.stop_starting()
    assert calls == ["stop"]


@pytest.mark.parametrize("error", [RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported "
                                                 "asynchronously\r\n  at some point"), RuntimeError("")])
def test_a_failed_warm_up_is_recorded_on_one_line(parts: Parts, emb: EmbeddingService, error: Exception,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """app.warm_up keeps the error for /health and every 503, which are one line."""
    from qwen_embed.server.app import warm_up

    async def broken() -> None:
        raise error

    monkeypatch.setattr(emb, "warmup", broken)
    s = State(parts[0], emb, None, parts[1], Pools(1, []))
    asyncio.run(warm_up(s))
    assert s.warmup_error is not None and not s.ready
    assert "\n" not in s.warmup_error and "\r" not in s.warmup_error and s.warmup_error.startswith("RuntimeError:")
    if str(error):
        assert s.warmup_error == ("RuntimeError: CUDA error: out of memory CUDA kernel errors might be reported "
                                  "asynchronously at some point")
    err = refused(s.embedding_service, None)
    assert (err.code, err.headers) == ("not_ready", {})
    s.pools.shutdown()


def test_a_new_state_is_not_ready_and_knows_when_it_started(parts: Parts, emb: EmbeddingService) -> None:
    before = int(time.time())
    s = State(parts[0], emb, None, parts[1], Pools(1, []))
    assert before <= s.started <= int(time.time())
    assert (s.ready, s.draining, s.warmup_error, s.stop_warmup) == (False, False, None, None)
    assert refused(s.embedding_service, None).code == "not_ready"
    s.pools.shutdown()
