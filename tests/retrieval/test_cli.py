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
    n = 2000
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
