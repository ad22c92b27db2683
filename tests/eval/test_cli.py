"""`qwen-embed eval metrics|retrieval|rerank`: outputs, files, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from qwen_embed.cli import main
from qwen_embed.eval import rerank, retrieval
from qwen_embed.eval.cli import resolve_instruction
from qwen_embed.eval.outputs import RECORD, read_record
from qwen_embed.eval.trec import read_run, write_run
from qwen_embed.reranker import Reranker

from .conftest import CORPUS, QUERIES, write_beir


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
    assert not any(out.glob("rerank.partial.jsonl*"))  # the resumable scores are gone once the results are in
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


# -- an interrupted evaluation resumes in its own folder (issue: `eval rerank` was refused there) -----------
# Runs `qwen-embed eval ...` (argv as JSON in argv[1]) in a child process that stalls in its second block of
# work (rerank: one query a block; retrieval: shards of 2 documents), after the first is saved, so that the
# test can interrupt it there, as a user would.
STALLING_CLI = """
import functools, json, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
from qwen_embed.cli import main
from qwen_embed.eval import rerank, retrieval
from qwen_embed.reranker import Reranker
calls = []
def stall(real):
    def wrapped(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(600)
        return real(*args, **kw)
    return wrapped
rerank.BLOCK_QUERIES = 1
Reranker.score_ids = stall(Reranker.score_ids)
retrieval.embed_corpus = functools.partial(retrieval.embed_corpus, shard=2)
retrieval.embed_texts = stall(retrieval.embed_texts)
sys.exit(main(json.loads(sys.argv[1])))
"""


def _interrupt(argv: list[str], ready: Callable[[], bool], sig: signal.Signals) -> int:
    """Run the stalling CLI, send `sig` once `ready()`, return its exit status."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", STALLING_CLI, json.dumps(argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"the run ended ({proc.returncode}) before it could be interrupted: {proc.stderr.read()}")
            if time.monotonic() > deadline:
                pytest.fail("the run did not reach the point of interruption in 300 s")
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode


def _counting(calls: list[int], real: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)
    return wrapped


def test_an_interrupted_rerank_resumes_in_its_folder(tiny_reranker_path: Path, five_docs: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: Ctrl-C left rerank.partial.jsonl.partial (+ .meta.json), and the rerun was refused ("holds files
    an evaluation did not write ... pass --overwrite")."""
    candidates = tmp_path / "cand.trec"
    write_run(candidates, {"q1": {"d1": 0.9, "d2": 0.8, "d3": 0.7}, "q2": {"d4": 0.5, "d1": 0.4, "d3": 0.3}})
    out = tmp_path / "out"
    argv = ["eval", "rerank", "--dataset", str(five_docs), "--reranker-model", str(tiny_reranker_path), "--device",
            "cpu", "--max-length", "128", "--candidates", str(candidates), "--top", "3", "--k", "1,3",
            "--output-dir", str(out)]
    rows = out / "rerank.partial.jsonl.partial"
    code = _interrupt(argv, lambda: rows.is_file() and rows.read_bytes().endswith(b"\n"), signal.SIGINT)
    assert code == 130
    assert sorted(p.name for p in out.iterdir()) == [RECORD, "rerank.partial.jsonl.partial",
                                                     "rerank.partial.jsonl.partial.meta.json"]
    assert len(rows.read_text().splitlines()) == 1  # q1 was scored before the interruption

    calls: list[int] = []
    monkeypatch.setattr(rerank, "BLOCK_QUERIES", 1)
    monkeypatch.setattr(Reranker, "score_ids", _counting(calls, Reranker.score_ids))
    code, stdout, err = _run(argv, capsys)  # the same command, no --overwrite
    assert code == 0, err
    assert len(calls) == 1  # only q2 was scored again: resumed
    assert "| reranked |" in stdout and set(read_run(out / "rerank.trec")) == {"q1", "q2"}
    assert not any(out.glob("rerank.partial.jsonl*"))
    assert read_record(out) == {"rerank": ["rerank.trec", "rerank_delta.png", "rerank_scores.json",
                                           "rerank_summary.md"]}


def test_a_killed_retrieval_resumes_in_its_folder(tiny_embedding_path: Path, five_docs: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill leaves the corpus cache and the record the run wrote before its first file: the rerun resumes."""
    out = tmp_path / "out"
    argv = ["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model", str(tiny_embedding_path),
            "--device", "cpu", "--max-length", "64", "--k", "1,3", "--depth", "5", "--output-dir", str(out)]
    code = _interrupt(argv, lambda: any(out.glob("cache/corpus-*/00000.npy")), signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert sorted(p.name for p in out.iterdir()) == ["cache", RECORD]

    calls: list[int] = []
    monkeypatch.setattr(retrieval, "embed_corpus", partial(retrieval.embed_corpus, shard=2))
    monkeypatch.setattr(retrieval, "embed_texts", _counting(calls, retrieval.embed_texts))
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert len(calls) == 3  # shards 2 and 3 of the corpus, then the queries: shard 1 came from the cache
    assert read_record(out)["retrieval"] == ["cache", "run.trec", "scores.json", "summary.md"]


# -- a folder without the record is never adopted (issue: a user's scores.json was overwritten) -----------
def test_user_files_named_as_results_are_never_overwritten(tiny_embedding_path: Path, five_docs: Path,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores.json").write_text('{"my": "results of another tool"}\n')
    (mine / "summary.md").write_text("# my own notes\n")
    argv = ["eval", "retrieval", "--dataset", str(five_docs), "--embedding-model", str(tiny_embedding_path),
            "--device", "cpu", "--k", "1", "--depth", "5", "--output-dir", str(mine)]
    code, _, err = _run(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "(scores.json, summary.md)" in err and "--overwrite" in err and "--output-dir" in err
    assert (mine / "scores.json").read_text() == '{"my": "results of another tool"}\n'
    assert sorted(p.name for p in mine.iterdir()) == ["scores.json", "summary.md"]
    code, _, err = _run([*argv, "--overwrite"], capsys)  # asked for: then the evaluation writes there
    assert code == 0, err
    assert "my own notes" not in (mine / "summary.md").read_text() and (mine / RECORD).is_file()


# -- qrels read by their content (issue: a TREC qrels named .tsv gave map 0.0, silently) --------------------
def test_metrics_reads_trec_qrels_named_tsv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "qrels.tsv").write_text("q1\t0\t12\t1\nq2\t0\t7\t1\n")  # MS MARCO's qrels.dev.tsv format
    (tmp_path / "qrels.txt").write_text((tmp_path / "qrels.tsv").read_text())
    (tmp_path / "run.trec").write_text("q1 Q0 12 1 9.5 r\nq1 Q0 3 2 3.0 r\nq2 Q0 7 1 8.0 r\n")
    outs = []
    for name in ("qrels.txt", "qrels.tsv"):
        code, out, err = _run(["eval", "metrics", str(tmp_path / name), str(tmp_path / "run.trec"), "--json"], capsys)
        assert code == 0, err
        outs.append(json.loads(out))
    assert outs[0] == outs[1] and outs[1]["map"] == 1.0 and outs[1]["num_rel_ret"] == 2
    (tmp_path / "mixed.tsv").write_text("query-id\tcorpus-id\tscore\nq1\t12\t1\nq2\t0\t7\t1\n")
    code, _, err = _run(["eval", "metrics", str(tmp_path / "mixed.tsv"), str(tmp_path / "run.trec")], capsys)
    assert code == 2 and f"{tmp_path / 'mixed.tsv'}:3: a qrels line has 3 fields" in err and "got 4" in err


# -- ids and run names that a TREC run cannot hold are refused before any work -----------------------------
def test_an_id_with_whitespace_is_refused_before_the_model_loads(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the run was written with 7 fields, which `eval metrics` and `eval rerank` then refused."""
    ds = write_beir(tmp_path / "ds", [{"_id": "doc 1", "text": "Cats are small."}, *CORPUS[1:]], QUERIES,
                    [("q1", "doc 1", 1)])
    out = tmp_path / "out"
    for argv in (["eval", "retrieval", "--embedding-model", str(tmp_path / "no-model")],
                 ["eval", "rerank", "--reranker-model", str(tmp_path / "no-model"), "--candidates",
                  str(tmp_path / "no-run")]):
        code, _, err = _run([*argv, "--dataset", str(ds), "--output-dir", str(out)], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{ds / 'corpus.jsonl'}:1: document id 'doc 1' holds whitespace" in err
        assert not out.exists()  # the folder it made is gone again


@pytest.mark.parametrize("command", ["retrieval", "rerank"])
def test_a_bad_run_name_is_refused_before_any_work(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: `--run-name "my run"` failed only in write_run, after the whole corpus was embedded (a cache left)."""
    monkeypatch.chdir(tmp_path)
    model = "--embedding-model" if command == "retrieval" else "--reranker-model"
    extra = [] if command == "retrieval" else ["--candidates", "no-run.trec"]
    code, _, err = _run(["eval", command, "--dataset", "no-dataset", model, "no-model", *extra,
                         "--run-name", "my run"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--run-name 'my run' must be one word" in err and "'my_run'" in err
    assert list(tmp_path.iterdir()) == []  # no output folder, nothing read or loaded


def test_retrieval_cutoffs_and_depth_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    base = ["eval", "retrieval", "--dataset", "no-dataset", "--embedding-model", "no-model"]
    code, _, err = _run([*base, "--k", "1,100", "--depth", "10"], capsys)
    assert code == 2 and "--depth 10 is below the largest cutoff --k 100" in err
    code, _, err = _run([*base, "--k", "0,3"], capsys)
    assert code == 2 and "cutoffs must be distinct positive integers" in err
    assert list(tmp_path.iterdir()) == []
