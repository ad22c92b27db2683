"""Split long documents into overlapping windows of tokens of the embedder's own tokenizer.

A text of at most `chunk_tokens` tokens stays one chunk, unchanged. A longer one is cut into windows of
`chunk_tokens` tokens that start every `chunk_tokens - overlap` tokens; the last window ends at the
text's end (it may be shorter). Each window is decoded back to text (a character split across a window
edge is dropped there) so that the stored chunk is readable and is embedded like any other text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..errors import InputError, is_whole

DEFAULT_CHUNK_TOKENS = 512
DEFAULT_OVERLAP = 64
MIN_CHUNK_TOKENS = 16


class TextTokenizer(Protocol):
    def encode(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class ChunkSettings:
    """Window size and overlap in tokens (defaults 512 and 64)."""

    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    overlap: int = DEFAULT_OVERLAP

    def __post_init__(self) -> None:
        c, o = self.chunk_tokens, self.overlap
        if not is_whole(c, MIN_CHUNK_TOKENS):
            raise InputError(f"--chunk-tokens must be an integer >= {MIN_CHUNK_TOKENS}, got {c!r}.")
        if not is_whole(o, 0) or o >= c:
            raise InputError(f"--overlap must be an integer in 0..{c - 1} (below --chunk-tokens), got {o!r}.")


def windows(n_tokens: int, chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token windows covering n_tokens; one window when it fits."""
    if n_tokens <= chunk_tokens:
        return [(0, n_tokens)]
    stride = chunk_tokens - overlap
    return [(s, min(s + chunk_tokens, n_tokens)) for s in range(0, n_tokens - overlap, stride)]


def split_texts(tokenizer: TextTokenizer, texts: Sequence[str], settings: ChunkSettings) -> list[list[str]]:
    """The chunks of each text (at least one per text), in order."""
    out: list[list[str]] = []
    for text, ids in zip(texts, tokenizer.encode(texts), strict=True):
        spans = windows(len(ids), settings.chunk_tokens, settings.overlap)
        if len(spans) == 1:
            out.append([text])
            continue
        chunks = [tokenizer.decode(ids[a:b]).strip("\ufffd") for a, b in spans]
        chunks = [c for c in chunks if c.strip()]
        out.append(chunks or [text])
    return out
