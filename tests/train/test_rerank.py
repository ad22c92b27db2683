"""Reranker training: losses against transformers, scoring equals Reranker, exact resume, LoRA merge, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Reranker
from qwen_embed.batching import pack
from qwen_embed.cli import main
from qwen_embed.tiny import make_checkpoint
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer

from .conftest import make_rows, write_jsonl

QUERY = "what is alpha 3"
DOCS = ["alpha beta is the answer number 3 alpha beta gamma delta", "gamma delta unrelated 3 0", "omega psi"]


@pytest.fixture(scope="module")
def rr_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny causal-LM reranker (untied head) with the small tokenizer."""
    return make_checkpoint(tmp_path_factory.mktemp("rr") / "tiny-rr", "reranker", tokenizer="small",
                           tie_word_embeddings=False)


@pytest.fixture(scope="module")
def rr_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("rr-data") / "train.jsonl", make_rows(48, negatives=3))


def config(ckpt: Path, data: Path, out: Path, *, loss: str = "sft", lora: bool = False, **train: object) -> TrainConfig:
    eval_file = write_jsonl(out.parent / f"{out.name}-eval.jsonl", make_rows(6, negatives=3))
    return TrainConfig.from_dict({
        "model": {"path": str(ckpt), "device": "cpu"},
        "data": {"train_files": [str(data)], "shuffle_buffer": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 3},
        "train": {"output_dir": str(out), "batch_size": 4, "chunk_tokens": 700, "max_steps": 20, "save_every": 10,
                  "log_every": 5, "progress": False, **train},
        "eval": {"file": str(eval_file), "every": 10, "k": 10},
        "lora": {"enabled": lora, "r": 4, "alpha": 8},
        "rerank": {"loss": loss, "negatives_per_positive": 2, "max_length": 160},
    })


def reference_losses(ckpt: Path, seqs: list[list[int]], labels: list[int], sizes: list[int],
                     yes: int, no: int) -> dict[str, float]:
    """The three losses from transformers' Qwen3ForCausalLM full-vocabulary logits, one sequence at a time."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    with torch.no_grad():
        last = torch.stack([model(torch.tensor([s])).logits[0, -1].double() for s in seqs])  # [n, V]
    logp = last.log_softmax(-1)
    target = torch.tensor([yes if lab else no for lab in labels])
    sft = -logp[torch.arange(len(seqs)), target].sum()
    s = last[:, yes] - last[:, no]
    y = torch.tensor(labels, dtype=torch.float64)
    bce = -(y * torch.log(torch.sigmoid(s)) + (1 - y) * torch.log(1 - torch.sigmoid(s))).sum()
    listwise = sum(-(g.log_softmax(0)[0]) for g in s.split(sizes))
    return {"sft": float(sft), "bce": float(bce), "listwise": float(listwise)}


@pytest.mark.parametrize("loss", ["sft", "bce", "listwise"])
def test_losses_equal_transformers(rr_ckpt: Path, rr_rows: Path, tmp_path: Path, loss: str) -> None:
    t = Trainer(config(rr_ckpt, rr_rows, tmp_path / "run", loss=loss), kind="rerank")
    batch = next(iter(t.batches()))
    assert set(batch.labels.tolist()) == {0, 1} and len(batch.group_sizes) == 4  # mixed labels, 4 groups
    m = t.model
    with torch.no_grad():
        h = m(pack(batch.sequences))
        ours = float(t.objective.chunk_loss(h, batch.labels, batch.group_sizes))
    ref = reference_losses(rr_ckpt, batch.sequences, batch.labels.tolist(), batch.group_sizes, m.yes_id, m.no_id)
    assert abs(ours - ref[loss]) <= 1e-5 * max(1.0, abs(ref[loss]))
    # the step's loss is the mean over examples (groups for listwise)
    t.model.zero_grad()
    mean = t.compute_gradients(batch)
    assert abs(mean - ref[loss] / batch.count) <= 1e-5


def test_trained_reranker_scores_as_the_trainer_evaluated(rr_ckpt: Path, rr_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t = Trainer(config(rr_ckpt, rr_rows, out, loss="bce", max_steps=4, save_every=0, log_every=2), kind="rerank")
    t.run()
    ours = t.objective.score(QUERY, DOCS)
    rr = Reranker.from_pretrained(out / "model", device="cpu", max_length=160)
    np.testing.assert_allclose(rr.score(QUERY, DOCS), ours, atol=1e-5)
    ids = rr.build_input_ids(QUERY, DOCS)
    assert ids == t.objective.inputs.build(QUERY, DOCS)
    records = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval" in r]
    assert [r["step"] for r in evals] == [0, 4] and set(evals[0]["eval"]) == {"ndcg_at_10", "mrr_at_10"}
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([ids[0]])).logits[0, -1]
    p = torch.sigmoid(logits[t.model.yes_id] - logits[t.model.no_id])
    assert abs(float(p) - float(ours[0])) <= 1e-5
    assert (out / "learning_curve.png").is_file()


def params(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_resume_equals_straight_run(rr_ckpt: Path, rr_rows: Path, tmp_path: Path, lora: bool,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    straight = Trainer(config(rr_ckpt, rr_rows, tmp_path / "a", lora=lora), kind="rerank")
    straight.run()
    first = Trainer(config(rr_ckpt, rr_rows, tmp_path / "b", lora=lora), kind="rerank")
    first.run(until=10)
    second = Trainer(config(rr_ckpt, rr_rows, tmp_path / "b", lora=lora), kind="rerank")
    capsys.readouterr()
    assert second.run()["resumed"] and second.step == 20
    assert "from checkpoint step-00000010 (step 10 of 20)" in capsys.readouterr().err
    a, b = params(straight), params(second)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert any(float((a[k] - params(first)[k]).abs().max()) > 1e-4 for k in a)


def test_lora_merge_equals_base_plus_adapter(rr_ckpt: Path, rr_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    t = Trainer(config(rr_ckpt, rr_rows, out, lora=True, max_steps=3, save_every=0, **{"log_every": 1}), kind="rerank")
    t.run()
    adapted = t.objective.score(QUERY, DOCS)  # base + adapter layers, not merged
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM"
    from safetensors import safe_open

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in list(f.keys())
    assert main(["merge-lora", "--base", str(rr_ckpt), "--adapter", str(out / "adapter"), "-o",
                 str(tmp_path / "merged")]) == 0
    merged = Reranker.from_pretrained(tmp_path / "merged", device="cpu", max_length=160)
    np.testing.assert_allclose(merged.score(QUERY, DOCS), adapted, atol=1e-5)
    base = Reranker.from_pretrained(rr_ckpt, device="cpu", max_length=160)
    assert float(np.abs(base.score(QUERY, DOCS) - adapted).max()) > 1e-4  # the adapter did change it


def test_seq_cls_checkpoint_trains_and_keeps_its_layout(tmp_path: Path, rr_rows: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "seqcls", "seq-cls", tokenizer="small")
    out = tmp_path / "run"
    t = Trainer(config(ckpt, rr_rows, out, loss="listwise", max_steps=2, save_every=0), kind="rerank")
    t.run()
    assert json.loads((out / "model" / "config.json").read_text())["architectures"] == [
        "Qwen3ForSequenceClassification"]
    rr = Reranker.from_pretrained(out / "model", device="cpu", max_length=160)
    np.testing.assert_allclose(rr.score(QUERY, DOCS), t.objective.score(QUERY, DOCS), atol=1e-5)


def yes_split_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from qwen_embed.tiny import SPECIAL_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(["abc abd"], trainers.BpeTrainer(vocab_size=len(alphabet) + len(SPECIAL_TOKENS) + 2,
                                                              special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet,
                                                              show_progress=False))
    tok.save(str(path))
    return path


@pytest.mark.parametrize("case", ["no-positive", "label-2", "embedding-ckpt", "yes-split", "listwise-pointwise"])
def test_bad_input_is_one_line_and_writes_nothing(case: str, rr_ckpt: Path, tiny_embedding_path: Path,
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows: list[dict[str, object]] = [{"query": "q", "positive": "p", "negatives": ["n"]}] * 8
    ckpt, loss = rr_ckpt, "sft"
    if case == "no-positive":
        rows = [*rows, {"query": "q", "negatives": ["n"]}]
    elif case == "label-2":
        rows = [*rows, {"query": "q", "document": "d", "label": 2}]
    elif case == "embedding-ckpt":
        ckpt = tiny_embedding_path
    elif case == "yes-split":
        ckpt = make_checkpoint(tmp_path / "split", "reranker", tokenizer=str(yes_split_tokenizer(tmp_path / "t.json")))
    else:
        rows, loss = [{"query": "q", "document": "d", "label": 1}] * 8, "listwise"
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": {"path": str(ckpt), "device": "cpu"},
                               "data": {"train_files": [str(data)]},
                               "train": {"output_dir": str(tmp_path / "out"), "batch_size": 4, "max_steps": 2},
                               "rerank": {"loss": loss}}))
    assert main(["train", "rerank", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err, err
    assert not (tmp_path / "out").exists()
    expected = {"no-positive": "needs 'positive'", "label-2": "'label' must be 0 or 1", "embedding-ckpt": "Qwen3Model",
                "yes-split": "'yes' encodes to", "listwise-pointwise": "listwise needs"}[case]
    assert expected in err


def _dp_worker(rank: int, world: int, port: int, ckpt: str, data: str, out: str) -> None:
    import os

    from qwen_embed.train import distributed as D

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = D.init("cpu")
    try:
        t = Trainer(config(Path(ckpt), Path(data), Path(out) / "run", loss="listwise"), info, kind="rerank")
        batch = next(iter(t.batches()))
        loss = t.compute_gradients(batch)
        grads = {n: p.grad.clone() for n, p in t.model.named_parameters() if p.grad is not None}
        torch.save({"loss": loss, "grads": grads, "offset": batch.offset}, Path(out) / f"rank{rank}.pt")
    finally:
        D.shutdown(info)


def test_two_gloo_processes_equal_one(rr_ckpt: Path, rr_rows: Path, tmp_path: Path) -> None:
    from qwen_embed.train import distributed as D
    from tests.ports import free_port

    from .conftest import run_ranks

    run_ranks(_dp_worker, 2, 2, free_port(), str(rr_ckpt), str(rr_rows), str(tmp_path))
    single = Trainer(config(rr_ckpt, rr_rows, tmp_path / "single", loss="listwise"), D.DistInfo(), kind="rerank")
    batch = next(iter(single.batches()))
    loss1 = single.compute_gradients(batch)
    grads1 = {n: p.grad.clone() for n, p in single.model.named_parameters() if p.grad is not None}
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["offset"] for r in results] == [0, 2]
    for r in results:
        assert abs(r["loss"] - loss1) <= 1e-6 * abs(loss1)
        for k, g in grads1.items():
            torch.testing.assert_close(r["grads"][k], g, atol=1e-6, rtol=1e-5)
