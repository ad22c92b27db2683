"""TREC qrels and run files: round trips, trec_eval's ordering, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.trec import (
    check_run_name,
    parse_grade,
    parse_score,
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
    ("q Q0 d 1 high run\n", "not a decimal number"),
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


@pytest.mark.parametrize(("name", "fix"), [("my run", "'my_run'"), ("", "'qwen-embed'"), ("a\tb", "'a_b'"),
                                         ("x\u00a0y", "'x_y'")])
def test_a_run_name_is_one_word(name: str, fix: str) -> None:
    assert check_run_name("my-run.v2") == "my-run.v2"
    with pytest.raises(InputError) as err:
        check_run_name(name, "--run-name")
    msg = str(err.value)
    assert msg.startswith(f"--run-name {name!r} must be one word") and fix in msg and "\n" not in msg


# -- issue 23.12: one strict parser for the numbers of run and qrels files -------------------------------
BAD_SCORES = ["nan", "-NaN", "inf", "-Infinity", "1e999", "1_0", "٣", "１", "0x10", "1..5", "1e", "+", "½"]
BAD_GRADES = ["99999999999999999999999", "1001", "-1001", "1_0", "٣", "nan", "1.0", "0x1", "+", "²"]


@pytest.mark.parametrize("score", BAD_SCORES)
def test_scores_python_would_accept_are_refused(score: str) -> None:
    with pytest.raises(InputError, match=r"run:3: score .*(not a decimal number|overflows a float)"):
        parse_score(score, "run:3")


@pytest.mark.parametrize(("text", "value"), [("3", 3.0), ("-0.5", -0.5), ("+2.", 2.0), (".25", 0.25),
                                             ("1e-3", 1e-3), ("1E+2", 100.0), ("-0", 0.0), ("1e308", 1e308)])
def test_plain_decimal_scores_read_exactly(text: str, value: float) -> None:
    assert parse_score(text, "run:1") == value


@pytest.mark.parametrize("grade", BAD_GRADES)
def test_grades_python_would_accept_or_that_overflow_are_refused(grade: str) -> None:
    with pytest.raises(InputError, match=r"qrels:2: relevance .*(not an integer|out of range: .* -1000 to 1000)"):
        parse_grade(grade, "qrels:2")
    assert [parse_grade(g, "q") for g in ("0", "-1", "+2", "1000", "-1000")] == [0, -1, 2, 1000, -1000]


@pytest.mark.parametrize(("kind", "bad"), [("score", s) for s in BAD_SCORES[:7]] +
                         [("grade", g) for g in BAD_GRADES[:6]] + [("beir-grade", g) for g in BAD_GRADES[:6]])
def test_eval_metrics_refuses_them_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str,
                                               bad: str) -> None:
    """Before: `nan` and `inf` scores ranked, `1_0` read as 10, `٣` as 3, a huge grade a traceback."""
    from qwen_embed.cli import main

    qrels = tmp_path / ("q.tsv" if kind == "beir-grade" else "q.qrels")
    grade = "1" if kind == "score" else bad
    qrels.write_text(f"query-id\tcorpus-id\tscore\nq1\td1\t{grade}\nq1\td2\t0\n" if kind == "beir-grade" else
                     f"q1 0 d1 {grade}\nq1 0 d2 0\n", encoding="utf-8")
    run = tmp_path / "r.run"
    run.write_text(f"q1 Q0 d1 1 {bad if kind == 'score' else '0.5'} r\nq1 Q0 d2 2 0.4 r\n", encoding="utf-8")
    assert main(["eval", "metrics", str(qrels), str(run), "-m", "map"]) == 2
    err = capsys.readouterr().err
    line = 2 if kind == "beir-grade" else 1
    assert err.count("\n") == 1 and f":{line}: " in err and bad in err, err
