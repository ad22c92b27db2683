"""LoRA: adapters in PEFT format, the merged checkpoint equals base + adapter, transformers loads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder
from qwen_embed.checkpoint import Checkpoint
from qwen_embed.cli import main
from qwen_embed.engine import Engine
from qwen_embed.train.config import TrainConfig
from qwen_embed.train.loop import Trainer
from qwen_embed.train.lora import load_adapter

TEXTS = ["alpha beta gamma", "what is delta 3", "omega is the answer number 7 omega psi chi"]


@pytest.fixture(scope="module")
def lora_run(small_embedding_path: Path, train_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    cfg = TrainConfig.from_dict({
        "model": {"path": str(small_embedding_path), "device": "cpu"},
        "data": {"train_files": [str(train_file)], "num_negatives": 1, "query_max_length": 32, "doc_max_length": 32},
        "optim": {"lr": 5e-3, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": 8, "max_steps": 4, "save_every": 0, "progress": False},
        "lora": {"enabled": True, "r": 4, "alpha": 8},
    })
    t = Trainer(cfg)
    n_train = sum(p.numel() for p in t.params)
    assert 0 < n_train < sum(p.numel() for p in t.model.parameters()) // 5  # only the adapters train
    t.run()
    return out


def base_plus_adapter(base: Path, adapter: Path) -> np.ndarray:
    ck = Checkpoint.load(base, "cpu", "float32", want_head=False)
    model = load_adapter(ck.model, adapter)
    model.eval()
    h = Engine(model, torch.device("cpu")).last_hidden(ck.tokenizer.encode_for_embedding(TEXTS, 64))
    return torch.nn.functional.normalize(h, dim=-1).numpy()


def test_adapter_is_peft_format(lora_run: Path) -> None:
    cfg = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"])
    from safetensors import safe_open

    with safe_open(str(lora_run / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
        assert any(float(f.get_tensor(k).abs().max()) > 0 for k in keys if "lora_B" in k)  # it trained


def test_merged_equals_base_plus_adapter(lora_run: Path, small_embedding_path: Path, tmp_path: Path) -> None:
    want = base_plus_adapter(small_embedding_path, lora_run / "adapter")
    plain = Embedder.from_pretrained(small_embedding_path, device="cpu").encode_documents(TEXTS)
    assert np.abs(want - plain).max() > 1e-4  # the adapter changes the embeddings
    merged_at_end = Embedder.from_pretrained(lora_run / "model", device="cpu").encode_documents(TEXTS)
    np.testing.assert_allclose(merged_at_end, want, atol=2e-6)
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(lora_run / "adapter"),
                 "-o", str(tmp_path / "merged")]) == 0
    merged = Embedder.from_pretrained(tmp_path / "merged", device="cpu").encode_documents(TEXTS)
    np.testing.assert_allclose(merged, want, atol=2e-6)


def test_transformers_and_peft_load_it(lora_run: Path, small_embedding_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from peft import PeftModel

    emb = Embedder.from_pretrained(lora_run / "model", device="cpu")
    ids = emb.tokenize(TEXTS)
    ours = emb.encode_documents(TEXTS)

    def last_states(model: torch.nn.Module) -> np.ndarray:
        rows = []
        with torch.no_grad():
            for seq in ids:
                h = model(input_ids=torch.tensor([seq])).last_hidden_state[0, -1]
                rows.append(torch.nn.functional.normalize(h, dim=-1).numpy())
        return np.stack(rows)

    hf = transformers.AutoModel.from_pretrained(lora_run / "model", dtype=torch.float32).eval()
    np.testing.assert_allclose(last_states(hf), ours, atol=1e-5)
    base = transformers.AutoModel.from_pretrained(small_embedding_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, lora_run / "adapter").eval()
    np.testing.assert_allclose(last_states(peft_model), ours, atol=1e-5)


def test_merge_lora_errors_are_one_line(small_embedding_path: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(tmp_path), "-o",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a PEFT adapter folder" in err and len(err.splitlines()) == 1


def test_merge_lora_never_deletes_the_run_folder(lora_run: Path, small_embedding_path: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.1: `-o runs/x` (the run folder holding the adapter) and `-o .` lost user files."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    # refused without --overwrite, and nothing changes
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(run / "adapter"), "-o",
                 str(run)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    # with --overwrite: the merged model's files are added, every other file is kept
    adapter_bytes = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(run / "adapter"), "-o", str(run),
                 "--overwrite"]) == 0
    after = {str(p.relative_to(run)) for p in run.rglob("*")}
    assert set(before) <= after and {"config.json", "model.safetensors"} <= after
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter_bytes
    Embedder.from_pretrained(run, device="cpu").encode_documents(TEXTS)
    # `-o .` in a folder with user files: refused, nothing deleted, no temporary left behind
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(run / "adapter"), "-o", "."]) == 2
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    assert main(["merge-lora", "--base", str(small_embedding_path), "--adapter", str(run / "adapter"), "-o", ".",
                 "--overwrite"]) == 0
    assert (work / "notes.txt").read_text() == "mine" and (work / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_embedder_applies_an_adapter_without_merging(lora_run: Path, small_ckpt: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 11.11 and 11.8: `adapter=PATH`, and an adapter folder given as the model, load base + adapter."""
    merged = Embedder.from_pretrained(lora_run / "model", device="cpu").encode_documents(TEXTS)  # peft's merge
    on_top = Embedder.from_pretrained(small_ckpt, device="cpu", adapter=lora_run / "adapter")
    np.testing.assert_allclose(on_top.encode_documents(TEXTS), merged, atol=2e-6)
    assert any("lora_A" in name for name, _ in on_top.checkpoint.model.named_parameters())  # not merged
    by_folder = Embedder.from_pretrained(lora_run / "adapter", device="cpu")  # the recorded base is small_ckpt
    np.testing.assert_allclose(by_folder.encode_documents(TEXTS), merged, atol=2e-6)
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS) + "\n")
    assert main(["embed", str(src), "--model", str(small_ckpt), "--adapter", str(lora_run / "adapter"),
                 "-o", str(tmp_path / "v.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), merged, atol=2e-6)


def test_an_adapter_where_a_checkpoint_is_needed_points_to_merge_lora(lora_run: Path, small_ckpt: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(lora_run / "adapter")]) == 2
    err = capsys.readouterr().err
    assert "is a LoRA adapter" in err and f"its base is {small_ckpt}" in err and "qwen-embed merge-lora" in err
    assert "config.json does not exist" not in err and len(err.strip().splitlines()) == 1


def test_merge_lora_warns_when_the_base_differs_from_the_adapters(lora_run: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.tiny import make_checkpoint, train_small_tokenizer

    tok = train_small_tokenizer(512)
    tok.save(str(tmp_path / "tokenizer.json"))
    other = make_checkpoint(tmp_path / "other", "embedding", tokenizer=str(tmp_path / "tokenizer.json"))
    assert main(["merge-lora", "--base", str(other), "--adapter", str(lora_run / "adapter"),
                 "-o", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert "warning: the adapter was trained on" in err and "vocab_size" in err
