"""The FastAPI app: OpenAI embeddings, Cohere/Jina rerank, TEI routes, health, metrics.

`create_app(settings, embedder=..., reranker=...)` takes loaded models (the CLI loads them first, so a
bad path fails before the port opens). At startup each model's batcher starts and one warm-up forward
pass runs in the background; until it has succeeded, /health and the model routes answer 503.

Nothing blocks the event loop: tokenization and response encoding run in a thread pool, each model in
its own worker thread behind its batcher. A pure ASGI middleware (`Guard`) checks the API key (constant
time), the body size, counts requests by route and status, and adds x-total-time. Every error has the
OpenAI error shape (errors.py); exception handlers map validation, HTTP and library errors to it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..embedder import Embedder
from ..errors import QwenEmbedError
from ..reranker import Reranker
from . import schemas as S
from .batcher import Timing
from .errors import APIError, PayloadTooLarge, error_body
from .metrics import Metrics
from .service import EmbeddingService, RerankService, Service, check_unicode
from .settings import ServerSettings

log = logging.getLogger("qwen_embed.server")
UNION_HELP = {
    "input": "a string, a list of strings, a list of token ids, or a list of token-id lists",
    "inputs": "a string, a list of strings, a list of token ids, or a list of token-id lists",
    "documents": 'a list of strings or {"text": ...} objects',
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)
}


class State:
    """What the routes share: services, readiness, metrics, the pool."""

    def __init__(self, settings: ServerSettings, embedding: EmbeddingService | None, reranker: RerankService | None,
                 metrics: Metrics, pool: ThreadPoolExecutor) -> None:
        self.settings = settings
        self.embedding = embedding
        self.reranker = reranker
        self.metrics = metrics
        self.pool = pool
        self.ready = False
        self.warmup_error: str | None = None
        self.started = int(time.time())

    @property
    def services(self) -> list[Service]:
        return [s for s in (self.embedding, self.reranker) if s is not None]


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def timing_headers(t: Timing) -> dict[str, str]:
    """TEI-style stage times in milliseconds (x-total-time is added by Guard to every response)."""
    ms = {"x-tokenization-time": t.tokenization, "x-queue-time": t.queue, "x-inference-time": t.inference}
    return {k: f"{v * 1000:.3f}" for k, v in ms.items()}


# -- middleware -------------------------------------------------------------------------------------
class Guard:
    """Auth, body size limit, request metrics and x-total-time, as a pure ASGI middleware."""

    def __init__(self, app: ASGIApp, state: State, known_paths: Callable[[], set[str]]) -> None:
        self.app = app
        self.state = state
        self.known_paths = known_paths
        key = state.settings.api_key
        self.key = key.encode() if key else None
        self.public = set(state.settings.public_paths)
        self.limit = state.settings.max_payload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path: str = scope["path"]
        route = path if path in self.known_paths() else "other"
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-total-time", f"{(time.perf_counter() - start) * 1000:.3f}".encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            denial = self.check(scope, path)
            if denial is not None:
                await denial(scope, receive, send_wrapper)
                return
            await self.app(scope, self.limited(receive), send_wrapper)
        finally:
            self.state.metrics.count_request(route, status)

    def check(self, scope: Scope, path: str) -> Response | None:
        headers = dict(scope["headers"])
        if self.key is not None and path not in self.public:
            auth = headers.get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if not auth:
                return error_response(401, "missing API key: send the header `Authorization: Bearer <key>`.",
                                      {"WWW-Authenticate": "Bearer"})
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                return error_response(401, "invalid API key.", {"WWW-Authenticate": "Bearer"})
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return error_response(400, f"Content-Length {length[:40]!r} is not a number.")
            if n > self.limit:
                return error_response(413, f"the request body has {n} bytes, over the {self.limit}-byte limit; "
                                      "send fewer or shorter inputs.")
        return None

    def limited(self, receive: Receive) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self.limit)
            return message

        return wrapped


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# -- exception handlers -----------------------------------------------------------------------------
def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.message, exc.headers, exc.param, exc.code)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = detail.get("ctx") or {}
        return error_response(400, f"the body is not valid JSON ({ctx.get('error', 'parse error')}).")
    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.lower():
        return error_response(400, f"send the body as JSON with `Content-Type: application/json` "
                              f"(got {ctype[:60]!r}).")
    if any(e.get("type") == "model_attributes_type" or (e.get("type") == "dict_type" and not e["loc"][1:])
           for e in errors):
        return error_response(422, "the body must be a JSON object.")
    by_field: dict[str, list[dict[str, Any]]] = {}
    for e in errors:
        by_field.setdefault(_loc(tuple(e["loc"][:2])).split(".")[0], []).append(dict(e))
    parts = []
    for name, errs in list(by_field.items())[:3]:
        loc = [p for p in errs[0]["loc"] if p != "body"]
        if name in UNION_HELP and not any(e["type"] == "missing" and len(loc) == 1 for e in errs):
            idx = next((p for e in errs for p in e["loc"] if isinstance(p, int)), None)
            at = f" ({name}[{idx}] is not)" if idx is not None else ""
            parts.append(f"`{name}` must be {UNION_HELP[name]}{at}")
        else:
            parts.append(f"`{_loc(tuple(errs[0]['loc']))}`: {errs[0]['msg']}")
    more = f" (and {len(by_field) - 3} more fields)" if len(by_field) > 3 else ""
    return error_response(422, "; ".join(parts) + more, param=next(iter(by_field), None))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status, detail = exc.status_code, str(exc.detail)
    if status == 404:
        detail = f"no route {request.method} {request.url.path}; see GET /docs for the routes."
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    elif status == 400 and "parsing the body" in detail:
        detail = "the body cannot be parsed: send UTF-8 JSON."
    return error_response(status, detail, dict(exc.headers or {}))


async def on_library_error(request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc))


async def on_bug(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); this is a bug in qwen-embed.")


# -- the app ----------------------------------------------------------------------------------------
def create_app(settings: ServerSettings, *, embedder: Embedder | None = None,
               reranker: Reranker | None = None) -> FastAPI:
    """The server app around loaded models (one or both)."""
    if embedder is None and reranker is None:
        raise QwenEmbedError("create_app needs an embedder, a reranker or both.")
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=settings.tokenization_workers, thread_name_prefix="tokenize")
    # two models on one CUDA device share one worker thread (graph capture must not race the other's kernels)
    shared = None
    if embedder is not None and reranker is not None and embedder.device.type == "cuda" \
            and embedder.device == reranker.device:
        shared = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-cuda")
    emb = None if embedder is None else EmbeddingService(
        embedder, settings.embedding_name or settings.embedding_model or embedder.name, settings, metrics, pool,
        shared)
    rr = None if reranker is None else RerankService(
        reranker, settings.reranker_name or settings.reranker_model or reranker.name, settings, metrics, pool,
        shared)
    state = State(settings, emb, rr, metrics, pool)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for svc in state.services:
            svc.batcher.start()
        task = asyncio.create_task(warm_up(state))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for svc in state.services:
                await svc.batcher.stop()
            if shared is not None:
                shared.shutdown(wait=True)
            pool.shutdown(wait=True)

    app = FastAPI(title="qwen-embed", version=__version__, lifespan=lifespan,
                  description="Qwen3 Embedding and Reranker: OpenAI embeddings, Cohere/Jina rerank and TEI routes.")
    app.state.qe = state
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(QwenEmbedError, on_library_error)
    app.add_exception_handler(Exception, on_bug)
    paths: set[str] = set()
    app.add_middleware(Guard, state=state, known_paths=lambda: paths)
    add_routes(app, state)
    paths.update(getattr(r, "path", "") for r in app.routes)
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
        state.warmup_error = f"{type(e).__name__}: {e}"
        log.exception("warm-up failed")


def add_routes(app: FastAPI, state: State) -> None:
    def ready() -> None:
        if not state.ready:
            why = state.warmup_error or "the model is warming up"
            raise APIError(503, f"not ready: {why}; retry shortly.", code="not_ready", headers={"Retry-After": "1"})

    def embedding_service(model: str | None) -> EmbeddingService:
        svc = state.embedding
        if svc is None:
            raise APIError(404, "this server serves no embedding model (start it with --embedding-model).",
                           param="model", code="model_not_found")
        if model is not None and model != svc.name:
            raise APIError(404, f"model {model[:100]!r} is not served here; the embedding model is {svc.name!r} "
                           "(GET /v1/models lists them).", param="model", code="model_not_found")
        ready()
        svc.batcher.check_room(1, 0)  # a full queue answers 429 before any tokenization
        return svc

    def rerank_service(model: str | None) -> RerankService:
        svc = state.reranker
        if svc is None:
            raise APIError(404, "this server serves no reranker (start it with --reranker-model).",
                           param="model", code="model_not_found")
        if model is not None and model != svc.name:
            raise APIError(404, f"model {model[:100]!r} is not served here; the reranker is {svc.name!r} "
                           "(GET /v1/models lists them).", param="model", code="model_not_found")
        ready()
        svc.batcher.check_room(1, 0)  # a full queue answers 429 before any tokenization
        return svc

    async def encoded(svc: Service, payload: Callable[[], Any], timing: Timing) -> Response:
        body = await svc.off_loop(lambda: json_bytes(payload()))
        return Response(body, media_type="application/json", headers=timing_headers(timing))

    # -- OpenAI embeddings ---------------------------------------------------------------------
    @app.post("/v1/embeddings", response_model=S.EmbeddingResponse, responses=ERRORS, tags=["openai"])
    async def embeddings(req: S.EmbeddingRequest) -> Response:
        """Embeddings in the OpenAI shape; `encoding_format=base64` gives little-endian float32."""
        svc = embedding_service(req.model)
        dim = svc.check_dim(req.dimensions)
        timing = Timing()
        seqs = await svc.prepare(req.input, instruction=req.instruction, input_type=req.input_type,
                                 truncate=req.truncate, what="input", timing=timing)
        vecs = await svc.embed(seqs, dim, True, timing)
        tokens = sum(len(s) for s in seqs)
        as_b64 = req.encoding_format == "base64"

        def payload() -> dict[str, Any]:
            def enc(v: np.ndarray) -> Any:
                return base64.b64encode(v.astype("<f4").tobytes()).decode() if as_b64 else v.tolist()
            data = [{"object": "embedding", "index": i, "embedding": enc(v)} for i, v in enumerate(vecs)]
            return {"object": "list", "data": data, "model": svc.name,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        return await encoded(svc, payload, timing)

    # -- Cohere / Jina rerank -------------------------------------------------------------------
    async def cohere_rerank(req: S.RerankRequest) -> Response:
        """Rerank in the Cohere / Jina shape: results sorted by relevance_score, best first."""
        svc = rerank_service(req.model)
        docs = [d if isinstance(d, str) else d.text for d in req.documents]
        top_n = check_top_n(req.top_n)
        timing = Timing()
        seqs = await svc.prepare(req.query, docs, instruction=req.instruction,
                                 max_tokens_per_doc=req.max_tokens_per_doc, truncate=req.truncate,
                                 what="documents", timing=timing)
        scores = await svc.score(seqs, timing)
        tokens = sum(len(s) for s in seqs)

        def payload() -> dict[str, Any]:
            results = []
            for i in ranked(scores)[:top_n]:
                item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
                if req.return_documents:
                    item["document"] = {"text": docs[i]}
                results.append(item)
            return {"id": str(uuid.uuid4()), "model": svc.name, "results": results,
                    "usage": {"total_tokens": tokens}}

        return await encoded(svc, payload, timing)

    for path in ("/v1/rerank", "/v2/rerank"):
        app.post(path, response_model=S.RerankResponse, responses=ERRORS, tags=["rerank"])(cohere_rerank)

    # -- TEI ---------------------------------------------------------------------------------
    @app.post("/embed", response_model=list[list[float]], responses=ERRORS, tags=["tei"])
    async def tei_embed(req: S.EmbedRequest) -> Response:
        """TEI: a list of embeddings (normalized unless `normalize=false`)."""
        svc = embedding_service(req.model)
        dim = svc.check_dim(req.dimensions)
        timing = Timing()
        seqs = await svc.prepare(req.inputs, instruction=req.instruction, input_type=None, truncate=req.truncate,
                                 what="inputs", timing=timing)
        vecs = await svc.embed(seqs, dim, req.normalize, timing)
        return await encoded(svc, lambda: vecs.tolist(), timing)

    @app.post("/rerank", response_model=list[S.TEIRank], responses=ERRORS, tags=["tei"])
    async def tei_rerank(req: S.TEIRerankRequest) -> Response:
        """TEI: `[{index, score, text?}]` sorted by score, best first."""
        svc = rerank_service(req.model)
        timing = Timing()
        seqs = await svc.prepare(req.query, req.texts, instruction=req.instruction, max_tokens_per_doc=None,
                                 truncate=req.truncate, what="texts", timing=timing)
        scores = await svc.score(seqs, timing)

        def payload() -> list[dict[str, Any]]:
            out = []
            for i in ranked(scores):
                s = float(scores[i])
                if req.raw_scores:
                    p = min(max(s, 1e-38), 1 - 1e-7)
                    s = math.log(p) - math.log1p(-p)
                item: dict[str, Any] = {"index": i, "score": s}
                if req.return_text:
                    item["text"] = req.texts[i]
                out.append(item)
            return out

        return await encoded(svc, payload, timing)

    @app.post("/tokenize", response_model=list[list[S.SimpleToken]], responses=ERRORS, tags=["tei"])
    async def tokenize(req: S.TokenizeRequest) -> Response:
        """TEI: tokens of each input, with the end token and truncation as embedded (add_special_tokens)."""
        svc: Service = state.embedding or state.reranker  # type: ignore[assignment]
        texts = [req.inputs] if isinstance(req.inputs, str) else req.inputs
        svc.check_count(len(texts), "inputs")
        for i, t in enumerate(texts):
            if not t:
                raise APIError(400, f"inputs[{i}] is an empty string.", param="inputs")
        timing = Timing()
        start = time.perf_counter()
        toks = await svc.off_loop(lambda: tokens_of(svc, texts, req.add_special_tokens))
        timing.tokenization = time.perf_counter() - start
        return await encoded(svc, lambda: toks, timing)

    @app.get("/info", tags=["tei"])
    async def info() -> dict[str, Any]:
        """TEI-style facts about the served model(s)."""
        main = state.embedding or state.reranker
        assert main is not None
        s = state.settings

        def describe(svc: Service) -> dict[str, Any]:
            model = svc.embedder if isinstance(svc, EmbeddingService) else svc.reranker  # type: ignore[attr-defined]
            kind = ({"embedding": {"pooling": "last_token"}} if isinstance(svc, EmbeddingService)
                    else {"reranker": {"score": "yes/no next-token probability"}})
            return {"model_id": svc.name, "model_sha": None, "model_dtype": str(model.checkpoint.dtype)
                    .removeprefix("torch."), "model_type": kind, "max_input_length": svc.max_length,
                    "hidden_size": model.config.hidden_size, "device": str(model.checkpoint.device)}

        return {**describe(main), "max_concurrent_requests": s.max_queue, "max_batch_tokens":
                main.batcher.max_batch_tokens, "max_batch_requests": s.max_batch_requests,
                "max_client_batch_size": s.max_inputs, "tokenization_workers": s.tokenization_workers,
                "version": __version__, "models": [describe(x) for x in state.services]}

    # -- discovery, health, metrics ---------------------------------------------------------------
    @app.get("/v1/models", response_model=S.ModelList, tags=["openai"])
    async def models() -> dict[str, Any]:
        """The served models, OpenAI shape (`kind` tells embedding from reranker)."""
        return {"object": "list", "data": [
            {"id": svc.name, "object": "model", "created": state.started, "owned_by": "qwen-embed", "kind": svc.kind}
            for svc in state.services]}

    @app.get("/health", responses={503: {"model": S.ErrorResponse}}, tags=["ops"])
    async def health() -> Response:
        """200 once a warm-up forward pass has succeeded, 503 before."""
        if state.ready:
            return JSONResponse({"status": "ok"})
        why = state.warmup_error or "warming up"
        return error_response(503, f"not ready: {why}", {"Retry-After": "1"}, code="not_ready")

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def check_top_n(top_n: int | None) -> int | None:
    if top_n is not None and top_n < 1:
        raise APIError(400, f"top_n={top_n} must be at least 1 (or left out for all).", param="top_n")
    return top_n


def ranked(scores: np.ndarray) -> list[int]:
    """Indices by score, best first; ties keep input order (as Reranker.rerank)."""
    return sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))


def tokens_of(svc: Service, texts: list[str], add_special: bool) -> list[list[dict[str, Any]]]:
    """TEI /tokenize rows: id, text, special, start, stop (None for the end token we append)."""
    check_unicode(texts, "inputs")
    tok = svc.tokenizer
    out = []
    for enc in tok.tok.encode_batch(texts, add_special_tokens=False):
        ids, offsets = list(enc.ids), list(enc.offsets)
        if add_special:
            ids, offsets = ids[: svc.max_length - 1], offsets[: svc.max_length - 1]
        row = [{"id": i, "text": tok.decode([i]), "special": False, "start": a, "stop": b}
               for i, (a, b) in zip(ids, offsets, strict=True)]
        if add_special:
            row.append({"id": tok.eos_id, "text": tok.decode([tok.eos_id]), "special": True, "start": None,
                        "stop": None})
        out.append(row)
    return out

