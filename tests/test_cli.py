"""The core commands: embed, rerank, info, make-tiny; user mistakes give one line and status 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.cli import main
from tests.threads import subprocess_env

ENV = subprocess_env(HF_HUB_OFFLINE="1")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qwen_embed", *args], input=stdin, capture_output=True,
                          text=True, env=ENV, timeout=120)


def test_embed_npy_and_jsonl(tiny_embedding_path: Path, tmp_path: Path, embedder: Embedder) -> None:
    src = tmp_path / "in.txt"
    src.write_text("first line\nsecond line\n\nthird\n")
    assert main(["embed", str(src), "-o", str(tmp_path / "v.npy"), "--model", str(tiny_embedding_path),
                 "--dim", "32", "--skip-empty"]) == 0
    v = np.load(tmp_path / "v.npy")
    ids = [json.loads(ln) for ln in (tmp_path / "v.ids.jsonl").read_text().splitlines()]
    assert [r["index"] for r in ids] == [0, 1, 3]  # the blank line 2 (0-based) was skipped, and said so
    ref = embedder.encode(["first line", "second line", "third"], dim=32)  # from_pretrained(the same path, "cpu")
    assert v.shape == (3, 32) and np.allclose(v, ref, atol=1e-6)

    jl = tmp_path / "in.jsonl"
    jl.write_text('{"id": "a", "text": "what is gravity"}\n{"id": "b", "text": "capital"}\n')
    assert main(["embed", str(jl), "-o", str(tmp_path / "v.jsonl"), "--model", str(tiny_embedding_path),
                 "--query"]) == 0
    rows = [json.loads(ln) for ln in (tmp_path / "v.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and len(rows[0]["embedding"]) == 64
    q = embedder.encode_queries(["what is gravity"])
    assert np.allclose(rows[0]["embedding"], q[0], atol=1e-6)


def test_embed_stdin_to_stdout(tiny_embedding_path: Path) -> None:
    r = run("embed", "--model", str(tiny_embedding_path), stdin="hello\nworld\n")
    assert r.returncode == 0, r.stderr
    assert [json.loads(ln)["index"] for ln in r.stdout.splitlines()] == [0, 1]


def test_rerank_json(tiny_reranker_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In this process, like the user mistakes below (a process start costs seconds); the entry point is
    tested by the stdin command above and the hub id below, run with `python -m qwen_embed`."""
    docs = tmp_path / "docs.txt"
    docs.write_text("Beijing is the capital of China.\nGravity pulls things down.\nRivers.\n")
    capsys.readouterr()
    code = main(["rerank", "--model", str(tiny_reranker_path), "--query", "capital of China",
                 "--documents", str(docs), "--top-n", "2", "--document", "extra doc"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert len(out["results"]) == 2
    assert out["results"][0]["score"] >= out["results"][1]["score"]
    assert {"index", "score", "document"} <= set(out["results"][0])


def test_info(tiny_reranker_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(tiny_reranker_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"].startswith("reranker") and info["hidden_size"] == 64 and info["max_length"] == 32768
    assert main(["info", str(tiny_reranker_path)]) == 0
    assert "Qwen3ForCausalLM" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["embed", "/nonexistent/in.txt"], "does not exist"),
     (["embed", "{in}", "--dim", "31"], "dim=31 is out of range"),
     (["embed", "{in}", "-o", "{tmp}/out.csv"], "must end in .jsonl, .json, .npy, .parquet"),
     (["embed", "{in}", "--model", "/no/such/model"], "model folder /no/such/model does not exist"),
     (["rerank", "--query", "q", "--model", "{rr}"], "no documents"),
     (["rerank", "--query", "q", "--document", "d", "--template", "x", "--model", "{rr}"],
      "unknown reranker template"),
     # a value holding line breaks is quoted with them escaped: still one line
     (["embed", "/no/such\ninput\u2028file.txt"], "/no/such\\ninput\\u2028file.txt does not exist"),
     (["embed", "{in}", "--model", "/no/model\r\nhere"], "model folder /no/model\\r\\nhere does not exist")],
)
def test_user_mistakes_one_line_no_traceback(args: list[str], needle: str, tiny_embedding_path: Path,
                                             tiny_reranker_path: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """In this process (`main` is what the entry point runs; a process start per case cost seconds); the
    entry point itself is tested below and by the stdin command above run with `python -m qwen_embed`."""
    src = tmp_path / "in.txt"
    src.write_text("text\n")
    subs = {"{in}": str(src), "{tmp}": str(tmp_path), "{rr}": str(tiny_reranker_path)}
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
    if args[0] == "embed" and "--model" not in args:
        args += ["--model", str(tiny_embedding_path)]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_info_imports_no_torch(tiny_embedding_path: Path) -> None:
    """`qwen-embed info` reads config.json, the tokenizer and the weight files' sizes: no torch (1.5 -> 0.5 s
    of CPU here)."""
    code = ("import sys, json; from qwen_embed.cli import main; main(['info', sys.argv[1], '--json']); "
            "print(json.dumps('torch' in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_embedding_path)], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    info, _, torch_imported = r.stdout.rpartition("\n")[0].rpartition("\n")
    assert json.loads(info)["dims"] == {"min": 32, "max": 64}
    assert torch_imported == "false"


def test_hub_id_offline_is_one_line_from_the_entry_point() -> None:
    """A process of its own: huggingface_hub reads HF_HUB_OFFLINE when it is imported."""
    r = run("info", "Qwen/Not-Here-Model")
    assert r.returncode == 2, r.stderr
    assert "HF_HUB_OFFLINE" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_failed_run_leaves_no_partial_file(tiny_embedding_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("ok\n")
    out = tmp_path / "v.npy"
    assert main(["embed", str(src), "-o", str(out), "--model", str(tiny_embedding_path), "--dim", "999"]) == 2
    assert list(tmp_path.iterdir()) == [src]


def test_make_tiny_cli(tmp_path: Path) -> None:
    assert main(["make-tiny", str(tmp_path / "m"), "--kind", "seq-cls", "--tokenizer", "small"]) == 0
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == [
        "Qwen3ForSequenceClassification"]
    assert main(["make-tiny", str(tmp_path / "m")]) == 2  # not empty: refused


def test_embed_on_two_devices(tiny_embedding_path: Path, tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("\n".join(f"line number {i}" for i in range(9)))
    assert main(["embed", str(src), "-o", str(tmp_path / "a.npy"), "--model", str(tiny_embedding_path)]) == 0
    assert main(["embed", str(src), "-o", str(tmp_path / "b.npy"), "--model", str(tiny_embedding_path),
                 "--devices", "cpu,cpu"]) == 0
    assert np.abs(np.load(tmp_path / "a.npy") - np.load(tmp_path / "b.npy")).max() <= 1e-5


def test_an_option_value_with_a_line_break_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["embed", "in.txt", "--bogus\nline"])  # argparse quotes an unknown argument as it is
    err = capsys.readouterr().err
    assert ended.value.code == 2 and len(err.strip().splitlines()) == 1 and "argument: --bogus\\nline" in err, err
