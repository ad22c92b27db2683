"""Data parallel: 2 gloo processes give the loss and gradients of 1 process on the same global batch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qwen_embed.train import distributed as D
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer
from tests.ports import free_port

from .conftest import run_ranks


def config(ckpt: Path, data: Path, out: Path) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "num_negatives": 1, "query_max_length": 32, "doc_max_length": 32},
        "train": {"output_dir": str(out), "batch_size": 8, "chunk_tokens": 64, "max_steps": 1, "progress": False},
    })


def first_step(trainer: Trainer) -> tuple[float, dict[str, torch.Tensor]]:
    batch = next(iter(trainer.batches()))
    loss = trainer.compute_gradients(batch)
    return loss, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _worker(rank: int, world: int, port: int, ckpt: str, data: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init("cpu")
    try:
        trainer = Trainer(config(Path(ckpt), Path(data), Path(out) / "run"), info)
        loss, grads = first_step(trainer)
        torch.save({"loss": loss, "grads": grads, "rows": trainer.batches().__next__().offset},
                   Path(out) / f"rank{rank}.pt")
    finally:
        D.shutdown(info)


@pytest.mark.slow
def test_two_gloo_processes_equal_one(small_embedding_path: Path, train_file: Path, tmp_path: Path) -> None:
    run_ranks(_worker, 2, 2, free_port(), str(small_embedding_path), str(train_file), str(tmp_path))
    single = Trainer(config(small_embedding_path, train_file, tmp_path / "single"), D.DistInfo())
    loss1, grads1 = first_step(single)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["rows"] for r in results] == [0, 4]  # each rank holds its slice; labels offset by 4
    for r in results:
        assert abs(r["loss"] - loss1) <= 1e-6 * abs(loss1)
        assert r["grads"].keys() == grads1.keys()
        for k, g in grads1.items():
            rel = float((r["grads"][k] - g).norm() / g.norm().clamp_min(1e-30))
            assert rel <= 1e-5, f"{k}: relative difference {rel:.2e}"
