"""Faults around checkpoints (issue 23) and the run's messages (issue 11): non-finite values, crafted state.pt,
stale temporary folders, damaged checkpoints and logs, resume / finished-run messages, elapsed time."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_embed.cli import main
from qwen_embed.errors import WeightsError
from qwen_embed.train.checkpoints import CheckpointError
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer, TrainingError

from .conftest import make_rows, write_jsonl


def config(ckpt: Path, data: Path, out: Path, **train: object) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "num_negatives": 1, "query_max_length": 32, "doc_max_length": 32,
                 "shuffle_buffer": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": 4, "chunk_tokens": 128, "max_steps": 4, "save_every": 2,
                  "log_every": 1, "keep_checkpoints": 3, "progress": False, **train},
    })


def params(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def poison(file: Path) -> None:
    w = load_file(str(file))
    key = next(iter(w))
    w[key] = torch.full_like(w[key], float("nan"))
    save_file(w, str(file))


def test_nan_checkpoint_refuses_to_resume(small_ckpt: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(config(small_ckpt, train_file, out)).run(until=2)
    poison(out / "checkpoints" / "step-00000002" / "model" / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        Trainer(config(small_ckpt, train_file, out)).run()


def test_nan_base_refuses_to_train(small_ckpt: Path, train_file: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(small_ckpt, bad)
    poison(bad / "model.safetensors")
    with pytest.raises(WeightsError, match=r"bad: .* holds \d+ NaN or infinite values"):
        Trainer(config(bad, train_file, tmp_path / "run"))


def test_non_finite_loss_stops_at_that_step(small_ckpt: Path, train_file: Path, tmp_path: Path) -> None:
    t = Trainer(config(small_ckpt, train_file, tmp_path / "run", max_steps=6))
    calls = {"n": 0}
    real = t.objective.gradients

    def nan_on_third(batch: object) -> float:
        calls["n"] += 1
        loss = real(batch)
        return float("nan") if calls["n"] == 3 else loss

    t.objective.gradients = nan_on_third  # type: ignore[method-assign]
    before = None
    with pytest.raises(TrainingError, match="the loss is nan at step 3"):
        for batch in t.batches():
            before = params(t)
            t.train_step(batch)
    assert t.step == 2 and before is not None
    assert all(torch.equal(before[k], v) for k, v in params(t).items())  # the bad step applied nothing


def test_resume_never_unpickles_code(small_ckpt: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(config(small_ckpt, train_file, out)).run(until=2)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    (out / "checkpoints" / "step-00000002" / "state.pt").write_bytes(pickle.dumps({"step": 2, "x": Evil()}))
    with pytest.raises(CheckpointError, match="damaged"):
        Trainer(config(small_ckpt, train_file, out)).run()
    assert not marker.exists()


def test_damaged_checkpoint_falls_back_to_the_previous_one(small_ckpt: Path, train_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    straight = Trainer(config(small_ckpt, train_file, tmp_path / "a"))
    straight.run()
    out = tmp_path / "b"
    Trainer(config(small_ckpt, train_file, out)).run(until=4)  # checkpoints at 2 and 4, then "killed"
    (out / "checkpoints" / "step-00000004" / "state.pt").write_bytes(b"\x80\x02garbage")
    with (out / "train_log.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 0.')  # a line cut by a crash
    capsys.readouterr()
    t = Trainer(config(small_ckpt, train_file, out))
    t.run()
    err = capsys.readouterr().err
    assert "checkpoint step-00000004 is damaged" in err and "from checkpoint step-00000002" in err
    a, b = params(straight), params(t)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    steps = [json.loads(ln)["step"] for ln in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_damaged_weights_fall_back_too(small_ckpt: Path, train_file: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    Trainer(config(small_ckpt, train_file, out)).run(until=4)
    w = out / "checkpoints" / "step-00000004" / "model" / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    Trainer(config(small_ckpt, train_file, out)).run()
    assert "step-00000004 is damaged" in capsys.readouterr().err


def test_stale_temp_folders_are_removed_at_start(small_ckpt: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = (f"import os, sys; sys.path.insert(0, {str(Path(__file__).parents[2] / 'src')!r})\n"
            "from qwen_embed.train.checkpoints import CheckpointStore\n"
            "from pathlib import Path\n"
            f"s = CheckpointStore(Path({str(out / 'checkpoints')!r}))\n"
            "def killed(folder):\n"
            "    (folder / 'model').mkdir(); (folder / 'model' / 'big.bin').write_bytes(b'0' * 1000)\n"
            "    os.kill(os.getpid(), 9)\n"
            "s.save(2, killed, {})\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    leftovers = [p.name for p in (out / "checkpoints").iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".step-00000002.tmp-")
    legacy = out / "checkpoints" / ".step-00000004.ab_cd123"  # tempfile.mkdtemp name of older versions
    legacy.mkdir()
    Trainer(config(small_ckpt, train_file, out)).run(until=2)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]


def test_messages_and_elapsed_across_resume(small_ckpt: Path, train_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    data = write_jsonl(tmp_path / "rows.jsonl", make_rows(32))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(config(small_ckpt, data, out).to_dict()))
    Trainer(config(small_ckpt, data, out)).run(until=2)
    capsys.readouterr()
    assert main(["train", "embed", "--config", str(cfg)]) == 0
    assert "resuming" in capsys.readouterr().err
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    elapsed = [r["elapsed_s"] for r in log]
    assert elapsed == sorted(elapsed) and elapsed[2] >= elapsed[1]  # since the start, not since the resume
    assert main(["train", "embed", "--config", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "already finished its 4 steps" in err and "train.max_steps=8" in err
