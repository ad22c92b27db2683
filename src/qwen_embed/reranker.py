"""Reranker: Qwen3-Reranker as a cross encoder scored by the "yes"/"no" next-token logits.

Input = prefix + body(instruction, query, document) + suffix (templates.py, DESIGN.md). Score =
softmax over the last position's logits of "no" and "yes", taking "yes", which equals
sigmoid(h . (W[yes] - W[no])): one dot product with a precomputed vector instead of the 151k-way
logits. Only the document is truncated: the body is cut from the right, and the document is its last
part; a query and instruction that alone exceed the budget are an error, not silently cut.

Prefix sharing: the inputs of one query share their first tokens (system prompt, instruction, query);
`score` runs that prefix once and lets every document attend to its keys and values, which equals
scoring each full input (attention.py, model.py) and saves the prefix's compute per document.

Templates (templates.py, torch-free; re-exported here): "card", the model card / transformers form, and
"official-eval", the form of the official evaluation that produced the published scores.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import Checkpoint, CheckpointFacts
from .embedder import DEFAULT_INSTRUCTION, DEFAULT_MAX_LENGTH, check_max_length
from .engine import Chunk, make_engine
from .errors import InputError, ModelOutputError, whole_number
from .pooling import rank_by_score, row_sum
from .settings import DEFAULT_RERANKER_MODEL as DEFAULT_RERANKER_MODEL  # the model this class defaults to
from .templates import PREFIX as PREFIX
from .templates import SUFFIX as SUFFIX
from .templates import SYSTEM_PROMPT as SYSTEM_PROMPT
from .templates import TEMPLATES as TEMPLATES
from .templates import RerankTemplate as RerankTemplate
from .templates import get_template as get_template
from .threads import use_threads
from .tokenizer import QwenTokenizer, check_text, check_texts, list_of


def yes_probability(hidden: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """sigmoid(h . (W[yes] - W[no])) in float32: hidden [n, H], head [H] -> [n].

    Batch invariant: products and a fixed-order `row_sum`, not `hidden @ head` (the CPU's matrix-vector
    kernel rounds a row differently with the number of rows), and 1 / (1 + exp(-x)) in float64, not
    torch.sigmoid (whose CPU kernel rounds the elements of a vector tail differently)."""
    logit = row_sum(hidden.float() * head.float()).double()  # [n]
    return (1.0 / (1.0 + torch.exp(-logit))).float()


def finish_scores(hidden: torch.Tensor, head: torch.Tensor) -> np.ndarray:
    """The one scoring rule's output: `yes_probability` as numpy float32 [n], refused (ModelOutputError)
    when any score is NaN, as `pooling.finish` refuses non-finite vectors."""
    scores = yes_probability(hidden, head).numpy().astype(np.float32)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ModelOutputError(f"the reranker produced NaN scores for {bad} of {len(scores)} inputs; its weights "
                               "or config.json are broken (nothing was written).")
    return scores


MIN_SHARED_PREFIX = 16  # tokens; below this sharing saves too little to be worth a second pass


def shared_prefix_length(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens common to the start of every sequence, leaving at least two tokens of each to score.

    Two, not one: with one query token per sequence flash attention takes its decoding path, whose
    split-KV reduction depends on the batch (a pair scored alone would differ from the same in a batch)."""
    first = seqs[0]
    p = min(len(s) for s in seqs) - 2
    for s in seqs[1:]:
        i = 0
        while i < p and s[i] == first[i]:
            i += 1
        p = i
    return max(p, 0)


def split_prefix(seqs: Sequence[Sequence[int]], share: bool) -> Chunk:
    """The engine's input for one query: continuations of their common prefix when sharing pays off."""
    p = shared_prefix_length(seqs) if share and len(seqs) > 1 else 0
    if p >= MIN_SHARED_PREFIX:
        return Chunk([s[p:] for s in seqs], seqs[0][:p])
    return Chunk(seqs)


@dataclass(frozen=True)
class RerankResult:
    """One reranked document: its position in the input, its probability of "yes", its text."""

    index: int
    score: float
    document: str


class RerankInputs:
    """Token ids of reranker inputs from a tokenizer alone (no model): what `Reranker` scores and training trains.

    prefix + body(instruction, query, document), cut from the right to fit, + tail: only the document
    is truncated; the prefix, the instruction and query, and the chat suffix are always kept.
    """

    def __init__(self, tokenizer: QwenTokenizer, template: str = "card",
                 max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.tokenizer = tokenizer
        self.template = get_template(template)
        self.max_length = max_length
        self.prefix_ids = tokenizer.encode_one(self.template.prefix)
        self.tail_ids = tokenizer.encode_one(self.template.tail)
        # the fixed tokens: the template around the default instruction, and one token each of query and document
        fixed = len(self.prefix_ids) + len(self.tail_ids) + 2 + len(tokenizer.encode_one(
            self.template.head.format(instruction=DEFAULT_INSTRUCTION, query="")))
        if max_length < fixed:
            raise InputError(f"max_length={max_length} cannot hold a reranker input: the {self.template.name!r} "
                             f"template with the default instruction takes {fixed - 2} tokens before any query or "
                             f"document; use max_length {fixed} at the very least (default {DEFAULT_MAX_LENGTH}).",
                             param="max_length")

    def build(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
              max_tokens_per_doc: int | None = None) -> list[list[int]]:
        """Token ids of each (query, document) input, the document truncated to fit max_length."""
        query, docs, instr = check_rerank_inputs(query, documents, instruction)
        tmpl, tok = self.template, self.tokenizer
        budget = self.max_length - len(self.prefix_ids) - len(self.tail_ids)
        head_len = len(tok.encode_one(tmpl.head.format(instruction=instr, query=query)))
        if head_len >= budget:
            raise InputError(
                f"the instruction and query take {head_len} tokens, over the {budget} left for them and the "
                f"document by max_length={self.max_length}; shorten the query or raise max_length."
            )
        if max_tokens_per_doc is not None:
            cap = whole_number(max_tokens_per_doc, 1)
            if cap is None:
                raise InputError(f"max_tokens_per_doc must be a positive integer, got {max_tokens_per_doc!r}; pass "
                                 f"e.g. max_tokens_per_doc=512 or None for no cap.", param="max_tokens_per_doc")
            budget = min(budget, head_len + cap)
        bodies = tok.encode([tmpl.body(instr, query, d) for d in docs], limit=budget)  # a long one read so far
        return [self.prefix_ids + b[:budget] + self.tail_ids for b in bodies]


def check_rerank_inputs(query: str, documents: Sequence[str],
                        instruction: str | None) -> tuple[str, list[str], str]:
    """Validate a query, its documents and an optional instruction (default: the web-search one)."""
    if not isinstance(query, str) or not query:
        raise InputError(f"query must be a non-empty string, got {query!r:.60}")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"instruction must be a string, got {type(instruction).__name__}")
    return query, check_texts(documents, "documents"), instruction or DEFAULT_INSTRUCTION


class Reranker(CheckpointFacts):
    """(query, documents) -> relevance probabilities with a Qwen3-Reranker checkpoint."""

    def __init__(self, checkpoint: Checkpoint, *, template: str = "card", max_length: int | None = None,
                 batch_tokens: int | None = None, compile: bool | None = None,
                 share_prefix: bool | None = None, deterministic: bool = False) -> None:
        assert checkpoint.head is not None, "a reranker checkpoint carries a head"
        self.checkpoint = checkpoint
        self.template = get_template(template)
        self.max_length = check_max_length(max_length, checkpoint.config, minimum=16)
        self.head = checkpoint.head
        self.deterministic = deterministic
        self.engine = make_engine(checkpoint.model, checkpoint.device, batch_tokens, compile, deterministic)
        # on the CPU too since its attention needs no mask (0.6B shape, 32 documents: 1.6x less CPU time),
        # except in the deterministic mode on the CPU, whose padded prefix rows depend on the batch
        cpu_det = deterministic and checkpoint.device.type == "cpu"
        self.share_prefix = (not cpu_det) if share_prefix is None else share_prefix
        self.inputs = RerankInputs(checkpoint.tokenizer, template, self.max_length)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike[str], device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None, template: str = "card", *,
        max_length: int | None = None, batch_tokens: int | None = None, compile: bool | None = None,
        share_prefix: bool | None = None, threads: int | None = None, deterministic: bool = False,
    ) -> Reranker:
        """Load a Qwen3ForCausalLM reranker or a converted Qwen3ForSequenceClassification one.

        template: "card" (model card form) or "official-eval" (the official evaluation's form).
        max_length: tokens per (query, document) input (default 8192, or the model's limit where lower).
        share_prefix: compute the query's prefix once per `score` call (default: on).
        dtype: as for Embedder ("int8": int8 linear layers on the CPU); threads: torch CPU threads.
        deterministic: batch-invariant kernels: a pair's score is bitwise the same in any batch.
        """
        get_template(template)  # fail before loading weights
        use_threads(threads)
        ckpt = Checkpoint.load(name_or_path, device, dtype, want_head=True)
        return cls(ckpt, template=template, max_length=max_length, batch_tokens=batch_tokens, compile=compile,
                   share_prefix=share_prefix, deterministic=deterministic)

    def build_input_ids(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
                        max_tokens_per_doc: int | None = None) -> list[list[int]]:
        """Token ids of each (query, document) input, the document truncated to fit max_length."""
        return self.inputs.build(query, documents, instruction=instruction, max_tokens_per_doc=max_tokens_per_doc)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
              progress: bool | None = None) -> np.ndarray:
        """Probability that each document meets the query, numpy float32 [n], in input order."""
        seqs = self.build_input_ids(query, documents, instruction=instruction)
        return self.score_ids(seqs, progress=progress)

    def score_ids(self, seqs: Sequence[Sequence[int]], progress: bool | None = None,
                  share_prefix: bool | None = None) -> np.ndarray:
        """Score already built inputs (from `build_input_ids`); a common prefix is computed once."""
        seqs = self._check_ids(seqs)
        show = len(seqs) >= 512 if progress is None else progress
        share = self.share_prefix if share_prefix is None else share_prefix
        h = self.engine.last_hidden_stream([split_prefix(seqs, share)], len(seqs), show)  # [n, H] float32
        return finish_scores(h, self.head.cpu())

    def score_many(self, queries: Sequence[str], documents: Sequence[Sequence[str]], *,
                   instruction: str | None = None, progress: bool | None = None) -> list[np.ndarray]:
        """Score the documents of several queries in one pipelined pass -> one float32 array per query.

        A worker tokenizes query i + 1 while the device scores query i; each query's prefix is shared by
        its documents (as in `score`); one synchronisation at the end."""
        queries, documents = list_of("queries", queries), list_of("documents", documents, "lists of strings")
        if not queries or len(queries) != len(documents):
            raise InputError(f"queries and documents must be equally long, non-empty lists (one list of documents per "
                             f"query); got {len(queries)} queries and {len(documents)} lists of documents.")
        for i, (q, d) in enumerate(zip(queries, documents, strict=True)):  # validate everything before any work
            documents[i] = check_texts(d, f"documents[{i}]")
            self._check(q, documents[i], instruction)

        def prepare(i: int) -> Chunk:
            seqs = self.build_input_ids(queries[i], documents[i], instruction=instruction)
            return split_prefix(seqs, self.share_prefix)

        counts = [len(d) for d in documents]
        show = sum(counts) >= 512 if progress is None else progress
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-embed-rerank") as pool:
            futures = [pool.submit(prepare, i) for i in range(len(queries))]
            h = self.engine.last_hidden_stream((f.result() for f in futures), sum(counts), show)
        scores = finish_scores(h, self.head.cpu())
        bounds = np.cumsum([0, *counts])
        return [scores[a:b] for a, b in itertools.pairwise(bounds.tolist())]

    def score_pairs(self, pairs: Sequence[tuple[str, str]], *, instruction: str | None = None,
                    progress: bool | None = None) -> np.ndarray:
        """Score (query, document) pairs with different queries in one pass -> float32 [n]."""
        items = list_of("pairs", pairs, "(query, document) pairs")
        if not items:
            raise InputError("pairs is empty; pass at least one (query, document) pair.")
        checked: list[tuple[str, str]] = []
        for i, pair in enumerate(items):  # validate everything before any work
            if isinstance(pair, str | bytes) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise InputError(f"pairs[{i}] must be a (query, document) pair, got {pair!r:.60}")
            query, document = pair[0], pair[1]
            if not isinstance(query, str) or not query:
                raise InputError(f"pairs[{i}][0], the query, must be a non-empty string, got {query!r:.60}")
            checked.append((query, check_text(document, f"pairs[{i}][1] (the document)")))
        seqs: list[list[int]] = []
        for query, document in checked:
            seqs += self.build_input_ids(query, [document], instruction=instruction)
        return self.score_ids(seqs, progress=progress)

    def rerank(self, query: str, documents: Sequence[str], *, top_n: int | None = None,
               instruction: str | None = None) -> list[RerankResult]:
        """Documents sorted by score, best first (ties keep input order); `top_n` keeps the first n."""
        n = None if top_n is None else whole_number(top_n, 1)
        if top_n is not None and n is None:
            raise InputError(f"top_n must be a positive integer, got {top_n!r}; pass e.g. top_n=10 or None for all.",
                             param="top_n")
        docs = check_texts(documents, "documents")
        scores = self.score(query, docs, instruction=instruction)
        order = rank_by_score(scores)
        return [RerankResult(i, float(scores[i]), docs[i]) for i in order[:n]]

    def _check(self, query: str, documents: Sequence[str], instruction: str | None) -> tuple[str, list[str], str]:
        return check_rerank_inputs(query, documents, instruction)

    def __repr__(self) -> str:
        c = self.config
        return (f"Reranker({self.name!r}, kind={c.kind}, hidden={c.hidden_size}, layers={c.num_hidden_layers}, "
                f"template={self.template.name!r}, device={self.device})")
