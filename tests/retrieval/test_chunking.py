"""Token windows: coverage, overlap, settings; real tokenizer round trip."""

from __future__ import annotations

import itertools

import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.retrieval.chunking import ChunkSettings, split_texts, windows


@pytest.mark.parametrize(("n", "size", "overlap"), [(1, 16, 0), (16, 16, 4), (17, 16, 4), (1000, 512, 64),
                                                    (5000, 100, 99)])
def test_windows_cover_every_token_with_the_overlap(n: int, size: int, overlap: int) -> None:
    spans = windows(n, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(0 < b - a <= size for a, b in spans)
    for (a0, b0), (a1, _) in itertools.pairwise(spans):
        assert b0 - a1 == overlap  # consecutive windows share exactly `overlap` tokens
        assert a1 > a0


def test_settings_are_validated() -> None:
    with pytest.raises(InputError, match="--chunk-tokens must be an integer >= 16"):
        ChunkSettings(8, 0)
    with pytest.raises(InputError, match=r"--overlap must be an integer in 0\.\.99"):
        ChunkSettings(100, 100)


def test_split_with_the_embedder_tokenizer(embedder: Embedder) -> None:
    tok = embedder.tokenizer
    short = "A short text stays whole."
    long = " ".join(f"sentence number {i} of a long document." for i in range(200))
    out = split_texts(tok, [short, long], ChunkSettings(64, 16))
    assert out[0] == [short]
    n_tokens = len(tok.encode([long])[0])
    assert len(out[1]) == len(windows(n_tokens, 64, 16)) > 1
    for chunk in out[1]:
        assert len(tok.encode([chunk])[0]) <= 64 + 2  # re-encoding a decoded window may merge at its edges
    assert out[1][0].startswith("sentence number 0") and "number 199 of a long document." in out[1][-1]
