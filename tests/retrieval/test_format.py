"""Tests of `qwen_embed.retrieval.format.format_hits`, the table `qwen-embed search` and the demo print.

Reference: tables written out by hand from the documented layout (docs/retrieval.md: "rank, score, id,
title and a snippet"; the module: a right-aligned rank of 3, a score of 7 with 4 decimals, the id column
as wide as the longest id (at least 2, at most 32), then the title, with the snippet on its own line
under it, or the snippet in its place when there is no title; a snippet is the text with its whitespace
collapsed, cut to 100 characters with a final "…").
"""

from __future__ import annotations

from typing import Any

import pytest

from qwen_embed.retrieval.format import SNIPPET_CHARS, format_hits
from qwen_embed.retrieval.search import Hit


def hit(id: str, score: float, title: str, text: str) -> Hit:
    return Hit(id, score, title, text, 0, score)


def test_no_hits() -> None:
    assert format_hits([]) == "no hits"


def test_a_table_worked_by_hand() -> None:
    hits = [hit("doc-1", 0.91236, "Alpha", "first  line\n\tsecond "), hit("x", -0.5, "", " only\ntext ")]
    assert format_hits(hits) == "\n".join([
        "  #    score  id     title / snippet",
        "  1   0.9124  doc-1  Alpha",
        "                     first line second",
        "  2  -0.5000  x      only text",
    ])


def test_short_ids_get_the_header_width_of_two() -> None:
    assert format_hits([hit("a", 1.0, "T", "t")]).splitlines()[:2] == ["  #    score  id  title / snippet",
                                                                      "  1   1.0000  a   T"]


@pytest.mark.parametrize(("text", "snippet"), [
    ("x" * SNIPPET_CHARS, "x" * SNIPPET_CHARS),
    ("x" * (SNIPPET_CHARS + 1), "x" * (SNIPPET_CHARS - 1) + "…"),
    ("é" * 150, "é" * 99 + "…"),
    ("  " + "ab " * 40, ("ab " * 40).strip()[:99] + "…"),  # whitespace collapsed before the cut: 119 chars
    ("日本語 " * 10, " ".join(["日本語"] * 10)),
])
def test_snippets_are_flattened_and_cut_at_100_characters(text: str, snippet: str) -> None:
    out = format_hits([hit("d", 0.5, "", text)]).splitlines()
    assert out[1] == "  1   0.5000  d   " + snippet


def test_columns_stay_aligned_for_long_ids() -> None:
    hits = [hit("i" * 50, 0.1, "Long", "t"), hit("short", 0.2, "Short", "t")]
    rows = format_hits(hits).splitlines()
    starts = {r.index("Long") if "Long" in r else r.index("Short") for r in (rows[1], rows[3])}
    assert starts == {3 + 2 + 7 + 2 + 32 + 2}  # the id column is capped at 32 characters


def test_hits_are_read_by_attribute_only() -> None:
    class Row:
        def __init__(self, **kw: Any) -> None:
            self.__dict__.update(kw)

    assert format_hits([Row(id="z", score=0.25, title="", text="t")]).splitlines()[1] == "  1   0.2500  z   t"


def test_a_title_with_line_breaks_stays_on_its_row() -> None:
    out = format_hits([hit("d", 0.5, "Part one\nPart two\r\n", "body")]).splitlines()
    assert out == ["  #    score  id  title / snippet",
                   "  1   0.5000  d   Part one Part two",
                   "                  body"]


def test_ids_cut_to_the_column_are_marked() -> None:
    """An id longer than the column is shown to be cut: two ids that differ after their 31st character do
    not print as two equal, complete ids."""
    a, b = "doc/" + "x" * 40 + "/part-1", "doc/" + "x" * 40 + "/part-2"
    rows = format_hits([hit(a, 0.9, "", "one"), hit(b, 0.8, "", "two")]).splitlines()[1:]
    assert [r[14:46] for r in rows] == [a[:31] + "…"] * 2


def test_a_long_title_is_cut_like_a_snippet() -> None:
    row = format_hits([hit("d", 0.5, "T" * 300, "body")]).splitlines()[1]
    assert row.endswith("T" * 99 + "…") and len(row) == len("  1   0.5000  d   ") + 100
