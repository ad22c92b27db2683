"""One worker process per device: the result equals a single-process run (two CPU workers here)."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, QwenEmbedError
from qwen_embed.multidevice import encode_on_devices, shard_bounds
from tests.reference import random_texts


def test_shard_bounds_cover_in_order() -> None:
    texts = ["a" * n for n in (5, 1, 1, 1, 30, 2, 2, 2, 2)]
    for parts in (1, 2, 3, 12):
        b = shard_bounds(texts, parts)
        assert len(b) == parts and b[0][0] == 0 and b[-1][1] == len(texts)
        assert all(x[1] == y[0] for x, y in itertools.pairwise(b))


def test_two_workers_equal_one_process(tiny_embedding_path: Path) -> None:
    texts = random_texts(30, seed=21, max_words=60)
    two = encode_on_devices(tiny_embedding_path, texts, ["cpu", "cpu"], dim=48)
    one = Embedder.from_pretrained(tiny_embedding_path, device="cpu").encode(texts, dim=48)
    assert two.shape == one.shape and np.abs(two - one).max() <= 1e-5


def test_worker_failure_names_the_device(tiny_embedding_path: Path) -> None:
    with pytest.raises(QwenEmbedError, match=r"worker on cpu failed: .*dim=31"):
        encode_on_devices(tiny_embedding_path, ["a", "b"], ["cpu"], dim=31)
