"""Search hits as a readable table, for `qwen-embed search` and the demo (no heavy imports)."""

from __future__ import annotations

from typing import Any

SNIPPET_CHARS = 100


ID_CHARS = 32


def _snippet(text: str, chars: int = SNIPPET_CHARS) -> str:
    """`text` on one line (every run of whitespace, line breaks included, one space), cut to `chars` with …."""
    flat = " ".join(text.split())
    return flat if len(flat) <= chars else flat[: chars - 1] + "…"


def format_hits(hits: list[Any]) -> str:
    """Ranked hits as a readable table: rank, score, id, title and a snippet, each on its row (a title's
    line breaks flattened; an id longer than 32 characters cut with …)."""
    if not hits:
        return "no hits"
    id_w = min(ID_CHARS, max(2, *(len(h.id) for h in hits)))
    lines = [f"{'#':>3}  {'score':>7}  {'id':<{id_w}}  title / snippet"]
    for n, h in enumerate(hits, 1):
        head = f"{n:>3}  {h.score:7.4f}  {_snippet(h.id, id_w):<{id_w}}  "
        lines.append(head + (_snippet(h.title) if h.title else _snippet(h.text)))
        if h.title:
            lines.append(" " * len(head) + _snippet(h.text))
    return "\n".join(lines)
