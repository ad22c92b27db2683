import numpy as np
import pytest
import torch

from qwen_embed.errors import InputError
from qwen_embed.pooling import check_dim, l2_normalize, last_token_pool, truncate_dim


def test_last_token_pool() -> None:
    h = torch.arange(12.0).view(6, 2)
    cu = torch.tensor([0, 3, 4, 6], dtype=torch.int32)
    assert last_token_pool(h, cu).tolist() == [[4.0, 5.0], [6.0, 7.0], [10.0, 11.0]]


def test_slice_then_normalise() -> None:
    x = torch.tensor([[3.0, 4.0, 100.0]])
    y = l2_normalize(truncate_dim(x, 2))
    assert torch.allclose(y, torch.tensor([[0.6, 0.8]]))
    assert l2_normalize(torch.zeros(1, 4)).abs().sum() == 0  # no NaN for a zero vector


@pytest.mark.parametrize("dim", [0, 31, 65, -1])
def test_dim_out_of_range(dim: int) -> None:
    with pytest.raises(InputError, match=r"32\.\.64"):
        check_dim(dim, 64)


@pytest.mark.parametrize("dim", [1.5, "32", True])
def test_dim_wrong_type(dim: object) -> None:
    with pytest.raises(InputError, match="integer"):
        check_dim(dim, 64)  # type: ignore[arg-type]


def test_dim_bounds_accepted() -> None:
    assert check_dim(None, 64) == 64 and check_dim(32, 64) == 32 and check_dim(64, 64) == 64


def test_non_finite_vectors_are_an_error_not_output() -> None:
    """Issue 23.2: NaN weights or a broken config gave NaN vectors that were written and served."""
    import numpy as np
    import pytest
    import torch

    from qwen_embed.errors import ModelOutputError
    from qwen_embed.pooling import finish

    x = torch.randn(3, 64)
    x[1, 5] = float("nan")
    with pytest.raises(ModelOutputError, match="1 of 3 inputs"):
        finish(x, 64)
    assert np.isfinite(finish(torch.randn(2, 64), 32)).all()


@pytest.mark.parametrize("kind", ["list", "numpy", "torch"])
def test_rank_by_score_best_first_ties_in_input_order_nan_last(kind: str) -> None:
    import math

    import numpy as np

    from qwen_embed.pooling import rank_by_score

    raw = [0.5, math.nan, 0.9, 0.5, -math.inf, math.nan, math.inf, 0.9]
    # by hand: inf (6), the two 0.9 in input order (2, 7), the two 0.5 (0, 3), -inf (4), then the NaNs (1, 5)
    want = [6, 2, 7, 0, 3, 4, 1, 5]
    scores = {"list": raw, "numpy": np.array(raw), "torch": torch.tensor(raw, dtype=torch.float64)}[kind]
    assert rank_by_score(scores) == want
    assert rank_by_score([]) == [] and rank_by_score([math.nan, math.nan]) == [0, 1]


def test_check_dim_takes_numpy_integers_as_the_int_they_are() -> None:
    assert check_dim(np.int64(32), 64) == 32 and type(check_dim(np.int32(48), 64)) is int
    with pytest.raises(InputError, match="dim must be an integer"):
        check_dim(np.float32(32), 64)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="dim must be an integer"):
        check_dim(np.bool_(True), 64)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"this model supports 32\.\.64"):
        check_dim(np.int64(65), 64)
