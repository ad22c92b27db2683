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


def test_train_embed_resumes_says_so_and_explains_a_finished_run(small_ckpt: Path, train_file: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.9 and 11.1: resumed from which step; a finished run says how to continue; other content refused."""
    cfg = tmp_path / "c.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"model:\n  path: {small_ckpt}\n  device: cpu\ndata:\n  train_files: [{train_file}]\n"
                   f"train:\n  output_dir: {run}\n  batch_size: 4\n  max_steps: 2\n  save_every: 1\n  log_every: 1\n"
                   f"  progress: false\n")
    assert main(["train", "embed", "--config", str(cfg)]) == 0
    assert "(a new run, train.max_steps=" in capsys.readouterr().err
    assert main(["train", "embed", "--config", str(cfg)]) == 0  # finished: nothing is trained again
    err = capsys.readouterr().err
    assert "already finished its 2 steps" in err and "--set train.max_steps=4" in err
    assert main(["train", "embed", "--config", str(cfg), "--set", "train.max_steps=3"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "(step 2 of 3)" in err and "resumed at step 2" in err
    log = [json.loads(ln) for ln in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    elapsed = [r["elapsed_s"] for r in log]
    assert elapsed == sorted(elapsed) and elapsed[2] > elapsed[1]  # time since the run's start, not per interval
    # other settings in the same folder: refused, nothing removed
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", "embed", "--config", str(cfg), "--set", "optim.lr=0.5"]) == 2
    assert "holds a run with other settings" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
    (run / "notes.txt").write_text("mine")
    assert main(["train", "embed", "--config", str(cfg), "--set", "optim.lr=0.5", "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert [json.loads(ln)["step"] for ln in (run / "train_log.jsonl").read_text().splitlines()] == [1, 2]


def test_mine_explains_short_rows(small_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(4, negatives=0))
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(small_ckpt), "--device", "cpu", "--input", str(src), "-o", str(out),
                 "--negatives", "7", "--top-k", "5"]) == 0
    err = capsys.readouterr().err
    stats = json.loads(err.splitlines()[0])
    assert stats["short_rows"] == 4  # 4 rows have 3 other positives to draw from, fewer than 7
    assert "short_rows=4: that many rows got fewer than --negatives 7 negatives" in err and "--top-k" in err
    assert main(["mine", "--model", str(small_ckpt), "--input", str(src), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["embed", "rerank"])
@pytest.mark.parametrize(("override", "says"), [
    ("optim.lr=-1", "optim.lr=-1.0 must be > 0"), ("optim.beta1=1.5", "optim.beta1=1.5 must be in [0, 1)"),
    ("lora.dropout=2", "lora.dropout=2.0 must be in [0, 1)"), ("train.log_every=0", "train.log_every=0 must be >= 1"),
    ("eval.every=0", "eval.every=0 must be >= 1"), ("train.save_every=-1", "train.save_every=-1 must be >= 0"),
])
def test_out_of_range_settings_are_refused_before_anything_loads_or_is_written(
        small_ckpt: Path, train_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str,
        override: str, says: str) -> None:
    cfg = tmp_path / "c.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"model:\n  path: {tmp_path / 'no-model'}\ndata:\n  train_files: [{train_file}]\n"
                   f"train:\n  output_dir: {run}\n  batch_size: 4\n  max_steps: 2\n  progress: false\n"
                   f"eval:\n  file: {train_file}\n")
    assert main(["train", kind, "--config", str(cfg), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: " in err and says in err, err
    assert not run.exists()


def test_a_failed_end_of_run_merge_is_refused_up_front_or_written_by_a_rerun(
        small_ckpt: Path, train_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A merge of a checkpoint that keep_checkpoints deletes is refused before training; a finished run gets
    its merge (added or changed) by a rerun, without training again and without being called another run."""
    cfg = tmp_path / "c.yaml"
    run = tmp_path / "run"
    cfg.write_text(f"model:\n  path: {small_ckpt}\n  device: cpu\ndata:\n  train_files: [{train_file}]\n"
                   f"train:\n  output_dir: {run}\n  batch_size: 4\n  max_steps: 3\n  save_every: 1\n  log_every: 1\n"
                   f"  keep_checkpoints: 2\n  progress: false\n")
    pruned = ["--set", "merge.method=linear", "--set", "merge.checkpoints=[1, 3]"]
    assert main(["train", "embed", "--config", str(cfg), *pruned]) == 2
    err = capsys.readouterr().err.strip()
    assert "merge.checkpoints names step 1, which train.keep_checkpoints=2 deletes" in err
    assert len(err.splitlines()) == 1 and not run.exists()
    assert main(["train", "embed", "--config", str(cfg)]) == 0  # a run without a merge
    capsys.readouterr()
    log = (run / "train_log.jsonl").read_text()
    merge = ["--set", "merge.method=linear", "--set", "merge.checkpoints=[2, 3]", "--set", "merge.evaluate=false"]
    assert main(["train", "embed", "--config", str(cfg), *merge]) == 0
    err = capsys.readouterr().err
    assert "writing its missing merge (merged/)" in err and "other settings" not in err
    report = json.loads((run / "merged" / "merge_report.json").read_text())
    assert [Path(p).parent.name for p in report["inputs"]] == ["step-00000002", "step-00000003"]
    assert (run / "train_log.jsonl").read_text() == log  # nothing trained again
    written = (run / "merged" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "embed", "--config", str(cfg), *merge]) == 0
    assert "already finished its 3 steps" in capsys.readouterr().err
    assert (run / "merged" / "model.safetensors").stat().st_mtime_ns == written
    assert main(["train", "embed", "--config", str(cfg), *merge[:2], "--set", "merge.checkpoints=last-2"]) == 0
    assert "writing its missing merge" in capsys.readouterr().err  # other merge settings: merged again


@pytest.mark.parametrize(("flags", "says"), [
    (["--margin", "nan"], "margin=nan (--margin) must be a finite number in [-2, 2)"),
    (["--margin", "inf"], "margin=inf (--margin) must be a finite number in [-2, 2)"),
    (["--margin=-inf"], "margin=-inf (--margin)"),
    (["--margin", "2"], "margin=2.0 (--margin)"),
    (["--top-k", "0"], "top_k=0 (--top-k) must be a whole number >= 1"),
    (["--negatives", "0"], "num_negatives=0 (--negatives) must be a whole number >= 1"),
    (["--chunk", "0"], "chunk=0 (--chunk) must be a whole number >= 1"),
])
def test_mine_refuses_settings_that_cannot_mine_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], says: str) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(4, negatives=0))
    out = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(tmp_path / "no-model"), "--input", str(src), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "qwen-embed mine: error: " in err and says in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.jsonl"]


@pytest.mark.parametrize("value", ["nan", "inf", "-0.1", "1"])
def test_stdlib_pairs_refuses_a_held_out_fraction_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               value: str) -> None:
    assert main(["train", "stdlib-pairs", str(tmp_path / "pairs"), "--held-out", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--held-out {float(value)} must be a finite fraction in [0, 1)" in err
    assert not (tmp_path / "pairs").exists()


def test_merge_lora_offers_only_the_dtypes_it_saves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for dtype in ("int8", "float64", "qint8"):
        assert main(["merge-lora", "--base", str(tmp_path / "base"), "--adapter", str(tmp_path / "adapter"), "-o",
                     str(tmp_path / "out"), "--dtype", dtype]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"qwen-embed merge-lora: error: --dtype '{dtype}' is not a dtype merge-lora saves; use "
                       "float32, bfloat16, float16, or leave it out to keep the base's."), err
    assert not (tmp_path / "out").exists()
