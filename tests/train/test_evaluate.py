"""Held-out retrieval metrics, worked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from qwen_embed.train.evaluate import retrieval_metrics


def test_metrics_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5],   # ranking 0, 1, 3, 2
                           [0.2, 0.1, 0.3, 0.4]])  # ranking 3, 2, 0, 1
    relevant = [{1}, {0, 1}]
    m = retrieval_metrics(scores, relevant, k=3)
    # q0: its document 1 is at rank 2 -> recall 1, rr 1/2, ndcg (1/log2 3) / 1.
    # q1: documents 0 (rank 3) and 1 (rank 4, outside k) -> recall 1/2, rr 1/3,
    #     ndcg (1/log2 4) / (1 + 1/log2 3).
    assert m["recall@3"] == pytest.approx((1 + 0.5) / 2)
    assert m["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    ndcg0 = 1 / math.log2(3)
    ndcg1 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)


def test_names_are_evals_and_the_old_ones_stay() -> None:
    """One naming with eval (`ndcg_at_k`), the training log's earlier keys kept with the same values."""
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.2, 0.1, 0.3, 0.4]])
    m = retrieval_metrics(scores, [{1}, {0, 1}], k=3)
    for name in ("recall", "mrr", "ndcg"):
        assert m[f"{name}_at_3"] == m[f"{name}@3"]
    assert set(m) == {"recall_at_3", "mrr_at_3", "ndcg_at_3", "recall@3", "mrr@3", "ndcg@3"}
