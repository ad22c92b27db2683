"""`qwen-embed synth`: help, user mistakes (one line, status 2), an incomplete run (status 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.cli import main

from .conftest import PERSONAS, write_passages
from .fake_llm import FakeLLM


def queries(*extra: str) -> list[str]:
    return ["synth", "queries", "--device", "cpu", "--backoff", "0.01", "--timeout", "2", *extra]


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["synth", "queries", "--help"])
    text = capsys.readouterr().out
    for flag in ("--languages", "--min-words", "--max-words", "--top-personas", "--seed", "--concurrency",
                 "--timeout", "--max-retries", "--max-requests", "--api-key-env", "--embedding-model", "--cache"):
        assert flag in text


def test_user_mistakes_are_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    passages = write_passages(tmp_path / "p.jsonl", ["valid"])
    cases = [
        (["--passages", str(empty), "--personas", str(PERSONAS)], "holds no passages"),
        (["--passages", str(passages), "--personas", str(tmp_path / "nope.jsonl")], "does not exist"),
        (["--passages", str(passages), "--personas", str(PERSONAS), "--min-words", "0"], "min_words=0"),
        (["--passages", str(passages), "--personas", str(PERSONAS), "--generator", "ftp://x"], "neither an http"),
        (["--passages", str(passages), "--personas", str(PERSONAS), "--extra-body", "[1]"], "JSON object"),
    ]
    for args, message in cases:
        argv = queries("--generator", "http://127.0.0.1:9/v1", "--model", "m", "-o", str(tmp_path / "o.jsonl"),
                       *args)
        assert main(argv) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_wrong_key_reported_once(tiny_embedding_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeLLM(api_key="sk-right")
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")
        passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 4)
        argv = queries("--passages", str(passages), "--personas", str(PERSONAS), "--generator", server.url,
                       "--model", "m", "-o", str(tmp_path / "o.jsonl"), "--embedding-model", str(tiny_embedding_path))
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "HTTP 401" in err[0] and "Incorrect API key" in err[0]
        assert server.gets == 1 and len(server.prompts()) == 0
    finally:
        server.close()


def test_incomplete_run_exits_1_and_says_how_to_resume(fake_llm: FakeLLM, tiny_embedding_path: Path,
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    passages = write_passages(tmp_path / "p.jsonl", ["valid", "dead", "valid"])
    argv = queries("--passages", str(passages), "--personas", str(PERSONAS), "--generator", fake_llm.url,
                   "--model", "m", "-o", str(tmp_path / "o.jsonl"), "--embedding-model", str(tiny_embedding_path),
                   "--max-retries", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    summary = json.loads(err[-2])
    assert summary["pairs"] == 2 and summary["unanswered"] == 1 and summary["failed"] == 1
    assert "Run the same command again to resume" in err[-1]


def test_docs_list_every_setting_and_the_prompts() -> None:
    import dataclasses
    from importlib import resources

    from qwen_embed.synth import GeneratorSettings, SynthSettings

    docs = (Path(__file__).resolve().parents[2] / "docs" / "synth.md").read_text()
    for cls in (SynthSettings, GeneratorSettings):
        for f in dataclasses.fields(cls):
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            assert f"| `--{f.name.replace('_', '-')}` | {'unset' if default is None else default} |" in docs, f.name
    for name in ("config.txt", "query.txt"):
        assert (resources.files("qwen_embed.synth") / "prompts" / name).read_text().strip() in docs, name
