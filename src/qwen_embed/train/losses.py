"""The contrastive loss of the Qwen3 Embedding technical report (an improved InfoNCE) and Matryoshka.

With cosine similarity s (computed in float32) and temperature t, the loss of row i is

    -log( exp(s(q_i, p_i)/t) / Z_i )
    Z_i = exp(s(q_i, p_i)/t) + sum_k m * exp(s(q_i, n_ik)/t)
          + sum_{j != i} [ m * exp(s(q_i, q_j)/t) + m * exp(s(p_i, p_j)/t) + m * exp(s(q_i, p_j)/t) ]

where every term but the positive carries a mask m that drops it (m = 0) when its own similarity
exceeds s(q_i, p_i) + margin (a likely false negative), or when its document is the positive's own
text (keys: for n_ik and p_j the document key equals pos_keys[i]; for (q_i, q_j), the pair's document
pos_keys[j] equals pos_keys[i]). Masked terms are filled with -inf before the log-sum-exp, so they
get exactly zero gradient. The loss is the mean over rows.

Temperature: the report does not publish its value. The default here, 0.05, is sentence-transformers'
MultipleNegativesRankingLoss default (scale 20) and lies inside the range used by the GTE / E5 family
(0.01 .. 0.05) of last-token or mean-pooled contrastive embedders; lower values sharpen the softmax
and make the margin mask matter more.

Data parallel: `improved_info_nce_rows` takes the local rows and the gathered (global) q / p with the
offset of the local rows in the global batch, so that each rank computes the loss of its own rows
against every in-batch document of every rank (labels offset per rank).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DEFAULT_TEMPERATURE = 0.05
DEFAULT_MARGIN = 0.1


def text_key(text: str) -> int:
    """An int64 fingerprint of a document text, for the identical-text rule (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def text_keys(texts: Sequence[str]) -> torch.Tensor:
    """`text_key` of each text as a [n] int64 tensor."""
    return torch.tensor([text_key(t) for t in texts], dtype=torch.long)


def improved_info_nce_rows(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, q_all: torch.Tensor, pos_all: torch.Tensor,
    offset: int, *, temperature: float, margin: float = DEFAULT_MARGIN, pos_keys: torch.Tensor | None = None,
    neg_keys: torch.Tensor | None = None, pos_keys_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss of the local rows q, pos [b, D] (rows offset..offset+b of the global q_all, pos_all [N, D]).

    neg [b, K, D] are the local rows' hard negatives (or None); keys as in `improved_info_nce`, with
    pos_keys_all [N] the keys of the global positives.
    """
    b, n = q.shape[0], q_all.shape[0]
    qn, pn = F.normalize(q.float(), dim=-1), F.normalize(pos.float(), dim=-1)  # [b, D]
    qa, pa = F.normalize(q_all.float(), dim=-1), F.normalize(pos_all.float(), dim=-1)  # [N, D]
    rows = torch.arange(b, device=q.device)
    cols = rows + offset  # global index of each local row
    s_qp = qn @ pa.T  # [b, N]; column offset+i is the positive of row i
    s_qq = qn @ qa.T  # [b, N]
    s_pp = pn @ pa.T  # [b, N]
    s_pos = s_qp[rows, cols]  # [b]
    limit = (s_pos + margin).detach()[:, None]  # [b, 1]
    other = torch.ones(b, n, dtype=torch.bool, device=q.device)
    other[rows, cols] = False  # j != i
    same_doc = torch.zeros(b, n, dtype=torch.bool, device=q.device)
    if pos_keys is not None:
        keys_all = pos_keys_all if pos_keys_all is not None else pos_keys
        same_doc = pos_keys[:, None].to(q.device) == keys_all[None, :].to(q.device)  # [b, N]
    parts = []
    for s in (s_qp, s_qq, s_pp):
        keep = other & ~same_doc & (s.detach() <= limit)
        parts.append(s.masked_fill(~keep, float("-inf")))
    qp = parts[0].clone()
    qp[rows, cols] = s_pos  # the positive is never masked
    parts[0] = qp
    if neg is not None and neg.shape[1] > 0:
        nn_ = F.normalize(neg.float(), dim=-1)  # [b, K, D]
        s_qn = torch.einsum("bd,bkd->bk", qn, nn_)  # [b, K]
        keep = s_qn.detach() <= limit
        if pos_keys is not None and neg_keys is not None:
            keep &= neg_keys.to(q.device) != pos_keys[:, None].to(q.device)
        parts.append(s_qn.masked_fill(~keep, float("-inf")))
    logits = torch.cat(parts, dim=1) / temperature  # [b, 3N (+K)]
    return (torch.logsumexp(logits, dim=1) - s_pos / temperature).mean()


def improved_info_nce(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, *, temperature: float = DEFAULT_TEMPERATURE,
    margin: float = DEFAULT_MARGIN, pos_keys: torch.Tensor | None = None, neg_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """The report's improved InfoNCE: q, pos [B, D], neg [B, K, D] or None -> mean loss (float32 scalar).

    pos_keys [B] and neg_keys [B, K] are integer fingerprints of the document texts (`text_keys`); None
    disables the identical-text rule (every document counts as distinct).
    """
    return improved_info_nce_rows(q, pos, neg, q, pos, 0, temperature=temperature, margin=margin,
                                  pos_keys=pos_keys, neg_keys=neg_keys)


def matryoshka_dims(dims: Sequence[int] | None, hidden: int) -> list[int]:
    """The Matryoshka dims to train (None -> just the full size), each clipped to the hidden size."""
    if not dims:
        return [hidden]
    return [min(int(d), hidden) for d in dims]


def matryoshka_info_nce(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, *, dims: Sequence[int],
    weights: Sequence[float] | None = None, temperature: float = DEFAULT_TEMPERATURE, margin: float = DEFAULT_MARGIN,
    pos_keys: torch.Tensor | None = None, neg_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """sum_d w_d * improved_info_nce(x[..., :d]) over the Matryoshka dims (weights default to 1 each)."""
    return matryoshka_rows(q, pos, neg, q, pos, 0, dims=dims, weights=weights, temperature=temperature,
                           margin=margin, pos_keys=pos_keys, neg_keys=neg_keys)


def matryoshka_rows(
    q: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor | None, q_all: torch.Tensor, pos_all: torch.Tensor,
    offset: int, *, dims: Sequence[int], weights: Sequence[float] | None = None,
    temperature: float = DEFAULT_TEMPERATURE, margin: float = DEFAULT_MARGIN, pos_keys: torch.Tensor | None = None,
    neg_keys: torch.Tensor | None = None, pos_keys_all: torch.Tensor | None = None,
) -> torch.Tensor:
    """`matryoshka_info_nce` of local rows against gathered q_all / pos_all (see `improved_info_nce_rows`)."""
    w = list(weights) if weights is not None else [1.0] * len(dims)
    assert len(w) == len(dims), "one weight per Matryoshka dim"
    total = q.new_zeros((), dtype=torch.float32)
    for d, wd in zip(dims, w, strict=True):
        total = total + wd * improved_info_nce_rows(
            q[..., :d], pos[..., :d], None if neg is None else neg[..., :d], q_all[..., :d], pos_all[..., :d],
            offset, temperature=temperature, margin=margin, pos_keys=pos_keys, neg_keys=neg_keys,
            pos_keys_all=pos_keys_all)
    return total
