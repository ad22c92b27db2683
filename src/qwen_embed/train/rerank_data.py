"""Reranker training data: rows -> yes/no examples (groups of one positive and its negatives) -> token ids.

Accepted rows (JSONL, one per line):
- the embedding training rows `{query, positive | positives, negatives?, instruction?, task?}`: one "yes"
  example per positive, each followed by `negatives_per_positive` "no" examples sampled from the row's
  negatives (fewer when the row has fewer), so one mined file trains both models;
- pointwise rows `{query, document, label, instruction?, task?}` with label 0 or 1.
Both may carry `id` and `meta` (kept, not read); any other field is an error naming it.
A group is a positive and its negatives (listwise needs such groups), or a single pointwise example.
Inputs are built by the inference code (`reranker.RerankInputs`: the template by name, only the
document truncated, the suffix always kept), so training and `Reranker` see the same ids. The sampling of
batch i uses a generator seeded by (seed, i), so a resumed run sees the same examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..reranker import RerankInputs
from .data import KEPT_FIELDS, Example, RawBatch, check_fields, iter_examples, parse_row, row_task

POINTWISE_FIELDS = ("query", "document", "label", "instruction", "task", *KEPT_FIELDS)


def parse_rerank_row(obj: Any, where: str) -> Example:
    """A training row or a pointwise row `{query, document, label}`; errors name the file and line."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a row must be a JSON object, got {type(obj).__name__}.")
    if "positive" in obj or "positives" in obj:
        return parse_row(obj, where)
    if "document" not in obj and "label" not in obj:
        raise InputError(f"{where}: needs 'positive' / 'positives' (training rows) or 'document' and 'label' "
                         "(pointwise rows); this row has neither.")
    check_fields(obj, POINTWISE_FIELDS, "a pointwise row", where)
    query, doc, label = obj.get("query"), obj.get("document"), obj.get("label")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: needs a non-empty string field 'query'.")
    if not isinstance(doc, str) or not doc.strip():
        raise InputError(f"{where}: a pointwise row needs a non-empty string 'document', got {doc!r:.60}.")
    if isinstance(label, bool) or label not in (0, 1):
        raise InputError(f"{where}: 'label' must be 0 or 1, got {label!r:.60}.")
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"{where}: 'instruction' must be a string, got {instruction!r:.60}.")
    pos, neg = ([doc], []) if label == 1 else ([], [doc])
    return Example(query, pos, neg, instruction or None, row_task(obj, where))


Group = list[tuple[str, int]]  # (document, label): a positive then its negatives, or one pointwise example


def expand(ex: Example, negatives_per_positive: int, rng: random.Random) -> list[Group]:
    """The groups of one row: each positive with its sampled negatives (distinct texts, none equal to a
    positive); a pointwise "no" alone."""
    if not ex.positives:
        return [[(d, 0) for d in ex.negatives]]
    positives = set(ex.positives)  # a negative with a positive's text would train one input as yes and no
    pool = [d for d in dict.fromkeys(ex.negatives) if d not in positives]  # each distinct text once
    k = min(negatives_per_positive, len(pool))
    return [[(p, 1)] + [(d, 0) for d in rng.sample(pool, k)] for p in ex.positives]


@dataclass
class RerankBatch:
    """One rank's share of a global batch: inputs in group order, labels, group sizes, the global count."""

    index: int
    task: str
    sequences: list[list[int]]
    labels: torch.Tensor  # [n] 0/1
    group_sizes: list[int]
    count: int  # loss terms in the global batch (examples; groups for listwise)
    offset: int  # index of the first local row in the global batch

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


@dataclass
class RerankCollator:
    """RawBatch -> a rank's RerankBatch (deterministic sampling of negatives per batch index)."""

    inputs: RerankInputs
    negatives_per_positive: int = 3
    listwise: bool = False
    default_instruction: str | None = None
    seed: int = 0

    def __call__(self, raw: RawBatch, rank: int = 0, world_size: int = 1) -> RerankBatch:
        n = len(raw.examples)
        if n % world_size:
            raise InputError(f"batch_size={n} does not divide over {world_size} processes; use a multiple.")
        rng = random.Random(f"{self.seed}:rerank:{raw.index}")
        groups = [expand(ex, self.negatives_per_positive, rng) for ex in raw.examples]
        if self.listwise:
            for ex, gs in zip(raw.examples, groups, strict=True):
                if any(len(g) < 2 or g[0][1] != 1 for g in gs):
                    raise InputError(f"loss listwise needs a positive with at least one negative in every row; the "
                                     f"row of query {ex.query!r:.50} has none. Use rerank.loss sft or bce, or "
                                     "rows with negatives.")
        count = sum(len(gs) if self.listwise else sum(len(g) for g in gs) for gs in groups)
        b = n // world_size
        lo, hi = rank * b, (rank + 1) * b
        seqs: list[list[int]] = []
        labels: list[int] = []
        sizes: list[int] = []
        for ex, gs in zip(raw.examples[lo:hi], groups[lo:hi], strict=True):
            instruction = ex.instruction or self.default_instruction
            for g in gs:
                seqs += self.inputs.build(ex.query, [d for d, _ in g], instruction=instruction)
                labels += [lab for _, lab in g]
                sizes.append(len(g))
        return RerankBatch(raw.index, raw.task, seqs, torch.tensor(labels, dtype=torch.long), sizes, count, lo)


@dataclass
class RerankEvalSet:
    """Held-out queries, each with its candidate documents and the indices of the relevant ones."""

    queries: list[tuple[str, str | None]]  # (query, instruction)
    candidates: list[list[str]]
    relevant: list[set[int]]


def load_rerank_eval_set(path: str | Path, *, max_queries: int | None = None,
                         default_instruction: str | None = None) -> RerankEvalSet:
    """Rows (training or pointwise) grouped by query; a query's candidates are its distinct positives and
    negatives, a text relevant when any of its rows has it as a positive."""
    index: dict[tuple[str, str | None], int] = {}
    where: list[dict[str, int]] = []  # per query: candidate text -> its index (a document is listed once)
    out = RerankEvalSet([], [], [])
    for ex in iter_examples([path], parse_rerank_row):
        key = (ex.query, ex.instruction or default_instruction)
        if key not in index:
            if max_queries is not None and len(index) >= max_queries:
                continue
            index[key] = len(out.queries)
            out.queries.append(key)
            out.candidates.append([])
            out.relevant.append(set())
            where.append({})
        i = index[key]
        for d, label in [(p, 1) for p in ex.positives] + [(n, 0) for n in ex.negatives]:
            if d not in where[i]:
                where[i][d] = len(out.candidates[i])
                out.candidates[i].append(d)
            if label:  # relevant when any row says so (as the embedding eval set reads a row's positives)
                out.relevant[i].add(where[i][d])
    if not out.queries:
        raise InputError(f"evaluation file {path} holds no rows.")
    return out
