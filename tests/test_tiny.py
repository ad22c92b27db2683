"""The checkpoint maker writes folders that transformers and qwen-embed both load."""

from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.tiny import make_checkpoint, train_small_tokenizer


def test_small_tokenizer_specials() -> None:
    tok = train_small_tokenizer()
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.token_to_id(special) is not None
    assert len(tok.encode("yes", add_special_tokens=False).ids) == 1
    assert len(tok.encode("no", add_special_tokens=False).ids) == 1


@pytest.mark.parametrize("kind", ["embedding", "reranker", "seq-cls"])
def test_transformers_loads_every_kind(kind: str, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    path = make_checkpoint(tmp_path / kind, kind, tokenizer="small")  # type: ignore[arg-type]
    cls = {"embedding": AutoModel, "reranker": AutoModelForCausalLM,
           "seq-cls": AutoModelForSequenceClassification}[kind]
    model = cls.from_pretrained(path, dtype=torch.float32)
    assert type(model).__name__ == {"embedding": "Qwen3Model", "reranker": "Qwen3ForCausalLM",
                                    "seq-cls": "Qwen3ForSequenceClassification"}[kind]
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_tokens_to_ids("<|endoftext|>") is not None


def test_embedding_matches_transformers_on_made_checkpoint(tmp_path: Path) -> None:
    from tests.reference import official_embed

    path = make_checkpoint(tmp_path / "e", "embedding", tokenizer="small", hidden_size=32, head_dim=8)
    texts = ["one", "two words", "three words here"]
    ours = Embedder.from_pretrained(path, device="cpu").encode(texts)
    assert np.abs(ours - official_embed(path, texts).numpy()).max() <= 1e-5


def test_refuses_non_empty_folder_and_bad_kind(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        make_checkpoint(tmp_path / "x")
    assert (tmp_path / "x" / "f").read_text() == "keep me"
    with pytest.raises(InputError, match="kind"):
        make_checkpoint(tmp_path / "y", "bert")  # type: ignore[arg-type]


def test_overwriting_a_sharded_checkpoint_with_one_file_leaves_one_set_of_weights(tmp_path: Path) -> None:
    """transformers reads model.safetensors before an index and qwen-embed the index first: a folder holding
    both would load different weights in each, so an overwrite replaces the weight files as a set."""
    from safetensors.torch import load_file

    out = make_checkpoint(tmp_path / "m", "embedding", tokenizer="small", shards=3, seed=1)
    (out / "notes.md").write_text("mine")
    make_checkpoint(out, "embedding", tokenizer="small", seed=2, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "notes.md",
                                                     "tokenizer.json", "tokenizer_config.json"]
    make_checkpoint(out, "embedding", tokenizer="small", shards=2, seed=3, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if "safetensors" in p.name) == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    assert len(load_file(str(out / "model-00001-of-00002.safetensors"))) > 0


@pytest.mark.parametrize(("shape", "message"), [
    ({"num_hidden_layers": 0}, "num_hidden_layers=0 is out of range"),
    ({"num_attention_heads": 3, "num_key_value_heads": 2}, "num_attention_heads=3 is not a multiple of"),
    ({"hidden_size": 0}, "hidden_size=0 is out of range"),
    ({"head_dim": 0}, "head_dim=0 is out of range"),
])
def test_a_shape_the_loader_would_refuse_is_never_written(tmp_path: Path, shape: dict[str, int], message: str) -> None:
    with pytest.raises(InputError, match=f"cannot make this shape: {message}"):
        make_checkpoint(tmp_path / "new" / "deeper" / "ckpt", "embedding", tokenizer="small", **shape)
    assert not (tmp_path / "new").exists()  # not even the parent folders
    with pytest.raises(InputError):
        make_checkpoint(tmp_path / "x", "embedding", tokenizer=str(tmp_path / "missing.json"))
    assert list(tmp_path.iterdir()) == []


def test_a_model_narrower_than_32_offers_its_full_width(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.cli import main

    path = make_checkpoint(tmp_path / "narrow", "embedding", tokenizer="small", hidden_size=24, head_dim=8)
    assert main(["info", str(path)]) == 0
    assert "24 (the full width only)" in capsys.readouterr().out
    with pytest.raises(InputError, match="dim=20 is out of range: this model supports 24; "):
        Embedder.from_pretrained(path, device="cpu").encode(["a"], dim=20)
    assert Embedder.from_pretrained(path, device="cpu").encode(["a"], dim=24).shape == (1, 24)
