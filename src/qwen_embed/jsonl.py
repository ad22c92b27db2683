"""JSON Lines reading shared by every reader of the package (CLI inputs, BEIR, training data, sources).

One rule everywhere: blank lines are skipped, line numbers count every physical line, and a line that
is not JSON is an InputError naming `file:line` and the parser's reason.

Physical lines are what a file iterator gives: a text splits at "\n", "\r\n" and "\r" only, never at the
other characters `str.splitlines` breaks at (U+2028, U+0085, form feed, ...), which JSON strings and
ordinary text may hold; a UTF-8 byte-order mark before the first line is not part of it (`text_lines`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import InputError

BOM = "\ufeff"
_BREAK = re.compile(r"\r\n|\r|\n")


def text_lines(text: str) -> list[str]:
    """The physical lines of a text, without their line ends (see the module docstring): 'a\\nb\\n' and
    'a\\r\\nb' give ['a', 'b'], 'a\\u2028b' gives one line, a leading byte-order mark is dropped."""
    lines = _BREAK.split(text.removeprefix(BOM))
    if lines[-1] == "":  # the text ended with a line end (or was empty)
        lines.pop()
    return lines


def iter_jsonl(lines: Iterable[str], source: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each non-blank line of `lines` (a file object or a list)."""
    for n, line in enumerate(lines, 1):
        if n == 1:
            line = line.removeprefix(BOM)  # a file saved "UTF-8 with BOM" and opened as plain UTF-8
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}:{n}: not valid JSON ({e.msg}); fix or remove that line.") from None
