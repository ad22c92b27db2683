"""Search hits as a readable table, for `qwen-embed search` and the demo (no heavy imports)."""

from __future__ import annotations

from typing import Any

SNIPPET_CHARS = 100


def _snippet(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET_CHARS else flat[: SNIPPET_CHARS - 1] + "…"


def format_hits(hits: list[Any]) -> str:
    """Ranked hits as a readable table: rank, score, id, title and a snippet."""
    if not hits:
        return "no hits"
    id_w = min(32, max(2, *(len(h.id) for h in hits)))
    lines = [f"{'#':>3}  {'score':>7}  {'id':<{id_w}}  title / snippet"]
    for n, h in enumerate(hits, 1):
        head = f"{n:>3}  {h.score:7.4f}  {h.id[:id_w]:<{id_w}}  "
        lines.append(head + (h.title if h.title else _snippet(h.text)))
        if h.title:
            lines.append(" " * len(head) + _snippet(h.text))
    return "\n".join(lines)
