"""Training data: JSONL rows -> a deterministic stream of single-task global batches -> token ids per rank.

A row is `{"query": str, "positive": str | "positives": [str, ...], "negatives"?: [str, ...],
"instruction"?: str, "task"?: str}`, and `id` / `meta` (kept, not read; any other field is an error
naming it, so that a typo such as `negative` does not lose data). Files are read line by line (a file
larger than memory trains): rows pass through a bounded shuffle buffer, then are grouped by task, and a
global batch is emitted as soon as one task has `batch_size` rows, so that every batch is drawn from one
task (the in-batch negatives of the report come from the same task). Rows left over at the end of an epoch are dropped.

Everything is a pure function of (files, seed, batch index): the shuffle of epoch e uses its own
seeded generator, and the choice of the positive and of the K hard negatives of batch i uses a
generator seeded by (seed, i). Resuming at batch i replays the stream up to i without tokenising
(cheap), and every rank of a data-parallel run reads the same stream and keeps its own slice of rows.

Queries get the instruction template (`Instruct: {instruction}\\nQuery:{query}`, the row's
instruction or the default one); documents get none. Both get the end token through the tokenizer's
`encode_for_embedding`, exactly as the `Embedder` will embed them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..embedder import format_query
from ..errors import InputError
from ..jsonl import iter_jsonl
from ..tokenizer import QwenTokenizer
from .losses import text_key


@dataclass
class Example:
    """One parsed row."""

    query: str
    positives: list[str]
    negatives: list[str] = field(default_factory=list)
    instruction: str | None = None
    task: str = "default"


def _strings(value: Any, what: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(f"{where}: {what} must be a string or a list of strings, got {value!r:.80}.")
    return [v for v in value if v.strip()]


KEPT_FIELDS = ("id", "meta")  # carried by the tools that write rows (synth, pairs), not read for training
ROW_FIELDS = ("query", "positive", "positives", "negatives", "instruction", "task", *KEPT_FIELDS)


def check_fields(obj: dict[str, Any], known: Sequence[str], what: str, where: str) -> None:
    """Refuse a field that a row of this form does not have (a typo such as 'negative' would silently lose
    data), naming the closest known one; other data belongs under 'meta'."""
    import difflib

    for key in obj:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise InputError(f"{where}: unknown field {key!r}; {hint}{what} has {', '.join(known)} "
                             f"({' and '.join(KEPT_FIELDS)} are kept, not read: put other data under 'meta').")


def row_task(obj: dict[str, Any], where: str) -> str:
    """A row's `task`: a non-empty string, "default" when absent or null."""
    task = obj.get("task")
    if task is None:
        return "default"
    if not isinstance(task, str) or not task.strip():
        raise InputError(f"{where}: 'task' must be a non-empty string, got {task!r:.60}.")
    return task


def parse_row(obj: Any, where: str) -> Example:
    """Validate one JSONL object; errors name the file and line."""
    if not isinstance(obj, dict):
        raise InputError(f"{where}: a row must be a JSON object, got {type(obj).__name__}.")
    check_fields(obj, ROW_FIELDS, "a training row", where)
    if "positive" in obj and "positives" in obj:
        raise InputError(f"{where}: has both 'positive' and 'positives'; keep one (a list goes in 'positives').")
    query = obj.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InputError(f"{where}: needs a non-empty string field 'query'.")
    if "positive" in obj:
        positives = _strings(obj["positive"], "positive", where)
    elif "positives" in obj:
        positives = _strings(obj["positives"], "positives", where)
    else:
        raise InputError(f"{where}: needs 'positive' (a string) or 'positives' (a list of strings).")
    if not positives:
        raise InputError(f"{where}: has no non-empty positive; every row needs one.")
    negatives = _strings(obj.get("negatives", []), "negatives", where)
    instruction = obj.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise InputError(f"{where}: 'instruction' must be a string, got {instruction!r:.60}.")
    return Example(query, positives, negatives, instruction or None, row_task(obj, where))


RowParser = Callable[[Any, str], Example]  # (JSON object, "file:line") -> Example


def iter_examples(paths: Sequence[str | Path], parse: RowParser = parse_row) -> Iterator[Example]:
    """Rows of the JSONL files in order, streamed line by line; blank lines are skipped."""
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise InputError(f"training file {path} does not exist.")
        with path.open(encoding="utf-8-sig") as f:
            for n, obj in iter_jsonl(f, str(path)):
                yield parse(obj, f"{path}:{n}")


def shuffled(items: Iterator[Example], buffer: int, rng: random.Random) -> Iterator[Example]:
    """A streaming shuffle through a buffer of `buffer` rows (1 keeps the file order)."""
    buf: list[Example] = []
    for item in items:
        if len(buf) < buffer:
            buf.append(item)
            continue
        i = rng.randrange(buffer)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


@dataclass
class RawBatch:
    """A global batch: `batch_size` rows of one task, and its index in the stream."""

    index: int
    task: str
    examples: list[Example]


class BatchStream:
    """The deterministic stream of single-task global batches over the files, epoch after epoch."""

    def __init__(self, paths: Sequence[str | Path], batch_size: int, *, seed: int = 0,
                 shuffle_buffer: int = 10000, parse: RowParser = parse_row) -> None:
        if not paths:
            raise InputError("no training files; set data.train_files in the config.")
        if batch_size < 2:
            raise InputError(f"batch_size={batch_size} is too small: in-batch negatives need at least 2 rows.")
        self.paths = [Path(p) for p in paths]
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = max(1, shuffle_buffer)
        self.parse = parse

    def epoch(self, e: int) -> Iterator[tuple[str, list[Example]]]:
        rng = random.Random(self.seed * 1_000_003 + e)
        pending: dict[str, list[Example]] = defaultdict(list)
        for ex in shuffled(iter_examples(self.paths, self.parse), self.shuffle_buffer, rng):
            rows = pending[ex.task]
            rows.append(ex)
            if len(rows) == self.batch_size:
                yield ex.task, rows
                pending[ex.task] = []

    def __iter__(self) -> Iterator[RawBatch]:
        return self.batches(0)

    def batches(self, start: int = 0) -> Iterator[RawBatch]:
        """Batches from index `start` on (the earlier ones are replayed without tokenising)."""
        index, e = 0, 0
        while True:
            n_epoch = 0
            for task, rows in self.epoch(e):
                n_epoch += 1
                if index >= start:
                    yield RawBatch(index, task, rows)
                index += 1
            if n_epoch == 0:
                raise InputError(
                    f"the training files hold fewer than batch_size={self.batch_size} rows of any one task, "
                    "so no batch can be formed; lower train.batch_size or add rows.")
            e += 1


@dataclass
class TrainBatch:
    """One rank's share of a global batch, tokenised: queries, positives, K negatives per row (row-major)."""

    index: int
    task: str
    queries: list[list[int]]
    positives: list[list[int]]
    negatives: list[list[int]]
    num_negatives: int
    pos_keys: torch.Tensor  # [b] keys of the local positives
    neg_keys: torch.Tensor  # [b, K]
    pos_keys_all: torch.Tensor  # [N] keys of the global positives
    offset: int  # index of the first local row in the global batch

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for part in (self.queries, self.positives, self.negatives) for s in part)

    @property
    def sequences(self) -> list[list[int]]:
        """Queries, then positives, then negatives: the order of the embedding rows."""
        return [*self.queries, *self.positives, *self.negatives]


@dataclass
class Collator:
    """Turns a RawBatch into a rank's TrainBatch (sampling positives and negatives deterministically)."""

    tokenizer: QwenTokenizer
    query_max_length: int = 512
    doc_max_length: int = 512
    num_negatives: int = 0
    default_instruction: str | None = None
    seed: int = 0

    def __call__(self, raw: RawBatch, rank: int = 0, world_size: int = 1) -> TrainBatch:
        n = len(raw.examples)
        if n % world_size:
            raise InputError(f"batch_size={n} does not divide over {world_size} processes; use a multiple.")
        rng = random.Random(f"{self.seed}:{raw.index}")
        k = min([self.num_negatives] + [len(ex.negatives) for ex in raw.examples])
        pos = [ex.positives[0] if len(ex.positives) == 1 else rng.choice(ex.positives) for ex in raw.examples]
        negs = [rng.sample(ex.negatives, k) for ex in raw.examples]
        b = n // world_size
        lo, hi = rank * b, (rank + 1) * b
        queries = []
        for ex in raw.examples[lo:hi]:
            instruction = ex.instruction or self.default_instruction
            queries.append(format_query(ex.query, instruction) if instruction else ex.query)
        local_negs = [t for row in negs[lo:hi] for t in row]
        tok = self.tokenizer
        return TrainBatch(
            index=raw.index, task=raw.task,
            queries=tok.encode_for_embedding(queries, self.query_max_length),
            positives=tok.encode_for_embedding(pos[lo:hi], self.doc_max_length),
            negatives=tok.encode_for_embedding(local_negs, self.doc_max_length) if local_negs else [],
            num_negatives=k,
            pos_keys=torch.tensor([text_key(t) for t in pos[lo:hi]], dtype=torch.long),
            neg_keys=torch.tensor([[text_key(t) for t in row] for row in negs[lo:hi]], dtype=torch.long).view(b, k),
            pos_keys_all=torch.tensor([text_key(t) for t in pos], dtype=torch.long),
            offset=lo,
        )


@dataclass
class EvalSet:
    """A held-out retrieval set: queries (templated), a corpus, and the relevant corpus ids per query."""

    queries: list[str]
    corpus: list[str]
    relevant: list[set[int]]


def load_eval_set(path: str | Path, *, max_queries: int | None = None,
                  default_instruction: str | None = None) -> EvalSet:
    """Rows in the training format; the corpus is every distinct positive and negative of the rows."""
    queries: list[str] = []
    corpus: list[str] = []
    ids: dict[str, int] = {}
    relevant: list[set[int]] = []

    def doc_id(text: str) -> int:
        if text not in ids:
            ids[text] = len(corpus)
            corpus.append(text)
        return ids[text]

    for ex in iter_examples([path]):
        if max_queries is not None and len(queries) >= max_queries:
            break
        instruction = ex.instruction or default_instruction
        queries.append(format_query(ex.query, instruction) if instruction else ex.query)
        relevant.append({doc_id(t) for t in ex.positives})
        for t in ex.negatives:
            doc_id(t)
    if not queries:
        raise InputError(f"evaluation file {path} holds no rows.")
    return EvalSet(queries, corpus, relevant)
