"""The training commands through `qwen-embed`: train embed, settings, plot, stdlib-pairs, mine; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.cli import main

from .conftest import make_rows, write_jsonl


def test_train_embed_from_yaml_then_plot(small_embedding_path: Path, train_file: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  path: {small_embedding_path}\n  device: cpu\ndata:\n  train_files: [{train_file}]\n"
                   f"train:\n  output_dir: {tmp_path / 'run'}\n  batch_size: 4\n  max_steps: 50\n  progress: false\n")
    assert main(["train", "embed", "--config", str(cfg), "--set", "train.max_steps=2",
                 "--set", "train.log_every=1"]) == 0
    log = tmp_path / "run" / "train_log.jsonl"
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == [1, 2]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert main(["train", "plot", str(log), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_config_mistakes_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_stepz: 3\n")
    assert main(["train", "embed", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown key(s) ['max_stepz']" in err and len(err.splitlines()) == 1
    assert main(["train", "embed", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_settings_and_mine_commands(small_embedding_path: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "settings"]) == 0
    assert "| `chunk_tokens` | `16384` |" in capsys.readouterr().out
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(12, negatives=0))
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(small_embedding_path), "--device", "cpu", "--input", str(src), "-o", str(out),
                 "--negatives", "2", "--top-k", "5", "--margin", "0"]) == 0
    rows = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert len(rows) == 12 and all(len(r["negatives"]) <= 2 for r in rows)
    assert sum(len(r["negatives"]) == 2 for r in rows) >= 4
