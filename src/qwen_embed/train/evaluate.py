"""Held-out retrieval evaluation during training: Recall@k, MRR@k and nDCG@k with the model being trained.

Queries and corpus are embedded with the shared `Engine` (packed, token-budget batches, last-token
states), compared by cosine similarity, and scored against the binary relevance of the eval rows by the
one metrics implementation (`eval.at_k`, trec_eval's ranking and measures). The keys are eval's
(`recall_at_10`, `mrr_at_10`, `ndcg_at_10`); the log's earlier names (`recall@10`, ...) are kept beside them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from ..engine import Engine
from ..eval.at_k import mteb_scores
from ..model import Qwen3Model
from ..pooling import l2_normalize
from ..tokenizer import QwenTokenizer
from .data import EvalSet

MEASURES = ("recall", "mrr", "ndcg")


def retrieval_metrics(scores: torch.Tensor, relevant: list[set[int]], k: int) -> dict[str, float]:
    """scores [Q, C] -> mean Recall@k, MRR@k and nDCG@k (binary relevance), as `recall_at_k` ... and `recall@k` ..."""
    top_s, top_i = scores.topk(min(k, scores.shape[1]), dim=1)  # [Q, k]
    run = {str(q): {str(d): s for d, s in zip(docs, sc, strict=True)}
           for q, (docs, sc) in enumerate(zip(top_i.tolist(), top_s.tolist(), strict=True))}
    qrels = {str(q): {str(d): 1 for d in rel} for q, rel in enumerate(relevant)}
    mean, _ = mteb_scores(qrels, run, [k])
    out = {f"{m}_at_{k}": mean[f"{m}_at_{k}"] for m in MEASURES}
    return out | {f"{m}@{k}": out[f"{m}_at_{k}"] for m in MEASURES}


def evaluate(model: Qwen3Model, tokenizer: QwenTokenizer, data: EvalSet, *, device: torch.device, k: int = 10,
             query_max_length: int = 512, doc_max_length: int = 512, batch_tokens: int | None = None,
             autocast: AbstractContextManager[object] | None = None) -> dict[str, float]:
    """Embed the held-out queries and corpus with `model` (in eval mode) and score the rankings."""
    was_training = model.training
    model.eval()
    engine = Engine(model, device, batch_tokens)
    try:
        with autocast or nullcontext():
            q = l2_normalize(engine.last_hidden(tokenizer.encode_for_embedding(data.queries, query_max_length)))
            d = l2_normalize(engine.last_hidden(tokenizer.encode_for_embedding(data.corpus, doc_max_length)))
    finally:
        model.train(was_training)
    return retrieval_metrics(q @ d.T, data.relevant, k)
