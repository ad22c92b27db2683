"""`qwen-embed eval metrics|retrieval|rerank`: outputs, files, and one-line errors for user mistakes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.cli import main
from qwen_embed.eval.cli import resolve_instruction
from qwen_embed.eval.trec import read_run, write_run


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_metrics_prints_trec_eval_output_and_json(trec_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = trec_dir
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test")], capsys)
    assert code == 0 and out == (d / "out.test.a").read_text()
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "-q"], capsys)
    assert out == (d / "out.test.aq").read_text()
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "--json"], capsys)
    obj = json.loads(out)
    assert obj["num_q"] == 3 and obj["map"] == pytest.approx(0.1785, abs=5e-5) and "ndcg_cut_10" in obj


def test_metrics_reads_beir_qrels_and_reports_unjudged_run_queries(five_docs: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "r.trec", {"q1": {"d2": 1.0, "d1": 0.5}, "q9": {"d1": 1.0}})
    code, out, err = _run(["eval", "metrics", str(five_docs / "qrels/test.tsv"), str(tmp_path / "r.trec"),
                           "--json"], capsys)
    assert code == 0 and json.loads(out)["num_q"] == 1 and json.loads(out)["recip_rank"] == 1.0
    assert "1 run queries have no judgments" in err


def test_metrics_user_errors(five_docs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_run(tmp_path / "r.trec", {"q7": {"d1": 1.0}})
    code, _, err = _run(["eval", "metrics", str(five_docs / "qrels/test.tsv"), str(tmp_path / "r.trec")], capsys)
    assert code == 2 and "no query has both" in err and "Traceback" not in err
    code, _, err = _run(["eval", "metrics", str(tmp_path / "nope"), str(tmp_path / "r.trec")], capsys)
    assert code == 2 and "does not exist" in err


def test_retrieval_then_rerank_commands(tiny_embedding_path: Path, tiny_reranker_path: Path, five_docs: Path,
                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model",
                              str(tiny_embedding_path), "--device", "cpu", "--max-length", "64", "--dim", "32,64",
                              "--k", "1,3", "--depth", "5", "--task", "SciFact", "--output-dir", str(out)], capsys)
    assert code == 0, err
    assert "| dim | nDCG@1 | nDCG@3 |" in stdout and "instruction from --task SciFact" in err
    files = {p.name for p in out.iterdir()}
    assert {"run.dim32.trec", "run.dim64.trec", "scores.json", "summary.md", "ndcg_vs_dim.png", "cache"} <= files
    run = read_run(out / "run.dim64.trec")
    assert set(run) == {"q1", "q2"} and all(len(d) == 5 for d in run.values())

    code, stdout, err = _run(["eval", "rerank", "--dataset", str(five_docs), "--reranker-model",
                              str(tiny_reranker_path), "--device", "cpu", "--max-length", "128", "--candidates",
                              str(out / "run.dim64.trec"), "--top", "3", "--k", "1,3", "--output-dir", str(out)],
                             capsys)
    assert code == 0, err
    assert "| reranked |" in stdout and (out / "rerank.trec").is_file() and (out / "rerank_delta.png").is_file()
    assert not (out / "rerank.partial.jsonl").exists()
    assert all(len(d) == 3 for d in read_run(out / "rerank.trec").values())


def test_retrieval_and_rerank_user_errors(tiny_embedding_path: Path, tiny_reranker_path: Path, five_docs: Path,
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder is relative: eval-results/<dataset>/<model>
    base = ["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model", str(tiny_embedding_path),
            "--device", "cpu", "--output-dir", str(tmp_path / "o")]
    code, _, err = _run([*base, "--dim", "4096"], capsys)
    assert code == 2 and "dim=4096 is out of range" in err
    code, _, err = _run([*base, "--split", "dev"], capsys)
    assert code == 2 and "available splits: test, train" in err
    code, _, err = _run([*base, "--k", "1,x"], capsys)
    assert code == 2 and "comma-separated integers" in err
    write_run(tmp_path / "bad.trec", {"q42": {"d1": 1.0}})
    code, _, err = _run(["eval", "rerank", "--dataset", str(five_docs), "--reranker-model", str(tiny_reranker_path),
                         "--candidates", str(tmp_path / "bad.trec")], capsys)
    assert code == 2 and "queries that five does not have (e.g. 'q42')" in err
    assert not (tmp_path / "eval-results").exists()  # the default folder it made is gone with the failed run
    mine = tmp_path / "mine"
    mine.mkdir()
    code, _, err = _run(["eval", "rerank", "--dataset", str(five_docs), "--reranker-model", str(tiny_reranker_path),
                         "--candidates", str(tmp_path / "bad.trec"), "--output-dir", str(mine / "new")], capsys)
    assert code == 2 and mine.is_dir() and list(mine.iterdir()) == []  # a folder it did not make stays


def test_resolve_instruction() -> None:
    assert resolve_instruction("Do it", None, "scifact")[0] == "Do it"
    assert resolve_instruction(None, "NFCorpus", "x")[0].startswith("Given a question, retrieve relevant documents")
    assert resolve_instruction(None, None, "scifact")[1] == "table entry of 'scifact'"
    assert resolve_instruction(None, None, "my-data")[0].startswith("Given a web search query")
    assert "official default" in resolve_instruction(None, "Unknown", "x")[1]


def test_metrics_measure_selection_as_trec_eval(trec_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9: `-m ndcg_cut.10` prints trec_eval's line for that measure (trec_eval 10's own output)."""
    d = trec_dir
    reference = {ln.split()[0]: ln for ln in (d / "out.test.a").read_text().splitlines()}
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "-m", "ndcg_cut.10"],
                        capsys)
    assert code == 0 and out.splitlines() == [reference["ndcg_cut_10"]]  # only what -m asks, as trec_eval -m
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "-m", "map",
                         "-m", "P.5,10", "-m", "ndcg_cut"], capsys)
    names = [ln.split()[0] for ln in out.splitlines()]
    assert names == ["map", "P_5", "P_10", *[f"ndcg_cut_{k}" for k in (5, 10, 15, 20, 30, 100, 200, 500, 1000)]]
    assert all(ln == reference[ln.split()[0]] for ln in out.splitlines())
    # a cutoff trec_eval does not print by default equals MTEB's @k (same code path as ndcg_cut at 10)
    code, out, _ = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "-m", "ndcg_cut.3,10",
                         "--json"], capsys)
    obj = json.loads(out)
    assert set(obj) == {"num_q", "ndcg_cut_3", "ndcg_cut_10"} and f"{obj['ndcg_cut_10']:.4f}" == "0.3016"
    code, _, err = _run(["eval", "metrics", str(d / "qrels.test"), str(d / "results.test"), "-m", "ndcgg"], capsys)
    assert code == 2 and "not a trec_eval measure" in err and len(err.strip().splitlines()) == 1


def test_eval_outputs_unit_top_cutoffs_and_stale_files(tiny_embedding_path: Path, tiny_reranker_path: Path,
                                                       five_docs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9: tables say their unit; --top 3 reports @3, not @100; a re-run with other dims removes the
    run files it wrote before, and only those."""
    out = tmp_path / "out"
    base = ["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model", str(tiny_embedding_path),
            "--device", "cpu", "--max-length", "64", "--k", "1,3", "--depth", "5", "--output-dir", str(out)]
    code, stdout, err = _run([*base, "--dim", "32,64"], capsys)
    assert code == 0, err
    assert "Scores in %" in stdout and (out / "summary.md").read_text().count("Scores in %") == 1
    assert (out / "run.dim32.trec").is_file() and (out / "ndcg_vs_dim.png").is_file()
    (out / "run.dim48.trec").write_text("a file this evaluation did not write\n")
    code, stdout, err = _run([*base, "--dim", "64"], capsys)  # an earlier run's folder: no --overwrite needed
    assert code == 0, err
    assert not (out / "run.dim32.trec").exists() and not (out / "run.dim64.trec").exists()
    assert not (out / "ndcg_vs_dim.png").exists() and (out / "run.trec").is_file()
    assert (out / "run.dim48.trec").read_text() == "a file this evaluation did not write\n"
    assert "removed files of an earlier run" in err and "run.dim32.trec" in err
    code, stdout, err = _run(["eval", "rerank", "--dataset", str(five_docs), "--reranker-model",
                              str(tiny_reranker_path), "--device", "cpu", "--max-length", "128", "--candidates",
                              str(out / "run.trec"), "--top", "3", "--output-dir", str(out)], capsys)
    assert code == 0, err
    header = next(ln for ln in stdout.splitlines() if ln.startswith("| run |"))
    assert "@100" not in header and "nDCG@3" in header and "Recall@3" in header and "MRR@3" in header
    assert "percentage points" in stdout and "--top 3: reporting @1,3" in err


def test_output_dir_of_user_files_and_not_a_beir_folder(tiny_embedding_path: Path, five_docs: Path,
                                                        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    code, _, err = _run(["eval", "retrieval", "--dataset", str(notes), "--embedding-model", str(tiny_embedding_path),
                         "--output-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and "is not a BEIR folder" in err and "available splits" not in err
    code, _, err = _run(["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model",
                         str(tiny_embedding_path), "--output-dir", str(notes)], capsys)
    assert code == 2 and "holds files an evaluation did not write (todo.txt)" in err
    assert [p.name for p in notes.iterdir()] == ["todo.txt"]
