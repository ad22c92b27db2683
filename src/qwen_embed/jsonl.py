"""JSON Lines reading shared by every reader of the package (CLI inputs, BEIR, training data, sources).

One rule everywhere: blank lines are skipped, line numbers count every physical line, and a line that
is not JSON is an InputError naming `file:line` and the parser's reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import InputError


def iter_jsonl(lines: Iterable[str], source: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of `lines` (a file object or a list)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{n}: not valid JSON ({e.msg}); fix or remove that line.") from None
