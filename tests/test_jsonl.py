"""jsonl.iter_jsonl: the one JSON Lines reading rule (blank lines skipped, physical line numbers, file:line errors)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.jsonl import iter_jsonl, text_lines


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


@pytest.mark.parametrize(("text", "lines"), [
    ("", []), ("a", ["a"]), ("a\n", ["a"]), ("a\n\n", ["a", ""]), ("a\r\nb\r\n", ["a", "b"]), ("a\rb", ["a", "b"]),
    # characters str.splitlines breaks at but a file iterator (and JSON) does not: inside one line
    ("x\u2028y\u2029z\x0cw\x0bv\x1cu\x85t\n2", ["x\u2028y\u2029z\x0cw\x0bv\x1cu\x85t", "2"]),
    ("\ufeffa\nb", ["a", "b"]),  # a byte-order mark is not part of the first line
])
def test_text_lines_are_the_lines_a_file_iterator_gives(text: str, lines: list[str], tmp_path: Path) -> None:
    assert text_lines(text) == lines
    p = tmp_path / "f.txt"
    p.write_bytes(text.encode())
    with p.open(encoding="utf-8-sig") as f:  # the readers that iterate a file agree
        assert [ln.rstrip("\r\n") for ln in f] == lines


def test_a_jsonl_line_may_hold_a_raw_line_separator_and_a_file_may_start_with_a_bom() -> None:
    lines = ['\ufeff{"id": "a", "text": "x\u2028y"}', '{"id": "b"}']
    assert list(iter_jsonl(lines, "f.jsonl")) == [(1, {"id": "a", "text": "x\u2028y"}), (2, {"id": "b"})]
    assert next(iter(iter_jsonl(text_lines("\n".join(lines)), "f.jsonl")))[1]["text"] == "x\u2028y"
