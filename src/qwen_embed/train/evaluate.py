"""Held-out retrieval evaluation during training: Recall@k, MRR@k and nDCG@k with the model being trained.

Queries and corpus are embedded with the shared `Engine` (packed, token-budget batches, last-token
states), compared by cosine similarity, and scored against the binary relevance of the eval rows.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch

from ..engine import Engine
from ..model import Qwen3Model
from ..pooling import l2_normalize
from ..tokenizer import QwenTokenizer
from .data import EvalSet


def retrieval_metrics(scores: torch.Tensor, relevant: list[set[int]], k: int) -> dict[str, float]:
    """scores [Q, C] -> mean Recall@k, MRR@k and nDCG@k (binary relevance)."""
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices.tolist()  # [Q, k]
    recall = mrr = ndcg = 0.0
    for ranked, rel in zip(top, relevant, strict=True):
        hits = [i for i, d in enumerate(ranked) if d in rel]
        recall += len(hits) / len(rel)
        mrr += 1.0 / (hits[0] + 1) if hits else 0.0
        dcg = sum(1.0 / math.log2(i + 2) for i in hits)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(rel), k)))
        ndcg += dcg / ideal
    n = len(relevant)
    return {f"recall@{k}": recall / n, f"mrr@{k}": mrr / n, f"ndcg@{k}": ndcg / n}


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
