"""jsonl.iter_jsonl: the one JSON Lines reading rule (blank lines skipped, physical line numbers, file:line errors)."""

from __future__ import annotations

import io

import pytest

from qwen_embed.errors import InputError
from qwen_embed.jsonl import iter_jsonl


def test_blank_lines_are_skipped_and_numbers_count_every_line() -> None:
    lines = ['{"a": 1}\n', "\n", "   \n", '[2, 3]\n', '"text"']
    assert list(iter_jsonl(lines, "x.jsonl")) == [(1, {"a": 1}), (4, [2, 3]), (5, "text")]


def test_reads_a_file_object_lazily() -> None:
    f = io.StringIO('{"id": 1}\n{"id": 2}\nnot json\n')
    rows = iter_jsonl(f, "f.jsonl")
    assert next(rows) == (1, {"id": 1}) and next(rows) == (2, {"id": 2})  # read before the bad line
    with pytest.raises(InputError, match=r"^f\.jsonl:3: not valid JSON \(Expecting value\); fix or remove"):
        next(rows)


def test_error_names_the_file_and_line() -> None:
    with pytest.raises(InputError, match=r"data/rows\.jsonl:2: not valid JSON"):
        list(iter_jsonl(['{"ok": true}', '{"cut": '], "data/rows.jsonl"))
