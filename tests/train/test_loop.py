"""The training loop: exact resume, logs, evaluation, checkpoints and the final model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer, lr_lambda

from .conftest import make_rows, write_jsonl


def config(ckpt: Path, data: Path, out: Path, lora: bool = False, **train: object) -> TrainConfig:
    eval_file = write_jsonl(out.parent / f"{out.name}-eval.jsonl", make_rows(12, negatives=1))
    return TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "num_negatives": 1, "query_max_length": 32, "doc_max_length": 32,
                 "shuffle_buffer": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 3},
        "train": {"output_dir": str(out), "batch_size": 8, "chunk_tokens": 128, "max_steps": 20, "save_every": 10,
                  "log_every": 5, "progress": False, **train},
        "eval": {"file": str(eval_file), "every": 10, "k": 5},
        "lora": {"enabled": lora, "r": 4},
    })


def params(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def losses(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_equals_straight_run(small_embedding_path: Path, train_file: Path, tmp_path: Path, lora: bool) -> None:
    straight = Trainer(config(small_embedding_path, train_file, tmp_path / "a", lora))
    straight.run()
    first = Trainer(config(small_embedding_path, train_file, tmp_path / "b", lora))
    first.run(until=10)  # as if the job stopped after the step-10 checkpoint
    assert first.step == 10 and [p.name for p in first.checkpoints()] == ["step-00000010"]
    second = Trainer(config(small_embedding_path, train_file, tmp_path / "b", lora))
    summary = second.run()
    assert summary["resumed"] and second.step == 20
    a, b = params(straight), params(second)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert any(float((a[k] - params(first)[k]).abs().max()) > 1e-4 for k in a)  # steps 11..20 did move them
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # the log has every step once, same values
    assert [s for s, _ in losses(tmp_path / "a")] == [5, 10, 15, 20]


def test_outputs_log_eval_and_final_model(small_embedding_path: Path, train_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t = Trainer(config(small_embedding_path, train_file, out, max_steps=4, save_every=2, keep_checkpoints=1,
                       log_every=2))
    t.run()
    records = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [0, 4]
    assert set(evals[0]["eval"]) == {"recall@5", "mrr@5", "ndcg@5", "recall_at_5", "mrr_at_5", "ndcg_at_5"}
    train_rec = [r for r in records if "loss" in r]
    assert {"lr", "grad_norm", "tokens", "tokens_per_s", "task"} <= set(train_rec[0])
    assert [p.name for p in t.checkpoints()] == ["step-00000004"]  # older ones pruned
    assert (out / "learning_curve.png").stat().st_size > 1000
    emb = Embedder.from_pretrained(out / "model", device="cpu")
    vec = emb.encode_documents(["alpha beta gamma"])
    t.model.eval()
    with torch.no_grad():
        from qwen_embed.batching import pack

        ids = emb.tokenize(["alpha beta gamma"])
        b = pack(ids)
        h = t.model(b, output_indices=b.last_indices)
    np.testing.assert_allclose(vec, torch.nn.functional.normalize(h, dim=-1).numpy(), atol=1e-6)


def test_warmup_then_cosine() -> None:
    f = lr_lambda(4, 20, 0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and abs(f(12) - 0.55) < 1e-12 and abs(f(20) - 0.1) < 1e-12


def test_the_optimizer_is_torchs_adamw_with_decay_on_matrices_only(small_embedding_path: Path, train_file: Path,
                                                                    tmp_path: Path) -> None:
    """The trainer's optimizer (fused on the CPU) makes the update of torch's reference AdamW (its
    per-parameter loop): weight decay on matrices only, the configured lr, betas and eps; three steps, so
    that the moments count."""
    raw = config(small_embedding_path, train_file, tmp_path / "run").to_dict()
    raw["optim"].update(weight_decay=0.1, beta1=0.8, beta2=0.99, eps=1e-7)
    t = Trainer(TrainConfig.from_dict(raw))
    assert t.optimizer.defaults["fused"]
    start = [p.detach().clone() for p in t.params]
    ref_params = [torch.nn.Parameter(p.clone()) for p in start]
    ref = torch.optim.AdamW([{"params": [r for r in ref_params if r.ndim >= 2], "weight_decay": 0.1},
                             {"params": [r for r in ref_params if r.ndim < 2], "weight_decay": 0.0}],
                            lr=t.optimizer.param_groups[0]["lr"], betas=(0.8, 0.99), eps=1e-7, foreach=False)
    assert [g["initial_lr"] for g in t.optimizer.param_groups] == [raw["optim"]["lr"]] * 2  # the warm-up scales it
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, r in zip(t.params, ref_params, strict=True):
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
            r.grad = p.grad.clone()
        t.optimizer.step()
        ref.step()
    gap = max(float((p.detach() - r.detach()).abs().max()) for p, r in zip(t.params, ref_params, strict=True))
    assert gap <= 1e-6, gap
    assert min(float((p.detach() - s).abs().max()) for p, s in zip(t.params, start, strict=True)) > 1e-4


def lrs(out: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_a_run_continued_with_more_steps_follows_the_new_schedule(small_embedding_path: Path, train_file: Path,
                                                                  tmp_path: Path) -> None:
    """Raising train.max_steps of a finished run (the documented way to continue it) trains on with the new
    schedule's lr from the next step, as a straight run of the new length does; not with the lr its old
    schedule ended at (0.0 for a cosine to min_lr_ratio 0)."""
    def run(out: Path, max_steps: int) -> dict[str, object]:
        raw = config(small_embedding_path, train_file, out, max_steps=max_steps, log_every=1, save_every=3).to_dict()
        raw["optim"]["warmup_steps"] = 1
        return Trainer(TrainConfig.from_dict(raw)).run()

    run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    assert lrs(tmp_path / "b")[3] > 0 and lr_lambda(1, 3, 0.0)(3) == 0.0  # the old schedule ends at 0 after it
    assert run(tmp_path / "b", 6)["resumed"]
    straight, steps = lrs(tmp_path / "a"), lrs(tmp_path / "b")
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    assert [steps[s] for s in (4, 5, 6)] == [straight[s] for s in (4, 5, 6)]
    assert min(straight[s] for s in (4, 5)) > 0
