"""Every command's outputs: checked before any work, refused when unwritable (one line, status 2), never
overwriting what the command did not create; and the shared parser's rules (no abbreviations, did you mean).

The walk below introspects the parser, so a new command fails `test_every_command_is_classified` until it
says how its output is given (or that it has none).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qwen_embed.cli import build_parser, main

MISSING_MODEL = "/nonexistent/model-that-would-be-loaded"


def leaf_commands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    def walk(p: argparse.ArgumentParser, prefix: tuple[str, ...]) -> Iterator[tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield " ".join(prefix), p
            return
        for name, sp in subs[0].choices.items():
            yield from walk(sp, (*prefix, name))

    yield from walk(build_parser(), ())


def _train_config(tmp: Path, out: str) -> str:
    cfg = tmp / "c.yaml"
    cfg.write_text(f"model:\n  path: {MISSING_MODEL}\ndata:\n  train_files: [{tmp / 'rows.jsonl'}]\n"
                   f"train:\n  output_dir: {out}\n")
    return str(cfg)


# command -> argv giving OUT as its output (inputs exist, the model does not: the output must fail first)
Argv = Callable[[Path, str], list[str]]
WITH_OUTPUT: dict[str, Argv] = {
    "embed": lambda t, out: ["embed", str(t / "in.txt"), "-o", out + ".npy", "--model", MISSING_MODEL],
    "rerank": lambda t, out: ["rerank", "--query", "q", "--document", "d", "-o", out + ".json", "--model",
                              MISSING_MODEL],
    "make-tiny": lambda t, out: ["make-tiny", out],
    "index": lambda t, out: ["index", str(t / "in.txt"), "--db", out, "--model", MISSING_MODEL],
    "search": lambda t, out: ["search", "--queries", str(t / "in.txt"), "--db", str(t), "-o", out + ".jsonl",
                              "--model", MISSING_MODEL],
    "eval retrieval": lambda t, out: ["eval", "retrieval", "--dataset", str(t), "--embedding-model", MISSING_MODEL,
                                      "--output-dir", out],
    "eval rerank": lambda t, out: ["eval", "rerank", "--dataset", str(t), "--candidates", str(t / "in.txt"),
                                   "--reranker-model", MISSING_MODEL, "--output-dir", out],
    "train embed": lambda t, out: ["train", "embed", "--config", _train_config(t, out)],
    "embed-corpus": lambda t, out: ["embed-corpus", str(t / "in.txt"), "-o", out, "--engine", "local", "--model",
                                    MISSING_MODEL],
    "train rerank": lambda t, out: ["train", "rerank", "--config", _train_config(t, out)],
    "merge": lambda t, out: ["merge", MISSING_MODEL, MISSING_MODEL + "-2", "-o", out],
    "train plot": lambda t, out: ["train", "plot", str(t / "in.txt"), "-o", out + ".png"],
    "train stdlib-pairs": lambda t, out: ["train", "stdlib-pairs", out],
    "mine": lambda t, out: ["mine", "--input", str(t / "rows.jsonl"), "-o", out + ".jsonl", "--model", MISSING_MODEL],
    "merge-lora": lambda t, out: ["merge-lora", "--base", MISSING_MODEL, "--adapter", str(t), "-o", out],
    "synth queries": lambda t, out: ["synth", "queries", "--passages", str(t / "in.txt"), "--personas",
                                     str(t / "in.txt"), "--generator", MISSING_MODEL, "-o", out + ".jsonl"],
    "synth filter": lambda t, out: ["synth", "filter", str(t / "rows.jsonl"), "-o", out + ".jsonl", "--embedding-model",
                                    MISSING_MODEL],
}
# they print to stdout or serve HTTP; `recipe run` writes the folders its recipe file names
NO_OUTPUT = {"info", "serve", "eval metrics", "train settings", "recipe run", "recipe status"}


def test_every_command_is_classified() -> None:
    assert {name for name, _ in leaf_commands()} == set(WITH_OUTPUT) | NO_OUTPUT


@pytest.mark.parametrize("command", sorted(WITH_OUTPUT))
@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_unwritable_output_is_one_line_before_any_work(command: str, where: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("some text\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    out = str(tmp_path / "in.txt" / "out") if where == "under-a-file" else "/proc/qwen-embed-out"
    code = main(WITH_OUTPUT[command](tmp_path, out))
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    # the output was refused, not the (missing) model: the check ran before any loading
    assert ("in.txt" if where == "under-a-file" else "/proc") in err and "nonexistent" not in err, err


@pytest.mark.parametrize("command", ["embed", "rerank", "mine", "search", "train plot"])
def test_an_existing_output_file_is_refused_and_kept(command: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("some text\n")
    (tmp_path / "rows.jsonl").write_text(json.dumps({"query": "q", "positive": "p"}) + "\n")
    argv = WITH_OUTPUT[command](tmp_path, str(tmp_path / "mine"))
    target = Path(argv[argv.index("-o") + 1])
    target.write_text("precious")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--overwrite" in err and "nonexistent" not in err
    assert target.read_text() == "precious"


@pytest.mark.parametrize("command", ["make-tiny", "train stdlib-pairs", "merge-lora", "eval retrieval", "index"])
def test_a_folder_holding_user_files_is_refused_and_kept(command: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("some text\n")
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    assert main(WITH_OUTPUT[command](tmp_path, str(folder))) == 2
    err = capsys.readouterr().err
    assert "work" in err and "nonexistent" not in err and len(err.strip().splitlines()) == 1, err
    assert [p.name for p in folder.iterdir()] == ["notes.txt"] and (folder / "notes.txt").read_text() == "precious"


def test_train_embed_refuses_a_folder_of_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    assert main(WITH_OUTPUT["train embed"](tmp_path, str(folder))) == 2
    err = capsys.readouterr().err
    assert "files a training run does not write (notes.txt)" in err and "--overwrite" in err
    assert (folder / "notes.txt").read_text() == "precious"


# -- the shared parser ----------------------------------------------------------------------------------
def test_misspelt_option_suggests_the_right_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["embed", "x.txt", "--dims", "32"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("qwen-embed embed: error:") and "did you mean --dim" in err
    with pytest.raises(SystemExit):
        main(["eval", "retrieval", "--dataset", "d", "--output-dirs", "o"])
    err = capsys.readouterr().err
    assert err.startswith("qwen-embed eval retrieval: error:") and "did you mean --output-dir" in err


@pytest.mark.parametrize("name", sorted({n for n, _ in leaf_commands()}))
def test_no_command_accepts_abbreviated_options(name: str) -> None:
    parser = dict(leaf_commands())[name]
    assert parser.allow_abbrev is False
    longs = [o for a in parser._actions for o in a.option_strings if o.startswith("--") and len(o) > 4]
    for opt in longs:
        prefix = opt[:-1]
        if any(o == prefix for o in longs):
            continue
        with pytest.raises(SystemExit):
            parser.parse_args([prefix, "x"])
