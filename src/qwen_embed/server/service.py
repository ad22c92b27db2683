"""One service per served model: request values -> token ids (off the event loop) -> batcher -> rows.

`EmbeddingService` turns texts or client token ids into sequences exactly as `Embedder.tokenize` does
(template, end token once and last, truncation keeping it), sends them through the model's batcher,
whose worker runs `Embedder.embed_ids(..., normalize=False)` on merged batches, and finishes each
request's rows as `Embedder.encode` would (Matryoshka slice first, then L2 normalisation, with the
core's own functions), so that a served vector equals an in-process one. `RerankService` builds inputs
with `Reranker.build_input_ids` and scores merged batches with `Reranker.score_ids`.

Tokenization and response formatting run in a shared thread pool (`cpu_pool`); the model runs in
the batcher's single worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch

from ..embedder import DEFAULT_INSTRUCTION, Embedder
from ..pooling import check_dim, l2_normalize, truncate_dim
from ..reranker import Reranker
from ..tokenizer import QwenTokenizer
from .batcher import Batcher, Timing
from .errors import APIError
from .metrics import Metrics
from .settings import ServerSettings

T = TypeVar("T")
WARMUP_TEXT = "warm-up"


def check_unicode(texts: Sequence[str], what: str) -> None:
    """JSON may carry lone surrogates (\\ud800) that no tokenizer takes: a 400 naming the input."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for i, t in enumerate(texts):
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise APIError(400, f"{what}[{i}] holds a lone surrogate ({t[e.start]!r} at {e.start}); send valid "
                               "Unicode text.", param=what) from None


class Service:
    """What both services share: names, batcher, pool, limits."""

    kind = "model"

    def __init__(self, name: str, tokenizer: QwenTokenizer, max_length: int, vocab_size: int,
                 run: Callable[[list[Sequence[int]]], np.ndarray], settings: ServerSettings,
                 metrics: Metrics, cpu_pool: ThreadPoolExecutor, batch_tokens: int,
                 worker: ThreadPoolExecutor | None = None) -> None:
        self.name = name
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.vocab_size = vocab_size
        self.settings = settings
        self.metrics = metrics
        self.cpu_pool = cpu_pool
        self.batcher = Batcher(
            name, run, max_batch_tokens=batch_tokens, max_batch_requests=settings.max_batch_requests,
            max_wait_s=settings.max_wait_ms / 1000.0, max_queue=settings.max_queue,
            max_queue_tokens=settings.max_queue_tokens, metrics=metrics, worker=worker,
            max_inflight=settings.inflight_batches,
        )

    async def off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a CPU-bound function in the shared pool."""
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    def check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise APIError(400, f"{what} is empty; pass at least one.", param=what)
        if n > self.settings.max_inputs:
            raise APIError(413, f"{n} {what} is over the limit of {self.settings.max_inputs} per request; "
                           "split the request.", param=what, code="too_many_inputs")

    def too_long(self, index: int, length: int, what: str) -> APIError:
        return APIError(413, f"{what}[{index}] has {length} tokens, over the model's max length "
                        f"{self.max_length}; shorten it or send truncate=true.", param=what, code="input_too_long")

    async def tokenized(self, fn: Callable[[], list[list[int]]], timing: Timing) -> list[list[int]]:
        start = time.perf_counter()
        seqs = await self.off_loop(fn)
        timing.tokenization = time.perf_counter() - start
        self.metrics.observe_tokenization(self.name, timing.tokenization, [len(s) for s in seqs])
        return seqs

    async def warmup(self) -> None:
        raise NotImplementedError


class EmbeddingService(Service):
    kind = "embedding"

    def __init__(self, embedder: Embedder, name: str, settings: ServerSettings, metrics: Metrics,
                 cpu_pool: ThreadPoolExecutor, worker: ThreadPoolExecutor | None = None) -> None:
        self.embedder = embedder
        super().__init__(name, embedder.tokenizer, embedder.max_length, embedder.config.vocab_size, self._run,
                         settings, metrics, cpu_pool, embedder.engine.batch_tokens, worker)
        self.eos_id = embedder.tokenizer.eos_id

    def _run(self, seqs: list[Sequence[int]]) -> np.ndarray:
        return self.embedder.embed_ids(seqs, normalize=False, progress=False)  # [n, H] float32

    # -- inputs ------------------------------------------------------------------------------------
    def instruction_for(self, instruction: str | None, input_type: str | None) -> str | None:
        if input_type == "document":
            if instruction is not None:
                raise APIError(400, "instruction applies to queries only; drop it or use input_type='query'.",
                               param="instruction")
            return None
        if input_type == "query":
            return DEFAULT_INSTRUCTION if instruction is None else instruction
        return instruction

    def _fit(self, seqs: list[list[int]], truncate: bool, what: str) -> list[list[int]]:
        """Truncate (end token kept last) or refuse sequences over max_length."""
        out = []
        for i, s in enumerate(seqs):
            if len(s) > self.max_length:
                if not truncate:
                    raise self.too_long(i, len(s), what)
                s = [*s[: self.max_length - 1], self.eos_id]
            out.append(s)
        return out

    def texts_to_ids(self, texts: list[str], instruction: str | None, truncate: bool, what: str) -> list[list[int]]:
        """Exactly `Embedder.tokenize`, but able to tell that an input was cut."""
        check_unicode(texts, what)
        check_unicode([instruction or ""], "instruction")
        prepared = self.embedder.prepare(texts, instruction)
        full = self.tokenizer.encode_for_embedding(prepared, 1 << 62)
        return self._fit(full, truncate, what)

    def check_ids(self, seqs: list[list[int]], truncate: bool, what: str) -> list[list[int]]:
        """Client token ids: in the vocabulary, non-empty; the end token appended unless already last."""
        out = []
        for i, s in enumerate(seqs):
            if not s:
                raise APIError(400, f"{what}[{i}] is an empty token list; pass at least one token id.", param=what)
            for t in s:
                if not 0 <= t < self.vocab_size:
                    raise APIError(400, f"{what}[{i}] holds token id {t}, outside this model's vocabulary "
                                   f"0..{self.vocab_size - 1}.", param=what)
            out.append(list(s) if s[-1] == self.eos_id else [*s, self.eos_id])
        return self._fit(out, truncate, what)

    async def prepare(self, inputs: object, *, instruction: str | None, input_type: str | None, truncate: bool,
                      what: str, timing: Timing) -> list[list[int]]:
        """Any accepted `input` shape -> token id sequences, tokenized in the pool."""
        instr = self.instruction_for(instruction, input_type)
        if isinstance(inputs, str):
            inputs = [inputs]
        assert isinstance(inputs, list)
        self.check_count(len(inputs), what)
        if all(isinstance(x, int) for x in inputs):  # one sequence of token ids
            seqs: list[list[int]] = [inputs]
            if instr is not None:
                raise APIError(400, "instruction / input_type=query need text input, not token ids.", param=what)
            return await self.tokenized(lambda: self.check_ids(seqs, truncate, what), timing)
        if all(isinstance(x, list) for x in inputs):
            if instr is not None:
                raise APIError(400, "instruction / input_type=query need text input, not token ids.", param=what)
            return await self.tokenized(lambda: self.check_ids(inputs, truncate, what), timing)
        texts: list[str] = inputs
        for i, t in enumerate(texts):
            if not t:
                raise APIError(400, f"{what}[{i}] is an empty string; every input needs at least one character.",
                               param=what)
        return await self.tokenized(lambda: self.texts_to_ids(texts, instr, truncate, what), timing)

    # -- vectors -----------------------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int:
        try:
            return check_dim(dim, self.embedder.hidden_size)
        except ValueError as e:
            message = str(e).replace("dim=", "dimensions=").replace("or None for", "or leave it out for")
            raise APIError(400, message, param="dimensions") from None

    async def embed(self, seqs: list[list[int]], dim: int, normalize: bool, timing: Timing) -> np.ndarray:
        """Rows [n, dim] float32, finished as `Embedder.encode` finishes them."""
        hidden = await self.batcher.submit(seqs, timing)
        return await self.off_loop(finish, hidden, dim, normalize)

    async def warmup(self) -> None:
        """A small batch (CUDA-graph path) and a large one (the compiled path), so that no client request
        waits for compilation after /health reports ready."""
        await self.batcher.call(self.embedder.tokenize([WARMUP_TEXT]))
        await self.batcher.call([[self.eos_id] * 1500] * 3)


def finish(hidden: np.ndarray, dim: int, normalize: bool) -> np.ndarray:
    """Matryoshka slice, then L2 normalisation: the core's functions on the same float32 values."""
    x = truncate_dim(torch.from_numpy(hidden), dim)
    if normalize:
        x = l2_normalize(x)
    return x.numpy().astype(np.float32, copy=False)


class RerankService(Service):
    kind = "reranker"

    def __init__(self, reranker: Reranker, name: str, settings: ServerSettings, metrics: Metrics,
                 cpu_pool: ThreadPoolExecutor, worker: ThreadPoolExecutor | None = None) -> None:
        self.reranker = reranker
        super().__init__(name, reranker.tokenizer, reranker.max_length, reranker.config.vocab_size, self._run,
                         settings, metrics, cpu_pool, reranker.engine.batch_tokens, worker)
        tok = reranker.tokenizer
        self._frame = len(tok.encode_one(reranker.template.prefix)) + len(tok.encode_one(reranker.template.tail))

    def _run(self, seqs: list[Sequence[int]]) -> np.ndarray:
        return self.reranker.score_ids(seqs, progress=False)  # [n] float32

    def build(self, query: str, docs: list[str], instruction: str | None, max_tokens_per_doc: int | None,
              truncate: bool, what: str = "documents") -> list[list[int]]:
        """`Reranker.build_input_ids`, refusing (413) a document that would be cut when truncate is false."""
        check_unicode([query], "query")
        check_unicode(docs, what)
        check_unicode([instruction or ""], "instruction")
        if not truncate and max_tokens_per_doc is None:
            tmpl = self.reranker.template
            instr = DEFAULT_INSTRUCTION if instruction is None else instruction
            bodies = self.tokenizer.encode([tmpl.body(instr, query, d) for d in docs])
            for i, b in enumerate(bodies):
                if self._frame + len(b) > self.max_length:
                    raise self.too_long(i, self._frame + len(b), what)
        return self.reranker.build_input_ids(query, docs, instruction=instruction,
                                             max_tokens_per_doc=max_tokens_per_doc)

    async def prepare(self, query: str, docs: list[str], *, instruction: str | None, max_tokens_per_doc: int | None,
                      truncate: bool, what: str, timing: Timing) -> list[list[int]]:
        self.check_count(len(docs), what)
        if not query:
            raise APIError(400, "query is an empty string; pass the search query.", param="query")
        for i, d in enumerate(docs):
            if not d:
                raise APIError(400, f"{what}[{i}] is an empty string; every document needs at least one character.",
                               param=what)
        if max_tokens_per_doc is not None and max_tokens_per_doc < 1:
            raise APIError(400, f"max_tokens_per_doc={max_tokens_per_doc} must be at least 1.",
                           param="max_tokens_per_doc")
        return await self.tokenized(lambda: self.build(query, docs, instruction, max_tokens_per_doc, truncate, what),
                                    timing)

    async def score(self, seqs: list[list[int]], timing: Timing) -> np.ndarray:
        return await self.batcher.submit(seqs, timing)

    async def warmup(self) -> None:
        await self.batcher.call(self.reranker.build_input_ids(WARMUP_TEXT, [WARMUP_TEXT]))
