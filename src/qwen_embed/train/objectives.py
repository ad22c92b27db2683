"""What the training loop trains: one objective per model kind, plugged into the same loop.

An `Objective` owns the trained module, its data (a deterministic batch stream and a collator), the
forward/backward of one batch and the held-out evaluation; the loop (`loop.Trainer`) owns the optimiser,
the schedule, gradient averaging over ranks, checkpoints, logs and the final export.

- `EmbeddingObjective`: the trunk (`Qwen3Model`), the report's improved InfoNCE over last-token
  embeddings with in-batch negatives gathered over ranks, through GradCache (or a plain step).
- `RerankObjective`: the trunk plus its yes/no head (`RerankModel`), the `sft`, `bce` or `listwise`
  loss of rerank_losses.py on the last position. The loss is a sum over examples, so a batch is cut
  into token-budget chunks (a group never split) and each chunk's backward runs at once: exact
  gradient accumulation, the memory of one chunk. Each rank scales its sum by world / global count,
  so that averaging the gradients over ranks gives the gradient of the global mean.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from ..batching import pack
from ..checkpoint import Checkpoint
from ..errors import ConfigError, InputError
from ..model import Qwen3Model
from . import distributed as D
from .config import TrainConfig
from .data import BatchStream, Collator, TrainBatch, load_eval_set
from .gradcache import chunk_sequences, full_batch_step, grad_cache_step, pack_chunks
from .losses import matryoshka_dims, matryoshka_rows

Autocast = Callable[[], contextlib.AbstractContextManager[object]]


class Objective(Protocol):
    """The model-kind specific part of training."""

    model: nn.Module  # trained module; its state_dict is what checkpoints and exports hold
    trunk: Qwen3Model
    base: Checkpoint
    layout: str  # export layout: "embedding", "causal-lm" or "seq-cls"
    lora_task: str  # peft task type of the adapter config

    def batches(self, start: int) -> Iterator[Any]:
        """This rank's batches from global batch index `start` on."""
        ...

    def gradients(self, batch: Any) -> float:
        """Forward and backward of this rank's share (adds to .grad); returns its share of the global loss."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics with the current weights (rank 0; callers check there is an eval set)."""
        ...

    @property
    def has_eval(self) -> bool:
        ...


class EmbeddingObjective:
    """Contrastive training of an embedding trunk (improved InfoNCE, Matryoshka, GradCache)."""

    layout = "embedding"
    lora_task = "FEATURE_EXTRACTION"

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, dtype: torch.dtype, autocast: Autocast) -> None:
        self.cfg, self.info, self.autocast = cfg, info, autocast
        self.base = Checkpoint.load(cfg.model.path, info.device, dtype, want_head=False)
        self.trunk = self.model = self.base.model
        d = cfg.data
        self.stream = BatchStream(d.train_files, cfg.train.batch_size, seed=cfg.train.seed,
                                  shuffle_buffer=d.shuffle_buffer)
        self.collate = Collator(self.base.tokenizer, d.query_max_length, d.doc_max_length, d.num_negatives,
                                d.default_instruction, cfg.train.seed)
        self.dims = matryoshka_dims(cfg.loss.matryoshka_dims, self.base.config.hidden_size)
        self.weights = cfg.loss.matryoshka_weights or None
        self.eval_set = None
        if cfg.eval.file:
            self.eval_set = load_eval_set(cfg.eval.file, max_queries=cfg.eval.max_queries,
                                          default_instruction=d.default_instruction)

    @property
    def has_eval(self) -> bool:
        return self.eval_set is not None

    def batches(self, start: int) -> Iterator[TrainBatch]:
        for raw in self.stream.batches(start):
            yield self.collate(raw, self.info.rank, self.info.world_size)

    def encode(self, chunk: Any) -> torch.Tensor:
        """Packed chunk -> last-token hidden states [n, H] in float32."""
        with self.autocast():
            h = self.model(chunk, output_indices=chunk.last_indices)
        return h.float()

    def loss_fn(self, batch: TrainBatch) -> Callable[[torch.Tensor], torch.Tensor]:
        b, k = len(batch.queries), batch.num_negatives
        dev = self.info.device
        keys = batch.pos_keys.to(dev), batch.neg_keys.to(dev), batch.pos_keys_all.to(dev)

        def fn(emb: torch.Tensor) -> torch.Tensor:
            q, p = emb[:b], emb[b : 2 * b]  # [b, H]
            n = emb[2 * b :].view(b, k, -1) if k else None  # [b, K, H]
            q_all, p_all = D.gather_with_grad(q, self.info), D.gather_with_grad(p, self.info)  # [N, H]
            return matryoshka_rows(q, p, n, q_all, p_all, batch.offset, dims=self.dims, weights=self.weights,
                                   temperature=self.cfg.loss.temperature, margin=self.cfg.loss.margin,
                                   pos_keys=keys[0], neg_keys=keys[1], pos_keys_all=keys[2])
        return fn

    def gradients(self, batch: TrainBatch) -> float:
        chunks = pack_chunks(batch.sequences, self.cfg.train.chunk_tokens, self.info.device)
        if self.cfg.train.grad_cache:
            loss = grad_cache_step(self.encode, chunks, self.loss_fn(batch), self.info.device)
        else:
            loss = full_batch_step(self.encode, chunks, self.loss_fn(batch))
        return float(loss)

    def evaluate(self) -> dict[str, float]:
        from .evaluate import evaluate

        assert self.eval_set is not None
        d = self.cfg.data
        return evaluate(self.model, self.base.tokenizer, self.eval_set, device=self.info.device,
                        k=self.cfg.eval.k, query_max_length=d.query_max_length, doc_max_length=d.doc_max_length,
                        batch_tokens=self.cfg.train.chunk_tokens, autocast=self.autocast())


class RerankObjective:
    """Supervised fine-tuning of a Qwen3 reranker on yes/no labels (sft, bce or listwise)."""

    lora_task = "CAUSAL_LM"

    def __init__(self, cfg: TrainConfig, info: D.DistInfo, dtype: torch.dtype, autocast: Autocast) -> None:
        from ..reranker import RerankInputs, get_template
        from .rerank_data import RerankCollator, load_rerank_eval_set, parse_rerank_row
        from .rerank_model import load_rerank_model

        self.cfg, self.info, self.autocast = cfg, info, autocast
        r = cfg.rerank
        get_template(r.template)  # fail before loading weights
        self.model, self.base = load_rerank_model(cfg.model.path, info.device, dtype)
        self.trunk = self.model.model
        self.layout = self.model.layout
        if self.layout == "seq-cls":
            self.lora_task = "SEQ_CLS"
            if r.loss == "sft":
                raise ConfigError(f"{cfg.model.path} is a converted Qwen3ForSequenceClassification: it has no "
                                  "full-vocabulary head for rerank.loss sft; set rerank.loss to bce or listwise.")
        self.inputs = RerankInputs(self.base.tokenizer, r.template, r.max_length)
        d = cfg.data
        self.stream = BatchStream(d.train_files, cfg.train.batch_size, seed=cfg.train.seed,
                                  shuffle_buffer=d.shuffle_buffer, parse=parse_rerank_row)
        self.collate = RerankCollator(self.inputs, r.negatives_per_positive, r.loss == "listwise",
                                      d.default_instruction, cfg.train.seed)
        self.eval_set = None
        if cfg.eval.file:
            self.eval_set = load_rerank_eval_set(cfg.eval.file, max_queries=cfg.eval.max_queries,
                                                 default_instruction=d.default_instruction)
            if not any(self.eval_set.relevant):  # else the first evaluation fails, after the model is built
                raise InputError(f"evaluation file {cfg.eval.file} has no query with a relevant document (a "
                                 "positive, or a row with label 1) among its first "
                                 f"{len(self.eval_set.queries)} queries: nDCG and MRR are defined for none; add "
                                 "such rows or leave eval.file out.")

    @property
    def has_eval(self) -> bool:
        return self.eval_set is not None

    def batches(self, start: int) -> Iterator[Any]:
        for raw in self.stream.batches(start):
            yield self.collate(raw, self.info.rank, self.info.world_size)

    def chunk_loss(self, h: torch.Tensor, labels: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Summed loss of one chunk from its last-token states h [n, H] (float32)."""
        from .rerank_losses import bce_loss, listwise_loss, sft_loss, yes_no_margin

        m = self.model
        with torch.autocast(self.info.device.type, enabled=False):
            if self.cfg.rerank.loss == "sft":
                return sft_loss(h, m.head_weight(), labels, m.yes_id, m.no_id)
            s = yes_no_margin(h, m.margin_vector())  # [n]
            return listwise_loss(s, sizes) if self.cfg.rerank.loss == "listwise" else bce_loss(s, labels)

    def gradients(self, batch: Any) -> float:
        dev = self.info.device
        scale = self.info.world_size / batch.count
        starts = np.cumsum([0, *batch.group_sizes]).tolist()
        # chunks of whole groups under the token budget
        group_tokens = [sum(len(s) for s in batch.sequences[a:b]) for a, b in itertools.pairwise(starts)]
        total = 0.0
        for idx in chunk_sequences([[0] * t for t in group_tokens], self.cfg.train.chunk_tokens):
            lo, hi = starts[idx[0]], starts[idx[-1] + 1]
            packed = pack(batch.sequences[lo:hi]).to(dev)
            with self.autocast():
                h = self.model(packed)  # [n, H] float32
            loss = self.chunk_loss(h, batch.labels[lo:hi].to(dev), batch.group_sizes[idx[0] : idx[-1] + 1])
            (loss * scale).backward()
            total += float(loss.detach()) * scale
        return total

    def score(self, query: str, documents: list[str], instruction: str | None = None) -> np.ndarray:
        """Probabilities of "yes" as `Reranker.score` computes them, with the weights being trained."""
        from ..engine import Engine
        from ..reranker import finish_scores

        was = self.model.training
        self.model.eval()
        try:
            with self.autocast():
                h = Engine(self.trunk, self.info.device, self.cfg.train.chunk_tokens).last_hidden(
                    self.inputs.build(query, documents, instruction=instruction))
            return finish_scores(h, self.model.margin_vector().detach().cpu())
        finally:
            self.model.train(was)

    def evaluate(self) -> dict[str, float]:
        """nDCG@k and MRR@k of reranking each held-out query's candidates (eval/metrics.py's @k measures)."""
        from ..eval.metrics import mteb_scores

        assert self.eval_set is not None
        k = self.cfg.eval.k
        qrels, run = {}, {}
        for i, ((query, instruction), docs) in enumerate(zip(self.eval_set.queries, self.eval_set.candidates,
                                                                 strict=True)):
            if not self.eval_set.relevant[i]:
                continue  # nothing to find: no measure is defined
            scores = self.score(query, docs, instruction)
            run[str(i)] = {str(j): float(s) for j, s in enumerate(scores)}
            qrels[str(i)] = {str(j): 1 for j in self.eval_set.relevant[i]}
        mean, _ = mteb_scores(qrels, run, [k])
        return {f"ndcg_at_{k}": mean[f"ndcg_at_{k}"], f"mrr_at_{k}": mean[f"mrr_at_{k}"]}


OBJECTIVES: dict[str, type] = {"embed": EmbeddingObjective, "rerank": RerankObjective}


def make_objective(kind: str, cfg: TrainConfig, info: D.DistInfo, dtype: torch.dtype, autocast: Autocast) -> Any:
    """The objective of `qwen-embed train KIND`."""
    if kind not in OBJECTIVES:
        raise ConfigError(f"unknown training kind {kind!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[kind](cfg, info, dtype, autocast)
