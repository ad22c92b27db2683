"""Issue 11.8: messages that misled a new user, each with the message it gives now."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qwen_embed.cli import main


def _err(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_missing_local_model_folder_is_not_a_hub_download(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "runs").mkdir()
    (tmp_path / "in.txt").write_text("x\n")
    err = _err(["embed", "in.txt", "--model", "runs/tiny-init"], capsys)
    assert "model folder runs/tiny-init does not exist (its folder runs does)" in err
    assert "huggingface-cli" not in err and "hub cache" not in err


def test_cli_messages_speak_in_flags(tiny_embedding_path: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in.txt").write_text("x\n")
    err = _err(["embed", str(tmp_path / "in.txt"), "--model", str(tiny_embedding_path), "--dim", "4096"], capsys)
    assert "dim=4096 is out of range" in err and "None" not in err and "leave it out for the full 64" in err
    if not torch.cuda.is_available():
        err = _err(["embed", str(tmp_path / "in.txt"), "--model", str(tiny_embedding_path), "--device", "cuda"],
                   capsys)
        assert "CUDA is not available" in err and "device='cpu'" not in err


def test_index_chunk_tokens_on_an_existing_table_names_that_flag(tiny_embedding_path: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "some words"}) + "\n")
    db = str(tmp_path / "db")
    assert main(["index", str(src), "--db", db, "--model", str(tiny_embedding_path)]) == 0
    capsys.readouterr()
    err = _err(["index", str(src), "--db", db, "--chunk-tokens", "100"], capsys)
    assert "chunk_tokens=512, not 100; leave --chunk-tokens out" in err and "--instruction" not in err


def test_search_on_a_file_does_not_promise_to_create_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "db").write_text("a file")
    err = _err(["search", "q", "--db", str(tmp_path / "db")], capsys)
    assert "is a file" in err and "created" not in err and "qwen-embed index" in err
