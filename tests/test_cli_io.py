"""embed / rerank inputs and outputs: row i is line i, ids carried to every format, the formats themselves,
truncation reported, a reranker refused as an embedder, many queries in one process."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker
from qwen_embed.cli import main


def _embed(tiny: Path, *argv: str) -> int:
    return main(["embed", *argv, "--model", str(tiny)])


def test_a_blank_line_is_an_error_naming_it_or_skipped_with_the_mapping(
        tiny_embedding_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("alpha\nbeta\n\ngamma\n")
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "v.jsonl")) == 2
    err = capsys.readouterr().err
    assert "line 3 is blank" in err and "--skip-empty" in err and not (tmp_path / "v.jsonl").exists()
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "v.jsonl"), "--skip-empty") == 0
    rows = [json.loads(ln) for ln in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 3]
    ref = Embedder.from_pretrained(tiny_embedding_path, device="cpu").encode(["alpha", "beta", "gamma"])
    assert np.allclose([r["embedding"] for r in rows], ref, atol=1e-6)


@pytest.mark.slow
def test_ids_reach_every_format(tiny_embedding_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": "a", "text": "first"}\n{"_id": 7, "text": "second"}\n{"text": "third"}\n')
    ref = Embedder.from_pretrained(tiny_embedding_path, device="cpu").encode(["first", "second", "third"])
    for name in ("v.jsonl", "v.json", "v.npy", "v.parquet"):
        assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / name), "--with-text") == 0
    jl = [json.loads(ln) for ln in (tmp_path / "v.jsonl").read_text().splitlines()]
    js = json.loads((tmp_path / "v.json").read_text())
    assert jl == js  # the same rows, as one JSON list
    assert [(r["index"], r.get("id"), r["text"]) for r in js] == [(0, "a", "first"), (1, "7", "second"),
                                                                  (2, None, "third")]
    assert np.allclose(np.load(tmp_path / "v.npy"), ref, atol=1e-6)
    side = [json.loads(ln) for ln in (tmp_path / "v.ids.jsonl").read_text().splitlines()]
    assert side == [{"index": 0, "id": "a"}, {"index": 1, "id": "7"}, {"index": 2}]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["id"] == ["a", "7", "2"] and table["index"] == [0, 1, 2] and table["text"][0] == "first"
    assert np.allclose(np.array(table["vector"]), ref, atol=1e-6)


def test_format_flag_and_suffixes(tiny_embedding_path: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.txt"
    src.write_text('{not json, just a line that starts with a brace}\nplain\n')
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "a.jsonl")) == 0  # .txt is lines
    monkeypatch.setattr(sys, "stdin", io.StringIO(src.read_text()))
    assert _embed(tiny_embedding_path, "-", "--format", "lines") == 0  # '-' to stdout, forced lines
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and len(rows[0]["embedding"]) == 64
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "a.csv")) == 2
    assert "must end in .jsonl, .json, .npy, .parquet" in capsys.readouterr().err


def test_truncation_is_reported(tiny_embedding_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("short\n" + " ".join(["word"] * 60) + "\n" + " ".join(["other"] * 40) + "\n")
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "v.npy"), "--max-length", "16") == 0
    err = capsys.readouterr().err
    tok = Embedder.from_pretrained(tiny_embedding_path, device="cpu").tokenizer
    longest = len(tok.encode_one(" ".join(["word"] * 60))) + 1  # plus the end token
    assert f"2 inputs longer than --max-length 16 tokens were truncated (longest: row 1, {longest} tokens)" in err


def test_overwrite_replaces_only_when_asked(tiny_embedding_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    out = tmp_path / "v.npy"
    assert _embed(tiny_embedding_path, str(src), "-o", str(out)) == 0
    first = out.read_bytes()
    src.write_text("two\n")
    assert _embed(tiny_embedding_path, str(src), "-o", str(out)) == 2 and out.read_bytes() == first
    assert _embed(tiny_embedding_path, str(src), "-o", str(out), "--overwrite") == 0 and out.read_bytes() != first


def test_a_reranker_is_refused_as_an_embedder_unless_forced(tiny_reranker_path: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("one\n")
    assert main(["embed", str(src), "--model", str(tiny_reranker_path)]) == 2
    err = capsys.readouterr().err
    assert "is a reranker checkpoint (Qwen3ForCausalLM)" in err and "--allow-causal-lm" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["embed", str(src), "--model", str(tiny_reranker_path), "--allow-causal-lm",
                 "-o", str(tmp_path / "v.npy")]) == 0


def test_rerank_keeps_document_ids_and_reports_truncation(tiny_reranker_path: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs.jsonl"
    texts = ["Beijing is the capital of China.", "Gravity pulls. " * 40, "Rivers flow."]
    docs.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "r.json"
    assert main(["rerank", "--model", str(tiny_reranker_path), "--query", "capital of China", "--documents",
                 str(docs), "-o", str(out), "--max-length", "128"]) == 0
    res = json.loads(out.read_text())["results"]
    ref = Reranker.from_pretrained(tiny_reranker_path, device="cpu", max_length=128).score("capital of China", texts)
    by_id = {r["id"]: r["score"] for r in res}
    assert by_id == pytest.approx({f"d{i}": float(s) for i, s in enumerate(ref)}, abs=1e-5)
    assert [r["index"] for r in res] == [int(r["id"][1:]) for r in res]
    assert "1 documents longer than --max-length 128 tokens were truncated (longest: row 1" in capsys.readouterr().err


def test_rerank_many_queries_jsonl_and_trec(tiny_reranker_path: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"id": "a", "text": "Paris is in France."}\n{"id": "b", "text": "Cats purr."}\n')
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "q1", "query": "capital of France"}\n{"id": "q2", "text": "pets"}\n'
                       '{"id": "q3", "query": "own docs", "documents": [{"id": "x", "text": "own one"}, "two"]}\n')
    base = ["rerank", "--model", str(tiny_reranker_path), "--queries", str(queries), "--documents", str(docs)]
    assert main([*base, "-o", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    rr = Reranker.from_pretrained(tiny_reranker_path, device="cpu")
    ref = rr.score("capital of France", ["Paris is in France.", "Cats purr."])
    assert [r["query_id"] for r in rows] == ["q1", "q2", "q3"]
    assert {h["id"]: h["score"] for h in rows[0]["results"]} == pytest.approx({"a": ref[0], "b": ref[1]}, abs=1e-5)
    assert [h.get("id", h["index"]) for h in rows[2]["results"]] in (["x", 1], [1, "x"])
    assert main([*base, "-o", str(tmp_path / "r.trec"), "--run-name", "mine"]) == 0
    lines = (tmp_path / "r.trec").read_text().splitlines()
    assert len(lines) == 6 and lines[0].split()[:2] == ["q1", "Q0"] and lines[0].split()[3] == "1"
    assert all(ln.endswith(" mine") for ln in lines)


def test_serve_refuses_a_reranker_as_its_embedding_model(tiny_reranker_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.4: `serve --embedding-model` goes through the same loader as `embed`."""
    pytest.importorskip("uvicorn")
    import qwen_embed.server.app as app

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the server was built with a reranker as its embedder")

    monkeypatch.setattr(app, "create_app", never)
    assert main(["serve", "--embedding-model", str(tiny_reranker_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is a reranker checkpoint (Qwen3ForCausalLM)" in err and len(err.strip().splitlines()) == 1


def test_rerank_and_search_drop_blank_query_lines_with_skip_empty(tiny_reranker_path: Path, tiny_embedding_path: Path,
                                                                  tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("capital\n\nforce\n")
    out = tmp_path / "r.jsonl"
    base = ["rerank", "--model", str(tiny_reranker_path), "--queries", str(queries), "--document", "Beijing"]
    assert main([*base, "-o", str(out)]) == 2
    assert "line 2 is blank" in capsys.readouterr().err and not out.exists()
    assert main([*base, "-o", str(out), "--skip-empty"]) == 0
    assert [json.loads(ln)["query_id"] for ln in out.read_text().splitlines()] == ["0", "2"]  # their input lines
    docs = tmp_path / "d.txt"
    docs.write_text("Beijing\n")
    assert main(["index", str(docs), "--db", str(tmp_path / "db"), "--model", str(tiny_embedding_path)]) == 0
    found = tmp_path / "s.jsonl"
    assert main(["search", "--db", str(tmp_path / "db"), "--queries", str(queries), "-o", str(found)]) == 2
    assert "--skip-empty" in capsys.readouterr().err
    assert main(["search", "--db", str(tmp_path / "db"), "--queries", str(queries), "-o", str(found),
                 "--skip-empty"]) == 0
    assert [json.loads(ln)["query_id"] for ln in found.read_text().splitlines()] == ["0", "2"]


@pytest.mark.parametrize("bad", ["query", "document", "own-document", "run-name"])
def test_a_trec_run_that_could_not_hold_its_ids_is_refused_before_any_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    """TREC runs split their columns at whitespace: ids with spaces (and a run name with one) are refused in one
    line before loading anything (the model here does not even exist), and no file is written."""
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"_id": "d 2" if bad == "document" else "d2", "text": "gravity"}) + "\n")
    own = [{"id": "o 1" if bad == "own-document" else "o1", "text": "own"}]
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"_id": "q 1" if bad == "query" else "q1", "text": "capital"}) + "\n"
                       + json.dumps({"_id": "q2", "text": "x", "documents": own}) + "\n")
    out = tmp_path / "r.trec"
    run_name = "my run" if bad == "run-name" else "mine"
    assert main(["rerank", "--model", str(tmp_path / "no-such-model"), "--queries", str(queries), "--documents",
                 str(docs), "-o", str(out), "--run-name", run_name]) == 2
    err = capsys.readouterr().err.strip()
    want = {"query": "query id 'q 1'", "document": "document id 'd 2'", "own-document": "document id 'o 1'",
            "run-name": "--run-name 'my run' must be one word"}[bad]
    assert len(err.splitlines()) == 1 and want in err and not out.exists()
    assert main(["rerank", "--model", str(tmp_path / "no-such-model"), "--queries", str(queries), "--documents",
                 str(docs), "-o", str(tmp_path / "r.jsonl"), "--run-name", "mine"]) == 2
    assert "no-such-model" in capsys.readouterr().err  # JSONL holds any id: it gets as far as loading


def test_search_refuses_a_trec_run_for_a_table_with_ids_it_cannot_hold(tiny_embedding_path: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "my notes.txt").write_text("Beijing is the capital of China.")
    assert main(["index", str(folder), "--db", str(tmp_path / "db"), "--model", str(tiny_embedding_path)]) == 0
    queries = tmp_path / "q.txt"
    queries.write_text("capital\n")
    out = tmp_path / "s.trec"
    assert main(["search", "--db", str(tmp_path / "db"), "--queries", str(queries), "-o", str(out)]) == 2
    assert "document id 'my notes.txt'" in capsys.readouterr().err and not out.exists()
    assert main(["search", "--db", str(tmp_path / "db"), "--queries", str(queries), "-o",
                 str(tmp_path / "s.jsonl")]) == 0


def test_a_model_with_a_shorter_limit_than_8192_works_without_max_length(tiny_embedding_path: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    short = tmp_path / "short"
    shutil.copytree(tiny_embedding_path, short)
    config = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 512}))
    src = tmp_path / "in.txt"
    src.write_text("hello\n" + "word " * 700 + "\n")
    assert main(["embed", str(src), "--model", str(short), "-o", str(tmp_path / "v.npy")]) == 0
    assert "longer than --max-length 512 tokens were truncated" in capsys.readouterr().err
    want = Embedder.from_pretrained(short, device="cpu").encode(src.read_text().splitlines())
    assert Embedder.from_pretrained(short, device="cpu").max_length == 512
    assert np.allclose(np.load(tmp_path / "v.npy"), want, atol=1e-6)
    assert main(["embed", str(src), "--model", str(short), "-o", str(tmp_path / "w.npy"), "--devices", "cpu"]) == 0
    assert np.allclose(np.load(tmp_path / "w.npy"), want, atol=1e-5)
    assert main(["embed", str(src), "--model", str(short), "-o", str(tmp_path / "x.npy"), "--max-length", "513"]) == 2
    assert "max_length=513 is out of range: use 2..512" in capsys.readouterr().err
    assert main(["index", str(src), "--db", str(tmp_path / "db"), "--model", str(short)]) == 0  # chunks fit 511
    assert main(["search", "hello", "--db", str(tmp_path / "db")]) == 0


def test_binary_outputs_report_their_dimensions_and_bytes(tiny_embedding_path: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.txt"
    src.write_text("hello\nworld\n")
    assert _embed(tiny_embedding_path, str(src), "-o", str(tmp_path / "v.npy"), "--precision", "ubinary",
                  "--dim", "40") == 0
    assert "embedded 2 texts -> 40 dims, 5 bytes each" in capsys.readouterr().err
    assert np.load(tmp_path / "v.npy").shape == (2, 5)
