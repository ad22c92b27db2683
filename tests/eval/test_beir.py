"""The BEIR loader: MTEB's document text, split handling, counts, and every kind of bad folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.beir import document_text, load_beir, read_beir_qrels, read_qrels_file, splits

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


# -- ids are one word (issue: an id with a space made a run of 7 fields nothing could read back) -----------
@pytest.mark.parametrize(("which", "bad_id", "says"), [
    ("corpus", "doc 1", "holds whitespace"), ("corpus", "d\t1", "holds whitespace"),
    ("corpus", "d1\u00a0", "holds whitespace"),
    ("queries", "q 1", "holds whitespace"), ("corpus", "", "is empty"), ("queries", "", "is empty"),
])
def test_an_id_that_is_empty_or_holds_whitespace_is_refused_at_load(tmp_path: Path, which: str, bad_id: str,
                                                                   says: str) -> None:
    corpus = [*CORPUS[:2], {"_id": bad_id, "text": "x"}] if which == "corpus" else CORPUS
    queries = [*QUERIES[:2], {"_id": bad_id, "text": "x"}] if which == "queries" else QUERIES
    folder = write_beir(tmp_path / "ds", corpus, queries)
    with pytest.raises(InputError) as err:
        load_beir(folder)
    msg = str(err.value)
    assert "\n" not in msg and f"{folder / (which + '.jsonl')}:3: " in msg and repr(bad_id) in msg and says in msg
    assert "TREC runs split their fields at whitespace" in msg


def test_a_qrels_field_holding_whitespace_is_refused_with_its_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "ds")
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\tdoc 1\t1\n")
    with pytest.raises(InputError, match=r"test.tsv:3: qrels field 'doc 1' holds whitespace"):
        load_beir(folder)


# -- qrels formats told apart by the content (issue: a TREC qrels named .tsv silently scored 0) -----------
@pytest.mark.parametrize("text", [
    "q1\t0\t12\t1\nq2\t0\t7\t1\n",  # MS MARCO's qrels.dev.tsv: TREC, tab-separated
    "q1 0 12 1\n\nq2 0 7 1\n",
    "query-id\tcorpus-id\tscore\nq1\t12\t1\nq2\t7\t1\n",  # BEIR with its header
    "\ufeffq1\t12\t1\r\nq2\t7\t1\r\n",  # BEIR without one (a BOM and CRLF line ends)
])
@pytest.mark.parametrize("name", ["qrels.tsv", "qrels.txt", "qrels"])
def test_qrels_format_is_told_by_the_content_not_the_name(tmp_path: Path, text: str, name: str) -> None:
    (tmp_path / name).write_text(text, encoding="utf-8", newline="")
    assert read_qrels_file(tmp_path / name) == {"q1": {"12": 1}, "q2": {"7": 1}}


@pytest.mark.parametrize(("text", "line", "says"), [
    ("q1\t0\t12\t1\nq2\t7\t1\n", 2, "4 fields 'qid iter docno rel' (TREC, as the file's first line), got 3"),
    ("query-id\tcorpus-id\tscore\nq1\t12\t1\nq2\t0\t7\t1\n", 3, "3 fields 'query-id corpus-id score' (BEIR"),
    ("q1\t12\t1\nq2\t7\t1\textra\n", 2, "got 4"),
    ("q1 12\n", 1, "4 fields 'qid iter docno rel' (TREC) or 3 'query-id corpus-id score' (BEIR), got 2"),
    ("q1 0 12 1 x\n", 1, "got 5"),
    ("q1\t0\tdoc 12\t1\n", 1, "qrels field 'doc 12' holds whitespace"),
])
def test_a_qrels_line_of_another_width_is_an_error_naming_file_and_line(tmp_path: Path, text: str, line: int,
                                                                       says: str) -> None:
    """Before: a BEIR reader took 4-field lines and dropped the 4th field."""
    (tmp_path / "q.tsv").write_text(text)
    with pytest.raises(InputError) as err:
        read_qrels_file(tmp_path / "q.tsv")
    assert f"q.tsv:{line}: " in str(err.value) and says in str(err.value) and "\n" not in str(err.value)


def test_beir_qrels_reader_takes_exactly_three_fields(tmp_path: Path) -> None:
    (tmp_path / "q.tsv").write_text("q1\t0\t12\t1\n")
    with pytest.raises(InputError, match=r"q.tsv:1: a qrels line has 3 fields .*got 4"):
        read_beir_qrels(tmp_path / "q.tsv")
    (tmp_path / "e.tsv").write_text("query-id\tcorpus-id\tscore\n\n")
    with pytest.raises(InputError, match="holds no judgments"):
        read_qrels_file(tmp_path / "e.tsv")
