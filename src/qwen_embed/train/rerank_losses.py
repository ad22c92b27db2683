"""Reranker losses on the last position's hidden state h [n, H], chosen by name.

- `sft` (the Qwen3 Embedding report's: supervised fine-tuning of the label token): cross entropy of the
  label token l in {"yes", "no"} over the full vocabulary, -log softmax(h W^T)[l], W the output
  embeddings [V, H]. Only the last position of each input is projected ([n, V] logits, never [T, V]).
- `bce` (ms-swift's pointwise reranker loss, sentence-transformers' CausalLM cross encoder): binary cross
  entropy on s = logit(yes) - logit(no) = h . (W[yes] - W[no]) with the 0/1 label.
- `listwise`: for a group of one positive followed by k negatives, softmax cross entropy of the positive
  over the group's s values, -log(exp(s_0) / sum_j exp(s_j)).

The inference score is sigmoid(s) (reranker.py), which `bce` trains directly and `listwise` trains up to
a per-query shift. Default `sft`: it is the report's loss, it works from any causal LM (the head rows of
"yes" and "no" are trained against the whole vocabulary, so a base or instruct model learns to answer
with those tokens at all) and it leaves a model that still is a language model. `bce` / `listwise` are
the choice for a converted seq-cls checkpoint (it has no full vocabulary head) and for ranking-only data.

Every function returns the SUM over its examples (groups for listwise), in float32, so that a caller can
split a batch into chunks and divide by the global count once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSSES = ("sft", "bce", "listwise")


def yes_no_margin(h: torch.Tensor, margin_vector: torch.Tensor) -> torch.Tensor:
    """s = logit(yes) - logit(no): h [n, H], W[yes] - W[no] [H] -> [n] float32."""
    return h.float() @ margin_vector.float()


def sft_loss(h: torch.Tensor, lm_weight: torch.Tensor, labels: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """Sum over rows of -log p(label token | input) over the full vocabulary; labels [n] in {0, 1}."""
    logits = h.float() @ lm_weight.float().T  # [n, V], last positions only
    target = torch.where(labels.bool(), yes_id, no_id)  # int64 whatever the labels' dtype (bool, bf16, ...)
    return F.cross_entropy(logits, target, reduction="sum")


def bce_loss(s: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the binary cross entropy of sigmoid(s) against labels [n] in {0, 1}."""
    return F.binary_cross_entropy_with_logits(s.float(), labels.float(), reduction="sum")


def listwise_loss(s: torch.Tensor, group_sizes: Sequence[int]) -> torch.Tensor:
    """Sum over groups (positive first, then its negatives) of -log softmax(s_group)[0]."""
    total = s.new_zeros((), dtype=torch.float32)
    for g in s.float().split(list(group_sizes)):
        total = total + torch.logsumexp(g, 0) - g[0]
    return total
