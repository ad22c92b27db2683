"""engine.Engine: token-budget batches and chunks give each sequence's state, in input order.

The reference is the trunk run on one sequence at a time (no batching, no reordering to undo).
"""

from __future__ import annotations

import random

import pytest
import torch

from qwen_embed import Embedder
from qwen_embed.batching import pack
from qwen_embed.engine import Chunk, Engine


def _one_at_a_time(emb: Embedder, seqs: list[list[int]]) -> torch.Tensor:
    model = emb.checkpoint.model
    with torch.inference_mode():
        rows = []
        for s in seqs:
            batch = pack([s])
            rows.append(model(batch, output_indices=batch.last_indices)[0].float())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def seqs(small_embedder: Embedder) -> list[list[int]]:
    rng = random.Random(0)
    vocab = small_embedder.config.vocab_size
    return [[rng.randrange(10, vocab - 10) for _ in range(n)] for n in (5, 40, 1, 17, 40, 3, 28)]


@pytest.mark.parametrize("budget", [41, 64, 8192])
def test_any_budget_gives_the_states_in_input_order(small_embedder: Embedder, seqs: list[list[int]],
                                                    budget: int) -> None:
    engine = Engine(small_embedder.checkpoint.model, torch.device("cpu"), batch_tokens=budget)
    out = engine.last_hidden(seqs)
    assert out.shape == (len(seqs), small_embedder.hidden_size) and out.dtype == torch.float32
    torch.testing.assert_close(out, _one_at_a_time(small_embedder, seqs), rtol=1e-5, atol=1e-5)


def test_chunks_and_a_shared_prefix_equal_whole_sequences(small_embedder: Embedder, seqs: list[list[int]]) -> None:
    engine = Engine(small_embedder.checkpoint.model, torch.device("cpu"), batch_tokens=64, max_seqs=2)
    prefix = [11, 12, 13, 14]
    whole = [prefix + s for s in seqs[3:]]
    out = engine.last_hidden_stream([seqs[:3], Chunk([s for s in seqs[3:]], prefix)], total=len(seqs))
    torch.testing.assert_close(out[:3], _one_at_a_time(small_embedder, seqs[:3]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[3:], _one_at_a_time(small_embedder, whole), rtol=1e-5, atol=1e-5)


def test_a_wrong_total_is_caught(small_embedder: Embedder, seqs: list[list[int]]) -> None:
    engine = Engine(small_embedder.checkpoint.model, torch.device("cpu"))
    with pytest.raises(AssertionError, match="engine saw 7 sequences, expected 8"):
        engine.last_hidden_stream([seqs], total=8)


@pytest.mark.parametrize("bad", [0, -5, "512", 512.0, True])
def test_a_bad_token_budget_is_refused_not_replaced_by_the_default(small_embedder: Embedder, bad: object) -> None:
    """batch_tokens=0 used to mean the default silently, -5 and True ran, "512" failed deep in plan_batches."""
    from qwen_embed.errors import InputError

    with pytest.raises(InputError, match=rf"batch_tokens={bad!r} must be a positive integer .*the cpu default"):
        Engine(small_embedder.checkpoint.model, torch.device("cpu"), batch_tokens=bad)  # type: ignore[arg-type]


def test_a_numpy_token_budget_is_the_int_it_is(small_embedder: Embedder) -> None:
    import numpy as np

    engine = Engine(small_embedder.checkpoint.model, torch.device("cpu"), batch_tokens=np.int64(64))  # type: ignore[arg-type]
    assert engine.batch_tokens == 64 and type(engine.batch_tokens) is int
