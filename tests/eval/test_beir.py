"""The BEIR loader: MTEB's document text, split handling, counts, and every kind of bad folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.beir import document_text, load_beir, splits

from .conftest import CORPUS, QUERIES, write_beir


def test_loads_judged_queries_and_joins_title_as_mteb(five_docs: Path) -> None:
    ds = load_beir(five_docs, "test")
    assert ds.name == "five" and ds.split == "test" and splits(five_docs) == ["test", "train"]
    assert ds.corpus["d1"] == "Gravity Gravity attracts two bodies towards each other."
    assert ds.corpus["d2"] == "The heart pumps blood through the body."  # no title: text alone
    assert ds.corpus["d4"] == "Water   Water boils at one hundred degrees."  # joined, then stripped
    assert ds.corpus["d5"] == ""
    assert ds.query_ids == ["q1", "q2"] and ds.unjudged_query_ids == ["q3"]
    assert ds.qrels == {"q1": {"d2": 1, "d3": 2}, "q2": {"d1": 1}}
    assert ds.stats["queries_without_judgments"] == 1 and ds.stats["empty_documents"] == 1
    assert load_beir(five_docs, "train").query_ids == ["q3"]


def test_document_text() -> None:
    assert document_text("T", "x") == "T x" and document_text(None, " x ") == "x" and document_text("", "") == ""


def test_missing_split_lists_the_splits(five_docs: Path) -> None:
    with pytest.raises(InputError, match="available splits: test, train"):
        load_beir(five_docs, "dev")


@pytest.mark.parametrize(("corpus", "queries", "match"), [
    ([*CORPUS, CORPUS[0]], QUERIES, "duplicate document id 'd1'"),
    (CORPUS, [*QUERIES, QUERIES[1]], "duplicate query id 'q2'"),
    ([], QUERIES, "holds no documents"),
])
def test_bad_folders(tmp_path: Path, corpus: list, queries: list, match: str) -> None:
    write_beir(tmp_path / "bad", corpus, queries)
    with pytest.raises(InputError, match=match):
        load_beir(tmp_path / "bad")


def test_duplicate_judgment_and_unknown_ids(tmp_path: Path) -> None:
    write_beir(tmp_path / "dup", qrels=[("q1", "d2", 1), ("q1", "d2", 0)])
    with pytest.raises(InputError, match="duplicate judgment"):
        load_beir(tmp_path / "dup")
    write_beir(tmp_path / "unk", qrels=[("q1", "d2", 1), ("q9", "d1", 1), ("q2", "d9", 1)])
    ds = load_beir(tmp_path / "unk")
    assert ds.query_ids == ["q1"]  # q2's only judgment names a missing document
    assert ds.stats["judged_queries_missing_from_queries_file"] == ["q9"]
    assert ds.stats["judged_documents_missing_from_corpus"] == ["d9"]
    write_beir(tmp_path / "none", qrels=[("q9", "d1", 1)])
    with pytest.raises(InputError, match="judges no query"):
        load_beir(tmp_path / "none")
    with pytest.raises(InputError, match="does not exist"):
        load_beir(tmp_path / "nowhere")


def test_real_scifact_counts(scifact: Path) -> None:
    ds = load_beir(scifact, "test")
    assert (len(ds.corpus_ids), len(ds.query_ids), ds.stats["judgments"]) == (5183, 300, 339)
    assert ds.stats["queries_without_judgments"] == 809 and not ds.stats["judged_documents_missing_from_corpus"]
