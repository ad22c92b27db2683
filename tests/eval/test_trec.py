"""TREC qrels and run files: round trips, trec_eval's ordering, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.trec import (
    read_qrels,
    read_run,
    read_run_file,
    sorted_docs,
    truncate_run,
    write_qrels,
    write_run,
)


def test_run_round_trip_keeps_scores_and_trec_order(tmp_path: Path) -> None:
    run = {"q1": {"b": 0.5, "a": 0.5, "c": 0.1 + 0.2}, "q2": {"x": -1.0}}
    write_run(tmp_path / "r.trec", run, "mine")
    back = read_run_file(tmp_path / "r.trec")
    assert back.scores == run and back.name == "mine"
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert [ln.split()[2] for ln in lines[:3]] == ["b", "a", "c"]  # tie: docno descending
    assert [ln.split()[3] for ln in lines[:3]] == ["1", "2", "3"]


def test_sorted_docs_and_truncate() -> None:
    assert sorted_docs({"a": 1.0, "b": 2.0, "c": 1.0}) == [("b", 2.0), ("c", 1.0), ("a", 1.0)]
    assert truncate_run({"q": {"a": 1.0, "b": 2.0, "c": 1.0}}, 2) == {"q": {"b": 2.0, "c": 1.0}}


def test_qrels_round_trip(tmp_path: Path) -> None:
    qrels = {"1": {"d1": 2, "d2": 0, "d3": -1}}
    write_qrels(tmp_path / "q.txt", qrels)
    assert read_qrels(tmp_path / "q.txt") == qrels


@pytest.mark.parametrize(("text", "match"), [
    ("q Q0 d 1 0.5 run\nq Q0 d 2 0.4 run\n", "listed twice"),
    ("q Q0 d 1 high run\n", "not a number"),
    ("q Q0 d 1 0.5\n", "6 fields"),
    ("\n", "no results"),
])
def test_bad_runs(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "r").write_text(text)
    with pytest.raises(InputError, match=match):
        read_run(tmp_path / "r")


@pytest.mark.parametrize(("text", "match"), [
    ("q 0 d 1\nq 0 d 0\n", "judged twice"), ("q 0 d yes\n", "not an integer"), ("q d 1\n", "4 fields"),
])
def test_bad_qrels(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "q").write_text(text)
    with pytest.raises(InputError, match=match):
        read_qrels(tmp_path / "q")


def test_missing_file_and_bad_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_run(tmp_path / "none")
    with pytest.raises(InputError, match="one word"):
        write_run(tmp_path / "r", {"q": {"d": 1.0}}, "two words")
    assert not (tmp_path / "r").exists()
