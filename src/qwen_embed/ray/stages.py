"""Ray Data stages: embed a text column, or score query/document pairs, with one model per actor.

Each stage is a plain callable class (Ray Data builds one instance per actor and calls it once per
batch, a `pyarrow.Table`). The whole batch goes to the packed token-budget engine in one call
(`Embedder.embed_ids` / `Embedder.encode`, `Reranker.score_pairs`), which sorts it by length and packs
it into full forward passes: never one call per row.

    ds = ray.data.read_parquet("s3://bucket/corpus/")
    ds = embed_dataset(ds, "Qwen/Qwen3-Embedding-0.6B", num_gpus=8)       # + column "vector"
    ds = rerank_dataset(pairs, "Qwen/Qwen3-Reranker-0.6B", num_gpus=8)     # + column "score"

Tokenization runs either inside each model actor (`tokenize="actor"`, the default: `Embedder.encode` on
the batch's texts) or in a CPU stage before the model (`tokenize="stage"`: `tokenize_batch` as plain Ray
tasks, each worker process loading the tokenizer once; tasks hold no CPU between batches, so they share
the cluster with the model actors without starving them). In the actor was 1.3-1.5x faster in
`benchmarks/scale.py` on a 2-core host (BENCHMARKS.md): the stage pays the tokenizer's load in every new
worker process and a round trip of the token ids through the object store; a GPU cluster with spare cores
may still gain from the stage (not measured). Both give the same token ids (`Embedder.tokenize`'s
rule: `QwenTokenizer.encode_for_embedding` at the embedder's max_length), so the same vectors.

GPU actors take one GPU each (`num_gpus` actors, `num_gpus=1` per actor: Ray sets each actor's
CUDA_VISIBLE_DEVICES, so the model goes on `cuda`); CPU actors (`num_gpus=0`) take `cpus_per_actor`
cores each and pin torch to that many threads. Ray is imported only inside `embed_dataset` and
`rerank_dataset` (the optional `[ray]` extra); the stage classes themselves need only qwen-embed.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InputError, is_whole

TOKENIZE_MODES = ("stage", "actor")
DEFAULT_TOKENIZE = "actor"  # measured faster on CPU (benchmarks/scale.py, BENCHMARKS.md)
DEFAULT_BATCH_ROWS = 1024
IDS_COLUMN = "input_ids"
TOKENIZE_CPUS = 0.5  # per tokenization task; unlike the actors' whole cores, so Ray keeps it a stage of its own


@dataclass(frozen=True)
class ModelLoad:
    """How each actor loads its model (plain data: it is pickled to the actors)."""

    model: str
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None
    batch_tokens: int | None = None
    compile: bool | None = None
    threads: int | None = None  # torch threads of a CPU actor
    deterministic: bool = False  # batch-invariant kernels (docs/deterministic.md)

    @classmethod
    def for_actors(cls, model: str | os.PathLike[str], *, num_gpus: int, cpus_per_actor: int, dtype: str | None,
                   max_length: int | None, batch_tokens: int | None, compile: bool | None,
                   deterministic: bool) -> ModelLoad:
        """The load of each model actor: one GPU each (`num_gpus` > 0), else a CPU actor of `cpus_per_actor`
        torch threads."""
        return cls(os.fspath(model), "cuda" if num_gpus else "cpu", dtype, max_length, batch_tokens, compile,
                   None if num_gpus else cpus_per_actor, deterministic)


def _pin_threads(load: ModelLoad) -> None:
    if load.threads:
        import torch

        torch.set_num_threads(load.threads)


class TokenizeStage:
    """CPU stage: `text_column` -> `input_ids` (list<int32>), the embedder's own tokenization rule.

    It needs the tokenizer only: its worker processes never import torch."""

    def __init__(self, model: str, *, max_length: int | None = None, text_column: str = "text",
                 instruction: str | None = None, drop_text: bool = False) -> None:
        from ..config import ModelConfig
        from ..hub import resolve_model_dir
        from ..settings import check_max_length
        from ..tokenizer import QwenTokenizer

        path = resolve_model_dir(model)
        self.tokenizer = QwenTokenizer.from_dir(path)
        self.max_length = check_max_length(max_length, ModelConfig.from_file(path / "config.json"))
        self.text_column = text_column
        self.instruction = instruction
        self.drop_text = drop_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ..tokenizer import check_texts, format_query

        texts = check_texts(batch.column(self.text_column).to_pylist(), self.text_column)
        if self.instruction is not None:
            texts = [format_query(t, self.instruction) for t in texts]
        ids = self.tokenizer.encode_for_embedding(texts, self.max_length)
        out = batch.drop_columns([self.text_column]) if self.drop_text else batch
        return out.append_column(IDS_COLUMN, pa.array(ids, pa.list_(pa.int32())))


@functools.lru_cache(maxsize=4)
def _tokenize_stage(model: str, max_length: int | None, text_column: str, instruction: str | None,
                    drop_text: bool) -> TokenizeStage:
    return TokenizeStage(model, max_length=max_length, text_column=text_column, instruction=instruction,
                         drop_text=drop_text)


def tokenize_batch(batch: pa.Table, *, model: str, max_length: int | None = None, text_column: str = "text",
                   instruction: str | None = None, drop_text: bool = False) -> pa.Table:
    """`TokenizeStage` as a function for Ray tasks: the tokenizer is loaded once per worker process."""
    return _tokenize_stage(model, max_length, text_column, instruction, drop_text)(batch)


class EmbedStage:
    """Model actor: a batch's `input_ids` (or texts) -> `output_column`, fixed_size_list<float32|float16>[dim].

    With `input_ids` in the batch (a `TokenizeStage` ran before), they are embedded as they are and the
    column is dropped; otherwise `text_column` is tokenized here. `drop_text` removes the text column
    from the output (the vectors are what is kept)."""

    def __init__(self, load: ModelLoad, *, dim: int | None = None, dtype_out: str = "float32",
                 text_column: str = "text", output_column: str = "vector", instruction: str | None = None,
                 drop_text: bool = False) -> None:
        from ..embedder import Embedder
        from ..pooling import check_dim

        _pin_threads(load)
        self.embedder = Embedder.from_pretrained(load.model, device=load.device, dtype=load.dtype,
                                                 max_length=load.max_length, batch_tokens=load.batch_tokens,
                                                 compile=load.compile, deterministic=load.deterministic)
        self.dim = check_dim(dim, self.embedder.hidden_size)
        self.dtype_out = check_dtype_out(dtype_out)
        self.text_column = text_column
        self.output_column = output_column
        self.instruction = instruction
        self.drop_text = drop_text

    def __call__(self, batch: pa.Table) -> pa.Table:
        from .parts import vector_column

        if IDS_COLUMN in batch.column_names:
            seqs = batch.column(IDS_COLUMN).to_pylist()
            vecs = self.embedder.embed_ids(seqs, dim=self.dim, progress=False)
            batch = batch.drop_columns([IDS_COLUMN])
        else:
            texts = batch.column(self.text_column).to_pylist()
            vecs = self.embedder.encode(texts, instruction=self.instruction, dim=self.dim, progress=False)
        if self.drop_text and self.text_column in batch.column_names:
            batch = batch.drop_columns([self.text_column])
        return batch.append_column(self.output_column, vector_column(vecs, self.dtype_out))


class RerankStage:
    """Model actor: `query_column` and `document_column` -> `score_column` (float32, P(yes)), one packed
    pass per batch (`Reranker.score_pairs`)."""

    def __init__(self, load: ModelLoad, *, query_column: str = "query", document_column: str = "document",
                 score_column: str = "score", instruction: str | None = None, template: str = "card") -> None:
        from ..reranker import Reranker

        _pin_threads(load)
        self.reranker = Reranker.from_pretrained(load.model, device=load.device, dtype=load.dtype,
                                                 template=template, max_length=load.max_length,
                                                 batch_tokens=load.batch_tokens, compile=load.compile,
                                                 deterministic=load.deterministic)
        self.query_column = query_column
        self.document_column = document_column
        self.score_column = score_column
        self.instruction = instruction

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = list(zip(batch.column(self.query_column).to_pylist(), batch.column(self.document_column).to_pylist(),
                         strict=True))
        scores = self.reranker.score_pairs(pairs, instruction=self.instruction, progress=False)
        return batch.append_column(self.score_column, pa.array(np.asarray(scores, dtype=np.float32)))


def check_dtype_out(dtype_out: str) -> str:
    """float32 or float16 (the precisions a Parquet vector column holds here)."""
    if dtype_out not in ("float32", "float16"):
        raise InputError(f"dtype_out={dtype_out!r} is not supported; use float32 or float16.")
    return dtype_out


def check_tokenize(mode: str) -> str:
    """'stage' (a CPU stage before the model actors) or 'actor' (inside each model actor)."""
    if mode not in TOKENIZE_MODES:
        raise InputError(f"tokenize={mode!r} is not known; use one of {', '.join(TOKENIZE_MODES)}.")
    return mode


def actor_resources(num_gpus: int, actors: int, cpus_per_actor: int) -> tuple[int, dict[str, Any]]:
    """(actor count, Ray resources per actor): one actor per GPU, else `actors` CPU actors."""
    for name, value, low in (("num_gpus", num_gpus, 0), ("actors", actors, 1), ("cpus_per_actor", cpus_per_actor, 1)):
        if not is_whole(value, low):
            raise InputError(f"{name} must be an integer >= {low}, got {value!r}.")
    if num_gpus:
        return num_gpus, {"num_gpus": 1, "num_cpus": cpus_per_actor}
    return actors, {"num_cpus": cpus_per_actor}


def _pool(size: int) -> Any:
    import ray.data

    return ray.data.ActorPoolStrategy(size=size)


def embed_dataset(ds: Any, model: str | os.PathLike[str], *, text_column: str = "text", output_column: str = "vector",
                  dim: int | None = None, dtype_out: str = "float32", instruction: str | None = None,
                  num_gpus: int = 0, actors: int = 1, cpus_per_actor: int = 1,
                  batch_rows: int = DEFAULT_BATCH_ROWS, tokenize: str = DEFAULT_TOKENIZE, drop_text: bool = False,
                  dtype: str | None = None, max_length: int | None = None, batch_tokens: int | None = None,
                  compile: bool | None = None, deterministic: bool = False) -> Any:
    """A Ray Dataset with a text column -> the same rows plus `output_column` (lazy, streaming).

    num_gpus > 0: that many actors, one GPU each; else `actors` CPU actors of `cpus_per_actor` cores.
    tokenize: 'actor' (default, in the model actors) or 'stage' (CPU tasks before them). batch_rows: rows per model call
    (larger batches pack better; the engine cuts them into forward passes of `batch_tokens`). deterministic:
    batch-invariant kernels, so a row's vector does not depend on the rows batched with it."""
    n, resources = actor_resources(num_gpus, actors, cpus_per_actor)
    check_tokenize(tokenize)
    check_dtype_out(dtype_out)
    load = ModelLoad.for_actors(model, num_gpus=num_gpus, cpus_per_actor=cpus_per_actor, dtype=dtype,
                                max_length=max_length, batch_tokens=batch_tokens, compile=compile,
                                deterministic=deterministic)
    if tokenize == "stage":
        ds = ds.map_batches(tokenize_batch, batch_size=batch_rows, batch_format="pyarrow", num_cpus=TOKENIZE_CPUS,
                            fn_kwargs={"model": load.model, "max_length": max_length, "text_column": text_column,
                                       "instruction": instruction, "drop_text": drop_text})
    return ds.map_batches(EmbedStage, batch_size=batch_rows, batch_format="pyarrow", compute=_pool(n),
                          fn_constructor_args=(load,),
                          fn_constructor_kwargs={"dim": dim, "dtype_out": dtype_out, "text_column": text_column,
                                                 "output_column": output_column, "instruction": instruction,
                                                 "drop_text": drop_text},
                          **resources)


def rerank_dataset(ds: Any, model: str | os.PathLike[str], *, query_column: str = "query",
                   document_column: str = "document", score_column: str = "score", instruction: str | None = None,
                   template: str = "card", num_gpus: int = 0, actors: int = 1, cpus_per_actor: int = 1,
                   batch_rows: int = DEFAULT_BATCH_ROWS, dtype: str | None = None, max_length: int | None = None,
                   batch_tokens: int | None = None, compile: bool | None = None, deterministic: bool = False) -> Any:
    """A Ray Dataset of (query, document) rows -> the same rows plus `score_column` (float32 P(yes));
    deterministic: batch-invariant kernels (a pair's score does not depend on its batch)."""
    n, resources = actor_resources(num_gpus, actors, cpus_per_actor)
    load = ModelLoad.for_actors(model, num_gpus=num_gpus, cpus_per_actor=cpus_per_actor, dtype=dtype,
                                max_length=max_length, batch_tokens=batch_tokens, compile=compile,
                                deterministic=deterministic)
    return ds.map_batches(RerankStage, batch_size=batch_rows, batch_format="pyarrow", compute=_pool(n),
                          fn_constructor_args=(load,),
                          fn_constructor_kwargs={"query_column": query_column, "document_column": document_column,
                                                 "score_column": score_column, "instruction": instruction,
                                                 "template": template},
                          **resources)

