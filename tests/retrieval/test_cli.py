"""`qwen-embed index` / `search`: JSON output, user errors as one line, crash-resume after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qwen_embed.cli import main
from qwen_embed.store import open_store
from tests.threads import subprocess_env


def write_docs(path: Path, n: int, words: int = 30) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(f"w{(i * 7 + j) % 997}" for j in range(words))
            f.write(json.dumps({"id": f"doc-{i}", "title": f"Document {i}", "text": text, "part": i % 4}) + "\n")
    return path


def test_index_then_search_json(tmp_path: Path, tiny_embedding_path: Path, tiny_reranker_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    src = write_docs(tmp_path / "docs.jsonl", 20)
    db = tmp_path / "db"
    assert main(["index", str(src), "--db", str(db), "--model", str(tiny_embedding_path), "--dim", "32"]) == 0
    assert "20 added" in capsys.readouterr().err
    assert main(["search", "w5 w12", "--db", str(db), "--json", "--k", "3", "--where", "part = 2",
                 "--rerank-model", str(tiny_reranker_path), "--candidates", "8"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and all(isinstance(h["id"], str) and isinstance(h["score"], float) for h in hits)
    assert all(h["metadata"]["part"] == 2 and "rerank_score" in h for h in hits)
    assert main(["search", "w5", "--db", str(db), "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["#", "score", "id", "title", "/", "snippet"] and "Document" in out


def test_delete_missing_and_updates(tmp_path: Path, tiny_embedding_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for name in "abc":
        (folder / f"{name}.txt").write_text(f"note {name}", encoding="utf-8")
    db = str(tmp_path / "db")
    assert main(["index", str(folder), "--db", db, "--model", str(tiny_embedding_path)]) == 0
    (folder / "a.txt").unlink()
    (folder / "b.txt").write_text("note b, edited", encoding="utf-8")
    assert main(["index", str(folder), "--db", db]) == 0  # without --delete-missing a.txt stays
    assert "0 added, 1 updated, 1 unchanged, 0 deleted" in capsys.readouterr().err
    assert sorted(open_store(db).doc_hashes()) == ["a.txt", "b.txt", "c.txt"]
    assert main(["index", str(folder), "--db", db, "--delete-missing"]) == 0
    assert sorted(open_store(db).doc_hashes()) == ["b.txt", "c.txt"]


def test_user_errors_are_one_line(tmp_path: Path, tiny_embedding_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_docs(tmp_path / "docs.jsonl", 3)
    db_file = tmp_path / "db-file"
    db_file.write_text("not a folder")
    model = ["--model", str(tiny_embedding_path)]
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["index", str(src), "--db", str(db_file), *model], "is a file; give a folder"),
        (["index", str(empty), "--db", str(tmp_path / "db"), *model], "holds no .txt, .md or .jsonl files"),
        (["search", "q", "--db", str(tmp_path / "nowhere")], "does not exist; index documents first"),
    ]
    assert main(["index", str(src), "--db", str(tmp_path / "db"), *model, "--dim", "32"]) == 0
    cases.append((["index", str(src), "--db", str(tmp_path / "db"), "--dim", "48"], "holds 32-dim vectors"))
    cases.append((["search", "q", "--db", str(tmp_path / "db"), "--where", "nosuch > 1"], "not a valid filter"))
    capsys.readouterr()
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_unreadable_file_is_reported_and_the_run_goes_on(tmp_path: Path, tiny_embedding_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "ok.md").write_text("# Fine\nreadable", encoding="utf-8")
    (folder / "broken.txt").write_bytes(b"\xc3\x28 invalid utf-8")
    db = str(tmp_path / "db")
    assert main(["index", str(folder), "--db", db, "--model", str(tiny_embedding_path)]) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "broken.txt: is not UTF-8 text (byte 0)" in err
    assert list(open_store(db).doc_hashes()) == ["ok.md"]


def _rows(db: Path) -> int:
    try:
        return open_store(db).count()
    except Exception:  # not created yet, or caught mid-creation
        return 0


@pytest.mark.slow
def test_sigkill_then_resume_gives_exactly_the_uninterrupted_rows(tmp_path: Path, tiny_embedding_path: Path) -> None:
    n = 1000  # the kill lands once 200 are stored, with 800 (about two seconds of work) still to come
    src = write_docs(tmp_path / "docs.jsonl", n, words=30)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    argv = ["index", str(src), "--model", str(tiny_embedding_path), "--batch-docs", "20"]
    env = subprocess_env()
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", *argv, "--db", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _rows(killed) < 200 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, f"the indexer ended before it could be killed: {proc.stderr.read()!r:.300}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = _rows(killed)
    assert 0 < partial < n, partial
    assert main([*argv, "--db", str(killed)]) == 0  # resume
    assert main([*argv, "--db", str(clean)]) == 0  # uninterrupted reference
    ids_k, vec_k = open_store(killed).vectors()
    ids_c, vec_c = open_store(clean).vectors()
    assert len(ids_k) == len(set(ids_k)) == n
    assert sorted(ids_k) == sorted(ids_c)
    order_k, order_c = np.argsort(ids_k), np.argsort(ids_c)
    np.testing.assert_allclose(vec_k[order_k], vec_c[order_c], atol=1e-6)


@pytest.mark.slow
def test_index_lists_skipped_types_and_takes_extensions_and_fields(tmp_path: Path, tiny_embedding_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.6: unsupported files are listed with the reason; --extensions, --text-field, --title-field."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.txt").write_text("note a")
    (folder / "b.py").write_text("def b(): pass")
    (folder / "rows.jsonl").write_text(json.dumps({"id": "r1", "body": "the body", "name": "The Name"}) + "\n")
    db, model = str(tmp_path / "db"), ["--model", str(tiny_embedding_path)]
    assert main(["index", str(folder), "--db", db, *model, "--text-field", "body", "--title-field", "name"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {folder / 'b.py'}: file type .py is not indexed" in err and "--extensions" in err
    assert sorted(open_store(db).doc_hashes()) == ["a.txt", "r1"]
    assert main(["search", "the body", "--db", db, "--json", "--k", "5"]) == 0
    hit = next(h for h in json.loads(capsys.readouterr().out) if h["id"] == "r1")
    assert (hit["title"], hit["text"]) == ("The Name", "the body")
    assert main(["index", str(folder), "--db", db, "--extensions", "txt,py,jsonl", "--text-field", "body",
                 "--title-field", "name"]) == 0
    assert sorted(open_store(db).doc_hashes()) == ["a.txt", "b.py", "r1"]


def test_delete_missing_lists_needs_yes_and_dry_run_changes_nothing(tmp_path: Path, tiny_embedding_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(8):
        (folder / f"n{i}.txt").write_text(f"note {i}")
    db = str(tmp_path / "db")
    assert main(["index", str(folder), "--db", db, "--model", str(tiny_embedding_path)]) == 0
    for i in range(1, 8):
        (folder / f"n{i}.txt").unlink()
    (folder / "new.txt").write_text("a new note")
    capsys.readouterr()
    assert main(["index", str(folder), "--db", db, "--delete-missing", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "dry run: would add 1, update 0, leave 1 unchanged and delete 7: n1.txt, n2.txt" in err
    assert len(open_store(db).doc_hashes()) == 8  # nothing changed
    assert main(["index", str(folder), "--db", db, "--delete-missing"]) == 2
    err = capsys.readouterr().err
    assert "would delete 7 documents (n1.txt" in err and "pass --yes" in err and "Nothing was changed" in err
    assert len(open_store(db).doc_hashes()) == 8
    assert main(["index", str(folder), "--db", db, "--delete-missing", "--yes"]) == 0
    assert "deleting 7 documents not in the sources: n1.txt" in capsys.readouterr().err
    assert sorted(open_store(db).doc_hashes()) == ["n0.txt", "new.txt"]


def test_db_folder_of_user_files_is_refused(tmp_path: Path, tiny_embedding_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = write_docs(tmp_path / "docs.jsonl", 2)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("mine")
    assert main(["index", str(src), "--db", str(tmp_path / "work"), "--model", str(tiny_embedding_path)]) == 2
    assert "holds other files (notes.txt), not a LanceDB database" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["notes.txt"]


def test_search_many_queries_jsonl_and_trec(tmp_path: Path, tiny_embedding_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.7: a file of queries answered in one process."""
    src = write_docs(tmp_path / "docs.jsonl", 6)
    db = str(tmp_path / "db")
    assert main(["index", str(src), "--db", db, "--model", str(tiny_embedding_path)]) == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"_id": "q1", "text": "w5 w12"}\n{"id": "q2", "query": "w40"}\n')
    assert main(["search", "--db", db, "--queries", str(queries), "--k", "3", "-o", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["query_id"] for r in rows] == ["q1", "q2"] and all(len(r["hits"]) == 3 for r in rows)
    capsys.readouterr()
    assert main(["search", "w5 w12", "--db", db, "--json", "--k", "3"]) == 0
    assert [h["id"] for h in json.loads(capsys.readouterr().out)] == [h["id"] for h in rows[0]["hits"]]
    assert main(["search", "--db", db, "--queries", str(queries), "--k", "2", "-o", str(tmp_path / "r.trec")]) == 0
    lines = [ln.split() for ln in (tmp_path / "r.trec").read_text().splitlines()]
    assert [ln[0] for ln in lines] == ["q1", "q1", "q2", "q2"] and [ln[3] for ln in lines] == ["1", "2", "1", "2"]
    assert lines[0][2] == rows[0]["hits"][0]["id"]
