"""The reranker losses (rerank_losses.py) against their formulas written out here in float64: the full-vocabulary
log-softmax of the label token (sft), the logistic loss of s = logit(yes) - logit(no) (bce), log-sum-exp of a
group minus its positive (listwise); sums in float32 also from bfloat16 inputs; gradients equal autograd's on
the reference formulas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from qwen_embed.train.rerank_losses import LOSSES, bce_loss, listwise_loss, sft_loss, yes_no_margin

V, H = 40, 16  # vocabulary, hidden size
YES, NO = 29, 7
BIG_V, BIG_YES, BIG_NO = 600, 523, 301  # ids that bf16 cannot hold exactly (it rounds 523 to 524)


def randn(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def labels_of(n: int, seed: int) -> torch.Tensor:
    out = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
    out[0] = 1  # both labels present
    if n > 1:
        out[1] = 0
    return out


# -- the formulas, in float64 from elementary operations ----------------------------------------------------
def ref_log_softmax(x: torch.Tensor) -> torch.Tensor:
    """log softmax over the last axis: x - max - log(sum(exp(x - max)))."""
    m = x.max(-1, keepdim=True).values
    return x - m - torch.log(torch.exp(x - m).sum(-1, keepdim=True))


def ref_sft(h: torch.Tensor, w: torch.Tensor, labels: Sequence[int], yes: int = YES, no: int = NO) -> torch.Tensor:
    """Sum over rows of -log softmax(h W^T)[yes if label else no], over all V tokens."""
    logp = ref_log_softmax(h.double() @ w.double().T)  # [n, V]
    return -sum((logp[i, yes if int(y) else no] for i, y in enumerate(labels)), torch.zeros((), dtype=torch.float64))


def ref_softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x)) = max(x, 0) + log(1 + exp(-|x|))."""
    return torch.clamp(x, min=0) + torch.log1p(torch.exp(-x.abs()))


def ref_bce(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of -y log sigmoid(s) - (1 - y) log(1 - sigmoid(s)) = y log(1 + e^-s) + (1 - y) log(1 + e^s)."""
    s, y = s.double(), y.double()
    return (y * ref_softplus(-s) + (1 - y) * ref_softplus(s)).sum()


def ref_listwise(s: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Sum over groups of log(sum_j exp(s_j)) - s_0."""
    total = torch.zeros((), dtype=torch.float64)
    start = 0
    for n in sizes:
        g = s.double()[start:start + n]
        m = g.max()
        total = total + m + torch.log(torch.exp(g - m).sum()) - g[0]
        start += n
    return total


def close(got: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> bool:
    return bool(torch.allclose(got.double(), expected.double(), rtol=rel, atol=rel))


# -- values -------------------------------------------------------------------------------------------------
def test_losses_are_named() -> None:
    assert LOSSES == ("sft", "bce", "listwise")


@pytest.mark.parametrize("n", [1, 6])
def test_margin_is_the_yes_no_logit_difference(n: int) -> None:
    h, w = randn(n, H, seed=1), randn(V, H, seed=2)
    s = yes_no_margin(h, w[YES] - w[NO])
    logits = h.double() @ w.double().T
    assert s.dtype == torch.float32 and s.shape == (n,)
    assert close(s, logits[:, YES] - logits[:, NO])
    two_way_yes = torch.exp(logits[:, YES]) / (torch.exp(logits[:, YES]) + torch.exp(logits[:, NO]))
    assert close(torch.sigmoid(s), two_way_yes)  # the reranker's score


@pytest.mark.parametrize("n", [1, 7])
@pytest.mark.parametrize("label_dtype", [torch.int64, torch.int32, torch.float32])
def test_sft_is_full_vocabulary_cross_entropy_summed(n: int, label_dtype: torch.dtype) -> None:
    h, w, y = randn(n, H, seed=3), randn(V, H, seed=4, scale=0.7), labels_of(n, seed=5)
    got = sft_loss(h, w, y.to(label_dtype), YES, NO)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert close(got, ref_sft(h, w, y.tolist()))


def test_sft_is_not_the_two_way_loss() -> None:
    """The other V - 2 tokens take probability: the loss exceeds the yes/no-only cross entropy."""
    h, w, y = randn(5, H, seed=6), randn(V, H, seed=7), labels_of(5, seed=8)
    s = (h.double() @ (w[YES] - w[NO]).double())
    got = sft_loss(h, w, y, YES, NO)
    assert close(got, ref_sft(h, w, y.tolist())) and float(got) > float(ref_bce(s, y)) + 0.1


@pytest.mark.parametrize("dtype", [torch.bool, torch.bfloat16, torch.float16, torch.float32, torch.int32])
def test_sft_accepts_labels_of_any_dtype(dtype: torch.dtype) -> None:
    """The targets are the yes/no ids whatever the labels' dtype: not True (token 1), nor an id rounded to bf16."""
    h, w, y = randn(4, H, seed=9), randn(BIG_V, H, seed=10), labels_of(4, seed=11)
    assert close(sft_loss(h, w, y.to(dtype), BIG_YES, BIG_NO), ref_sft(h, w, y.tolist(), BIG_YES, BIG_NO))


def test_bce_is_the_logistic_loss_summed() -> None:
    s = torch.cat([randn(9, seed=12, scale=4.0), torch.tensor([60.0, -60.0, 60.0, -60.0, 0.0])])
    y = torch.cat([labels_of(9, seed=13).float(), torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])])
    got = bce_loss(s, y)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert close(got, ref_bce(s, y))
    # the saturated rows by hand: right by a margin of 60 -> ~e^-60, wrong -> 60 each; s = 0 -> log 2
    assert float(bce_loss(s[9:], y[9:])) == pytest.approx(120.0 + math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("sizes", [[4], [3, 1, 5, 2], [2, 2, 2], [1, 6]])
def test_listwise_is_logsumexp_minus_positive_per_group(sizes: list[int]) -> None:
    s = randn(sum(sizes), seed=14, scale=3.0)
    got = listwise_loss(s, sizes)
    assert got.dtype == torch.float32 and got.dim() == 0
    assert close(got, ref_listwise(s, sizes))


def test_listwise_groups_of_one_cost_nothing_and_order_matters() -> None:
    s = randn(5, seed=15, scale=3.0)
    assert float(listwise_loss(s, [1] * 5)) == 0.0
    # the same scores grouped differently give different sums: groups are read in the order given
    assert not close(listwise_loss(s, [2, 3]), listwise_loss(s, [3, 2]))
    assert close(listwise_loss(s, [2, 3]), ref_listwise(s, [2, 3]))


def test_listwise_refuses_sizes_that_do_not_cover_the_scores() -> None:
    with pytest.raises(RuntimeError):
        listwise_loss(randn(5, seed=16), [2, 2])


def test_empty_chunks_sum_to_zero() -> None:
    empty = torch.zeros(0, H)
    assert float(sft_loss(empty, randn(V, H, seed=17), torch.zeros(0, dtype=torch.long), YES, NO)) == 0.0
    assert float(bce_loss(torch.zeros(0), torch.zeros(0))) == 0.0
    assert float(listwise_loss(torch.zeros(0), [])) == 0.0


# -- bfloat16 inputs are computed in float32 ----------------------------------------------------------------
def test_bfloat16_inputs_are_computed_in_float32() -> None:
    """Results are float32 and match float64 on the bf16 values to 1e-5, far tighter than bf16 arithmetic."""
    h, w = randn(6, H, seed=18).bfloat16(), randn(V, H, seed=19).bfloat16()
    y = labels_of(6, seed=20)
    mv = w[YES] - w[NO]  # bf16
    s = yes_no_margin(h, mv)
    ref_s = h.double() @ mv.double()
    assert s.dtype == torch.float32 and close(s, ref_s)
    assert not close((h @ mv).float(), ref_s)  # computed in bf16 it would miss this tolerance
    assert sft_loss(h, w, y, YES, NO).dtype == torch.float32
    assert close(sft_loss(h, w, y, YES, NO), ref_sft(h, w, y.tolist()))
    sb, yb = randn(7, seed=21, scale=4.0).bfloat16(), labels_of(7, seed=32)
    assert bce_loss(sb, yb).dtype == torch.float32 and close(bce_loss(sb, yb), ref_bce(sb, yb))
    assert listwise_loss(sb, [3, 4]).dtype == torch.float32
    assert close(listwise_loss(sb, [3, 4]), ref_listwise(sb, [3, 4]))


# -- gradients ----------------------------------------------------------------------------------------------
def leaf(t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return t.detach().to(dtype).requires_grad_(True)


def test_sft_gradients_equal_autograd_on_the_formula() -> None:
    h0, w0, y = randn(5, H, seed=22), randn(V, H, seed=23, scale=0.5), labels_of(5, seed=24)
    h, w = leaf(h0), leaf(w0)
    sft_loss(h, w, y, YES, NO).backward()
    rh, rw = leaf(h0, torch.float64), leaf(w0, torch.float64)
    ref_sft(rh, rw, y.tolist()).backward()
    assert h.grad is not None and w.grad is not None and rh.grad is not None and rw.grad is not None
    assert close(h.grad, rh.grad) and close(w.grad, rw.grad)
    # and by hand: d/d logits = softmax - onehot(target); d/dh = that @ W
    p = torch.softmax(h0.double() @ w0.double().T, -1)
    p[torch.arange(5), torch.where(y.bool(), YES, NO)] -= 1
    assert close(h.grad, p @ w0.double())


def test_margin_and_bce_gradients_equal_autograd_on_the_formula() -> None:
    h0, w0, y = randn(6, H, seed=25), randn(V, H, seed=26), labels_of(6, seed=27).float()
    h, mv = leaf(h0), leaf(w0[YES] - w0[NO])
    bce_loss(yes_no_margin(h, mv), y).backward()
    rh, rmv = leaf(h0, torch.float64), leaf(w0[YES] - w0[NO], torch.float64)
    ref_bce(rh @ rmv, y).backward()
    assert h.grad is not None and mv.grad is not None and rh.grad is not None and rmv.grad is not None
    assert close(h.grad, rh.grad) and close(mv.grad, rmv.grad)
    # by hand: d/ds = sigmoid(s) - y
    s = h0.double() @ (w0[YES] - w0[NO]).double()
    assert close(h.grad, (torch.sigmoid(s) - y.double())[:, None] * (w0[YES] - w0[NO]).double())


def test_listwise_gradients_equal_autograd_on_the_formula() -> None:
    sizes = [3, 1, 4]
    s0 = randn(8, seed=28, scale=2.0)
    s = leaf(s0)
    listwise_loss(s, sizes).backward()
    rs = leaf(s0, torch.float64)
    ref_listwise(rs, sizes).backward()
    assert s.grad is not None and rs.grad is not None and close(s.grad, rs.grad)
    # by hand: softmax over the group minus 1 at its positive
    expected = torch.cat([torch.softmax(g, 0) - torch.eye(len(g))[0] for g in s0.double().split(sizes)])
    assert close(s.grad, expected)


def test_bfloat16_gradients_flow_back_in_bfloat16() -> None:
    h0, w0, y = randn(4, H, seed=29), randn(V, H, seed=30), labels_of(4, seed=31)
    h = leaf(h0, torch.bfloat16)
    sft_loss(h, w0.bfloat16(), y, YES, NO).backward()
    rh = leaf(h.detach(), torch.float64)
    ref_sft(rh, w0.bfloat16(), y.tolist()).backward()
    assert h.grad is not None and rh.grad is not None and h.grad.dtype == torch.bfloat16
    assert close(h.grad, rh.grad, rel=1e-2)
