"""The improved InfoNCE against a hand-enumerated 3-row batch, its masks and gradients, and Matryoshka."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qwen_embed.train.losses import (
    improved_info_nce,
    improved_info_nce_rows,
    matryoshka_info_nce,
    text_key,
    text_keys,
)


def vec(deg: float, norm: float = 1.0) -> list[float]:
    r = math.radians(deg)
    return [norm * math.cos(r), norm * math.sin(r)]


def cosd(deg: float) -> float:
    return math.cos(math.radians(deg))


# Angles in degrees; cosine similarity of two vectors = cos(angle difference). Norms differ on purpose.
Q = torch.tensor([vec(0, 1.0), vec(20, 2.0), vec(200, 0.5)], dtype=torch.float64)
P = torch.tensor([vec(60, 3.0), vec(100, 1.0), vec(230, 1.5)], dtype=torch.float64)
N = torch.tensor([[vec(90, 1.0)], [vec(180, 2.0)], [vec(210, 1.0)]], dtype=torch.float64)
# p2 is the same text as p0; n1 is the same text as p1.
POS_KEYS = torch.tensor([11, 22, 11])
NEG_KEYS = torch.tensor([[33], [22], [44]])
T = 0.5

# The unmasked terms of each row's denominator, worked by hand (margin 0.1):
# row 0: s+ = cos60 = 0.5, limit 0.6. n0 cos90 kept. (q0,q1) cos20 > 0.6 masked (margin).
#   (q0,q2) cos200 masked (key: p2 == p0). (p0,p1) cos40 > 0.6 masked (margin). (p0,p2) masked (key).
#   (q0,p1) cos100 kept. (q0,p2) masked (key).
# row 1: s+ = cos80 = 0.174, limit 0.274. n1 masked (key: n1 == p1). (q1,q0) cos20 masked (margin).
#   (q1,q2) cos180 kept. (p1,p0) cos40 masked (margin). (p1,p2) cos130 kept. (q1,p0) cos40 masked
#   (margin). (q1,p2) cos210 kept.
# row 2: s+ = cos30 = 0.866, limit 0.966. n2 cos10 = 0.985 masked (margin). (q2,q0) masked (key).
#   (q2,q1) cos180 kept. (p2,p0) cos170 masked (key). (p2,p1) cos130 kept. (q2,p0) masked (key).
#   (q2,p1) cos100 kept.
ROWS = [
    (cosd(60), [cosd(90), cosd(100)]),
    (cosd(80), [cosd(180), cosd(130), cosd(210)]),
    (cosd(30), [cosd(180), cosd(130), cosd(100)]),
]


def hand_loss() -> float:
    total = 0.0
    for s_pos, others in ROWS:
        z = math.exp(s_pos / T) + sum(math.exp(s / T) for s in others)
        total += -math.log(math.exp(s_pos / T) / z)
    return total / 3


def test_hand_computed_three_rows() -> None:
    loss = improved_info_nce(Q, P, N, temperature=T, margin=0.1, pos_keys=POS_KEYS, neg_keys=NEG_KEYS)
    assert loss.dtype == torch.float32  # similarities in float32
    assert loss.item() == pytest.approx(hand_loss(), rel=1e-6)


def test_without_masks_every_term_counts() -> None:
    # No keys and a margin nobody exceeds: all 1 + 1 + 3 * 2 terms of every row are in the denominator.
    loss = improved_info_nce(Q, P, N, temperature=T, margin=10.0)
    q, p, n = (F.normalize(x, dim=-1) for x in (Q, P, N))
    expected = 0.0
    for i in range(3):
        terms = [q[i] @ p[i], q[i] @ n[i, 0]]
        terms += [x for j in range(3) if j != i for x in (q[i] @ q[j], p[i] @ p[j], q[i] @ p[j])]
        z = sum(math.exp(float(s) / T) for s in terms)
        expected += math.log(z) - float(q[i] @ p[i]) / T
    assert loss.item() == pytest.approx(expected / 3, rel=1e-6)


def test_masked_terms_get_zero_gradient() -> None:
    q, p, n = (x.clone().requires_grad_(True) for x in (Q, P, N))
    loss = improved_info_nce(q, p, n, temperature=T, margin=0.1, pos_keys=POS_KEYS, neg_keys=NEG_KEYS)
    loss.backward()
    assert n.grad is not None
    assert torch.count_nonzero(n.grad[1]) == 0  # masked by the identical-text rule
    assert torch.count_nonzero(n.grad[2]) == 0  # masked by the margin rule
    assert torch.count_nonzero(n.grad[0]) > 0  # kept
    # Same gradients as the hand-enumerated loss built with autograd from the kept terms only.
    q2, p2, n2 = (x.clone().requires_grad_(True) for x in (Q, P, N))

    def s(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a, b, dim=0)

    kept = [
        (s(q2[0], p2[0]), [s(q2[0], n2[0, 0]), s(q2[0], p2[1])]),
        (s(q2[1], p2[1]), [s(q2[1], q2[2]), s(p2[1], p2[2]), s(q2[1], p2[2])]),
        (s(q2[2], p2[2]), [s(q2[2], q2[1]), s(p2[2], p2[1]), s(q2[2], p2[1])]),
    ]
    ref = sum(torch.logsumexp(torch.stack([sp, *o]) / T, 0) - sp / T for sp, o in kept) / 3
    ref.backward()
    for a, b in ((q, q2), (p, p2), (n, n2)):
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-7)


def test_no_negatives_and_row_split_equals_whole_batch() -> None:
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    keys = torch.arange(8)
    whole = improved_info_nce(q, p, None, temperature=0.05, pos_keys=keys)
    halves = [improved_info_nce_rows(q[i : i + 4], p[i : i + 4], None, q, p, i, temperature=0.05,
                                     pos_keys=keys[i : i + 4], pos_keys_all=keys) for i in (0, 4)]
    torch.testing.assert_close(whole, (halves[0] + halves[1]) / 2)


def test_matryoshka_is_weighted_sum_over_dims() -> None:
    g = torch.Generator().manual_seed(1)
    q, p, n = torch.randn(4, 64, generator=g), torch.randn(4, 64, generator=g), torch.randn(4, 2, 64, generator=g)
    got = matryoshka_info_nce(q, p, n, dims=[64, 32], weights=[1.0, 0.5], temperature=0.1)
    want = improved_info_nce(q, p, n, temperature=0.1) + 0.5 * improved_info_nce(
        q[:, :32], p[:, :32], n[..., :32], temperature=0.1)
    torch.testing.assert_close(got, want)


def test_text_keys_are_stable_fingerprints() -> None:
    assert text_key("abc") == text_key("abc") != text_key("abd")
    assert text_keys(["x", "y", "x"]).tolist()[0] == text_keys(["x"]).item()
    assert text_key("abc") == 6455300059550759896  # blake2b-64: the same in every process and run
