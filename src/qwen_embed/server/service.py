"""One service per served model: request values -> token ids (off the event loop) -> batcher -> rows.

`EmbeddingService` turns texts or client token ids into sequences exactly as `Embedder.tokenize` does
(template, end token once and last, `tokenizer.truncate_keep_end`), sends them through the model's
batcher, whose worker runs `Embedder.embed_ids(..., normalize=False)` on merged batches, and finishes
each request's rows with `pooling.finish` (Matryoshka slice first, then L2 normalisation), so that a
served vector equals an in-process one. `RerankService` builds inputs with `RerankInputs` (what
`Reranker.build_input_ids` uses) and scores merged batches with `Reranker.score_ids`. A service holds
the model's facts (facts.py: tokenizer, config, limits), never its weights: `run` is the in-process
model or the client of model processes (model_pool.py).

Hostile sizes are bounded before the work they would cost: a text is cut by characters before it is
tokenized (`head_text`: a prefix that still holds more tokens than can be kept, so the kept tokens are
the same as the whole text's), a request holds at most `--max-request-tokens` tokens (413), and a
request holds its place in the model's queue from before its tokenization (`Batcher.admit`), so
tokenization in flight counts against `--max-queue`.

Tokenization and response formatting run in the shared CPU pool (pools.py) when they are large, and on
the event loop when they are small and the request is alone in the process (`INLINE_CHARS`, `INLINE_VALUES`:
a one-query request's tokenization, finishing and encoding take tens of microseconds, less than one hand-off
to the pool and back); the model runs in the batcher's single worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..embedder import DEFAULT_INSTRUCTION, format_query
from ..pooling import check_dim, finish
from ..reranker import RerankInputs
from ..tokenizer import QwenTokenizer, truncate_keep_end
from .batcher import Admission, Batcher, RunFn, Timing
from .errors import APIError
from .facts import ModelFacts
from .metrics import Metrics
from .remote import RemoteAdmission, RemoteBatcher
from .settings import ServerSettings

T = TypeVar("T")
WARMUP_TEXT = "warm-up"
CHARS_PER_TOKEN = 8  # first cut: kept tokens x 8 characters, then grown by the characters per token it showed
CUT_MARGIN = 16  # tokens past the kept ones that the cut must hold, so that the kept ones are exact
RUN_PERIOD = 256  # a left cut inside a run of one character keeps the run's length modulo this (run_cut)
PIECE_LOOKBACK = 64  # characters before a run that the pre-tokenizer reads to find where the run's piece starts
# Small work of a lone request runs on the event loop: each hand-off to the CPU pool and back costs ~0.1 ms on
# an idle host (a one-query request made four: tokenize, model, finish, encode). Up to INLINE_CHARS characters
# to tokenize (a query: ~20 us) and INLINE_VALUES numbers to finish or encode (orjson: ~25 ns a number). Under
# load (another request admitted in this process) the pool takes it all: work on the loop then holds the GIL
# longer between the loop's waits, and pool threads wait for it (measured on 2 cores: 0.78x vs 0.90x of direct
# at 8 texts per request, `serve --workers 2`).
INLINE_CHARS = 1024
INLINE_VALUES = 4096
QUERY_TYPES = {"query": "query", "search_query": "query", "document": "document", "search_document": "document"}


def surrogate_at(text: str) -> int | None:
    """Where `text` holds a lone surrogate (JSON may carry one, \\ud800; no tokenizer takes it), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return e.start
    return None


def check_text(text: str, what: str, param: str | None = None) -> None:
    """A 400 naming the field `what` (a single string: `query`, `instruction`) and the position in it when
    `text` holds a lone surrogate (`surrogate_at`)."""
    if (at := surrogate_at(text)) is not None:
        raise APIError(400, f"{what} holds a lone surrogate ({text[at]!r} at {at}); send valid Unicode text.",
                       param=param or what)


def check_unicode(texts: Sequence[str], what: str) -> None:
    """`check_text` for each string of the list field `what`, named `what[i]`."""
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for i, t in enumerate(texts):
            check_text(t, f"{what}[{i}]", param=what)


def piece_start(tok: QwenTokenizer, text: str, at: int) -> int:
    """Where the pre-tokenizer's piece that holds `text[at]` starts (a leading space or letter joins a run's
    piece), read over PIECE_LOOKBACK characters before it; `at` when that cannot be told (no pre-tokenizer,
    or a piece longer than that)."""
    pre = getattr(tok.tok, "pre_tokenizer", None)
    window = max(0, at - PIECE_LOOKBACK)
    if pre is None or at == 0:
        return at
    pieces = pre.pre_tokenize_str(text[window : at + 1])
    start = window + pieces[-1][1][0] if pieces else at
    return start if start > window or window == 0 else at


def run_cut(tok: QwenTokenizer, text: str, start: int) -> int:
    """Where a cut keeping `text[start:]` must start instead, so that its last tokens are those of the whole
    text: the same place unless it falls inside a run of one repeated character. The tokenizer splits a run
    from the start of its piece into equal tokens of a power-of-two length (64 '=', 32 newlines, 128 spaces;
    none longer than 128 characters in Qwen's vocabulary) and ends it with what is left, so a cut inside a
    run keeps the whole run's piece when it starts within RUN_PERIOD characters of it, and otherwise starts a
    multiple of RUN_PERIOD characters after the piece's first token that ends inside the run (the run's
    equal tokens are aligned from there): the run's length modulo RUN_PERIOD is kept, and so are its last
    tokens, while the tokenizer reads at most RUN_PERIOD characters more than the cut asked for."""
    if not 0 < start < len(text) or text[start - 1] != text[start]:
        return start
    run = len(text[:start].rstrip(text[start]))  # the run's first character
    piece = piece_start(tok, text, run)
    if start - run < RUN_PERIOD:
        return piece
    aligned = run
    if piece < run:  # the equal tokens start after the piece's first token that ends in the run
        probe = tok.tok.encode(text[piece : run + 2 * RUN_PERIOD], add_special_tokens=False).offsets
        aligned = piece + min((end for _, end in probe if end >= run - piece), default=run - piece)
    return aligned + (start - aligned) // RUN_PERIOD * RUN_PERIOD if aligned <= start else piece


def head_text(tok: QwenTokenizer, text: str, keep: int, left: bool = False) -> tuple[str, bool]:
    """`text`, or a cut of it (its start; its end when `left`, moved out of a run: `run_cut`) that tokenizes
    to more than `keep` + CUT_MARGIN tokens, so that the first (last) `keep` tokens equal those of the whole
    text; True when cut. The first cut takes CHARS_PER_TOKEN characters per kept token; each next one the
    characters per token the last cut showed, with a quarter more (at least twice the last): the tokenizer
    reads about what is kept, not the size a client sends (8 MB of spaces, 128 to a token: ~1.3M characters
    in two reads, not 5.5M in four)."""
    need = keep + CUT_MARGIN
    limit = max(keep, 1) * CHARS_PER_TOKEN
    while len(text) > limit:
        part = text[run_cut(tok, text, len(text) - limit):] if left else text[:limit]
        n = len(tok.encode_one(part))
        if n > need:
            return part, True
        limit = max(2 * limit, math.ceil(1.25 * (need + 1) * len(part) / max(n, 1)))
    return text, False


def named_prompts(model_dir: Path) -> dict[str, str]:
    """TEI `prompt_name`s: "query" (the query template with the default instruction) and "document"
    (nothing), then the `prompts` of the model's config_sentence_transformers.json when it has one; a file
    that is not JSON, `prompts` that are not an object, and entries that are not text are ignored."""
    prompts = {"query": format_query("", DEFAULT_INSTRUCTION), "document": ""}
    path = model_dir / "config_sentence_transformers.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        found = config.get("prompts") if isinstance(config, dict) else None
        if isinstance(found, dict):  # a file that is not JSON, or prompts that are not an object: ignored alike
            prompts.update({k: v for k, v in found.items() if isinstance(v, str) and surrogate_at(v) is None})
    return prompts


class Service:
    """What both services share: names, batcher, pool, limits."""

    kind = "model"

    def __init__(self, facts: ModelFacts, run: RunFn | RemoteBatcher, name: str, label: str,
                 settings: ServerSettings, metrics: Metrics, cpu_pool: ThreadPoolExecutor,
                 worker: ThreadPoolExecutor | None = None, inflight: int | None = None) -> None:
        """`run`: the model (in this process, or the client of model processes: model_pool.py) under a
        batcher of this process, or a `RemoteBatcher` whose model processes batch (`serve --workers`)."""
        self.facts = facts
        self.name = name
        self.label = label  # the model's name in metrics (never a folder path)
        self.tokenizer = facts.tokenizer
        self.max_length = facts.max_length
        self.vocab_size = facts.config.vocab_size
        self.settings = settings
        self.metrics = metrics
        self.cpu_pool = cpu_pool
        self.batcher: Batcher | RemoteBatcher = run if isinstance(run, RemoteBatcher) else Batcher(
            label, run, max_batch_tokens=facts.batch_tokens, max_batch_requests=settings.max_batch_requests,
            max_wait_s=settings.max_wait_ms / 1000.0, max_queue=settings.max_queue,
            max_queue_tokens=settings.max_queue_tokens, metrics=metrics, worker=worker,
            max_inflight=inflight or settings.inflight_batches,
        )

    def lone(self) -> bool:
        """No other request is admitted in this process (the caller's own may be): small work runs inline."""
        return self.batcher.pending_requests <= 1

    async def off_loop(self, fn: Callable[..., T], *args: Any, inline: bool = False) -> T:
        """Run a CPU-bound function in the shared pool, or right here when it is small (`inline`)."""
        if inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.cpu_pool, fn, *args)

    @contextlib.contextmanager
    def admission(self) -> Iterator[Admission | RemoteAdmission]:
        """A place in the model's queue for one request, from before tokenization until answered."""
        adm = self.batcher.admit()
        try:
            yield adm
        finally:
            adm.release()

    def check_count(self, n: int, what: str) -> None:
        if n == 0:
            raise APIError(400, f"{what} is empty; pass at least one.", param=what)
        if n > self.settings.max_inputs:
            raise APIError(413, f"{what} holds {n} entries, over the limit of {self.settings.max_inputs} per request "
                           "(--max-inputs); split the request.", param=what, code="too_many_inputs")

    def check_total(self, seqs: Sequence[Sequence[int]], what: str) -> None:
        total = sum(len(s) for s in seqs)
        if total > self.settings.max_request_tokens:
            raise APIError(413, f"the request holds {total} tokens, over the limit of "
                           f"{self.settings.max_request_tokens} per request (--max-request-tokens); split it into "
                           "smaller requests.", param=what, code="too_many_tokens")

    def too_long(self, index: int, length: int, what: str, cut: bool = False, limit: int | None = None) -> APIError:
        has = f"more than {length}" if cut else f"{length}"
        over = f"the model's max length {self.max_length}" if limit is None else f"max_tokens={limit}"
        return APIError(413, f"{what}[{index}] has {has} tokens, over {over}; shorten it or ask for truncation "
                        f"(truncate=true; on /v2/embed, truncate=\"END\" or \"START\").", param=what,
                        code="input_too_long")

    async def tokenized(self, fn: Callable[[], list[list[int]]], timing: Timing, work: int) -> list[list[int]]:
        """`fn`'s token ids (in the pool unless `work`, the characters or ids to go through, is small), timed."""
        start = time.perf_counter()
        seqs = await self.off_loop(fn, inline=work <= INLINE_CHARS and self.lone())
        timing.tokenization = time.perf_counter() - start
        self.metrics.observe_tokenization(self.label, timing.tokenization, [len(s) for s in seqs])
        return seqs

    async def warmup(self) -> None:
        raise NotImplementedError


class EmbeddingService(Service):
    kind = "embedding"

    def __init__(self, facts: ModelFacts, run: RunFn | RemoteBatcher, name: str, label: str,
                 settings: ServerSettings, metrics: Metrics, cpu_pool: ThreadPoolExecutor,
                 worker: ThreadPoolExecutor | None = None, inflight: int | None = None) -> None:
        """`run`: token ids -> hidden rows [n, H] (`Embedder.embed_ids(..., normalize=False)`, in this
        process or in model processes)."""
        super().__init__(facts, run, name, label, settings, metrics, cpu_pool, worker, inflight)
        self.eos_id = facts.tokenizer.eos_id
        self.prompts = named_prompts(facts.path)

    # -- inputs ------------------------------------------------------------------------------------
    def prefix_for(self, instruction: str | None, input_type: str | None, prompt_name: str | None) -> str | None:
        """The text put before each input: the query template's head, a named prompt, or None."""
        kind = None if input_type is None else QUERY_TYPES[input_type]
        if instruction is not None:
            check_text(instruction, "instruction")
        if prompt_name is not None:
            if instruction is not None or kind is not None:
                raise APIError(400, "prompt_name chooses the prompt itself; drop instruction / input_type.",
                               param="prompt_name")
            if prompt_name not in self.prompts:
                raise APIError(400, f"prompt_name {prompt_name[:60]!r} is not one of this model's prompts "
                               f"({', '.join(sorted(self.prompts))}).", param="prompt_name")
            return self.prompts[prompt_name] or None
        if kind == "document":
            if instruction is not None:
                raise APIError(400, "instruction applies to queries only; drop it or use input_type='query'.",
                               param="instruction")
            return None
        if kind == "query":
            return format_query("", DEFAULT_INSTRUCTION if instruction is None else instruction)
        return None if instruction is None else format_query("", instruction)

    def fit(self, seqs: list[list[int]], truncate: bool, what: str, left: bool = False, keep_head: int = 0,
            cut: Sequence[bool] = (), limit: int | None = None) -> list[list[int]]:
        """Truncate (`tokenizer.truncate_keep_end`: end token kept last) or refuse (413) sequences over
        max_length, or over `limit` tokens when a request asks for fewer (Cohere's `max_tokens`). `left`
        drops the start of the input instead of its end, keeping the first `keep_head` ids (the prompt)."""
        n = self.max_length if limit is None else min(limit, self.max_length)
        out = []
        for i, s in enumerate(seqs):
            if len(s) > n or (cut and cut[i]):
                if not truncate:
                    raise self.too_long(i, len(s), what, bool(cut and cut[i]), limit if n == limit else None)
                s = truncate_keep_end(s[:-1], n, self.eos_id, "left" if left else "right", keep_head)
            out.append(s)
        return out

    def texts_to_ids(self, texts: list[str], prefix: str | None, truncate: bool, what: str,
                     left: bool = False, limit: int | None = None) -> list[list[int]]:
        """Exactly `Embedder.tokenize` (prefix = the query template's head), but able to tell that an
        input was cut, and cutting huge texts by characters before they are tokenized."""
        check_unicode(texts, what)  # the prefix: its instruction was checked by prefix_for
        heads = [head_text(self.tokenizer, t, self.max_length, left) for t in texts]
        prepared = [(prefix or "") + t for t, _ in heads]
        full = self.tokenizer.encode_for_embedding(prepared, 1 << 62)
        keep_head = 0
        if left and prefix:
            head_ids = self.tokenizer.encode_one(prefix)
            if all(s[: len(head_ids)] == head_ids for s in full):
                keep_head = len(head_ids)
        return self.fit(full, truncate, what, left, keep_head, [c for _, c in heads], limit)

    def check_ids(self, seqs: list[list[int]], truncate: bool, what: str, left: bool = False,
                  limit: int | None = None) -> list[list[int]]:
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
        return self.fit(out, truncate, what, left, limit=limit)

    async def prepare(self, inputs: object, *, instruction: str | None, input_type: str | None, truncate: bool,
                      what: str, timing: Timing, prompt_name: str | None = None,
                      left: bool = False, limit: int | None = None) -> list[list[int]]:
        """Any accepted `input` shape -> token id sequences, tokenized in the pool; `limit`: at most
        this many tokens per input (end token included), below the model's max length."""
        if limit is not None and limit < 1:
            raise APIError(400, f"max_tokens={limit} must be at least 1 (or left out for the model's max length "
                           f"{self.max_length}).", param="max_tokens")
        prefix = self.prefix_for(instruction, input_type, prompt_name)
        items: list[Any] = [inputs] if isinstance(inputs, str) else inputs  # type: ignore[assignment]
        if items and all(isinstance(x, int) for x in items):  # one sequence of token ids: one input
            items = [items]
        self.check_count(len(items), what)
        if all(isinstance(x, list) for x in items):
            if prefix is not None:
                raise APIError(400, "instruction / input_type=query / prompt_name need text input, not token ids.",
                               param=what)
            seqs = await self.tokenized(lambda: self.check_ids(items, truncate, what, left, limit), timing,
                                        sum(len(x) for x in items))
        else:
            texts: list[str] = items
            for i, t in enumerate(texts):
                if not t:
                    raise APIError(400, f"{what}[{i}] is an empty string; every input needs at least one character.",
                                   param=what)
            seqs = await self.tokenized(lambda: self.texts_to_ids(texts, prefix, truncate, what, left, limit), timing,
                                        sum(len(t) for t in texts) + len(texts) * len(prefix or ""))
        self.check_total(seqs, what)
        return seqs

    # -- vectors -----------------------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int:
        return check_dim(dim, self.facts.config.hidden_size, param="dimensions")

    async def embed(self, admission: Admission | RemoteAdmission, seqs: list[list[int]], dim: int, normalize: bool,
                    timing: Timing) -> np.ndarray:
        """Rows [n, dim] float32, finished as `Embedder.encode` finishes them."""
        hidden = await admission.submit(seqs, timing)
        return await self.off_loop(finish, hidden, dim, normalize, inline=hidden.size <= INLINE_VALUES and self.lone())

    async def warmup(self) -> None:
        """A small batch (CUDA-graph path) and a large one (the compiled path), so that no client request
        waits for compilation after /health reports ready."""
        await self.batcher.call(self.tokenizer.encode_for_embedding([WARMUP_TEXT], self.max_length))
        await self.batcher.call([[self.eos_id] * 1500] * 3)


class RerankService(Service):
    kind = "reranker"

    def __init__(self, facts: ModelFacts, template: str, run: RunFn | RemoteBatcher, name: str, label: str,
                 settings: ServerSettings, metrics: Metrics, cpu_pool: ThreadPoolExecutor,
                 worker: ThreadPoolExecutor | None = None, inflight: int | None = None) -> None:
        """`run`: token ids -> scores [n] (`Reranker.score_ids`, in this process or in model processes);
        inputs are built by `RerankInputs` from the tokenizer alone."""
        super().__init__(facts, run, name, label, settings, metrics, cpu_pool, worker, inflight)
        self.inputs = RerankInputs(facts.tokenizer, template, facts.max_length)
        self._frame = len(self.inputs.prefix_ids) + len(self.inputs.tail_ids)

    def build(self, query: str, docs: list[str], instruction: str | None, max_tokens_per_doc: int | None,
              truncate: bool, what: str = "documents") -> list[list[int]]:
        """`Reranker.build_input_ids`, refusing (413) a document that max_length would cut when truncate is
        false (with max_tokens_per_doc: what is left of it after that cut, which the client asked for); huge
        texts are cut by characters first (a document keeps at most max_length tokens)."""
        check_text(query, "query")
        check_unicode(docs, what)
        if instruction is not None:
            check_text(instruction, "instruction")
        keep = self.max_length if max_tokens_per_doc is None else min(self.max_length, max_tokens_per_doc)
        query, _ = head_text(self.tokenizer, query, self.max_length)  # still over: the core refuses it
        heads = [head_text(self.tokenizer, d, keep) for d in docs]
        docs = [d for d, _ in heads]
        if not truncate:  # refused when max_length would cut a document (max_tokens_per_doc may: the client's own)
            tmpl = self.inputs.template
            instr = DEFAULT_INSTRUCTION if instruction is None else instruction
            budget = self.max_length - self._frame  # what RerankInputs.build leaves the body (head + document)
            head_len = len(self.tokenizer.encode_one(tmpl.head.format(instruction=instr, query=query)))
            bodies = self.tokenizer.encode([tmpl.body(instr, query, d) for d in docs])
            for i, b in enumerate(bodies):
                wanted = len(b) if max_tokens_per_doc is None else min(len(b), head_len + max_tokens_per_doc)
                more = heads[i][1] and wanted == len(b)  # cut by characters: it holds more than that
                if wanted > budget or more:
                    raise self.too_long(i, self._frame + wanted, what, more)
        return self.inputs.build(query, docs, instruction=instruction, max_tokens_per_doc=max_tokens_per_doc)

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
        work = (len(query) + len(instruction or "")) * len(docs) + sum(len(d) for d in docs)
        seqs = await self.tokenized(
            lambda: self.build(query, docs, instruction, max_tokens_per_doc, truncate, what), timing, work)
        self.check_total(seqs, what)
        return seqs

    async def score(self, admission: Admission | RemoteAdmission, seqs: list[list[int]], timing: Timing) -> np.ndarray:
        return await admission.submit(seqs, timing)

    async def warmup(self) -> None:
        await self.batcher.call(self.inputs.build(WARMUP_TEXT, [WARMUP_TEXT]))
