"""checkpoint.Checkpoint: one loading path for both models; the reranker's head from the weights file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen_embed import Embedder, Reranker
from qwen_embed.checkpoint import Checkpoint
from qwen_embed.errors import ConfigError


def test_embedding_checkpoint_facts(small_embedding_path: Path) -> None:
    ckpt = Checkpoint.load(small_embedding_path, "cpu", want_head=False)
    raw = json.loads((small_embedding_path / "config.json").read_text())
    assert ckpt.path == small_embedding_path.resolve() or ckpt.path == small_embedding_path
    assert ckpt.name == str(small_embedding_path)  # as given
    assert ckpt.config.hidden_size == raw["hidden_size"] and ckpt.config.num_hidden_layers == raw["num_hidden_layers"]
    assert ckpt.head is None and ckpt.yes_no_ids is None
    assert ckpt.device == torch.device("cpu") and ckpt.dtype == torch.float32
    weights = load_file(str(small_embedding_path / "model.safetensors"))
    torch.testing.assert_close(ckpt.model.embed_tokens.weight, weights["embed_tokens.weight"])


def test_an_embedding_checkpoint_is_no_reranker(small_embedding_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is an embedding checkpoint .* Use Embedder for this one"):
        Checkpoint.load(small_embedding_path, "cpu", want_head=True)


def test_reranker_head_is_yes_minus_no_of_the_tied_embedding(small_reranker_path: Path) -> None:
    ckpt = Checkpoint.load(small_reranker_path, "cpu")
    assert ckpt.yes_no_ids is not None and ckpt.head is not None
    yes, no = ckpt.yes_no_ids
    assert (yes, no) == (ckpt.tokenizer.single_token_id("yes"), ckpt.tokenizer.single_token_id("no"))
    weights = load_file(str(small_reranker_path / "model.safetensors"))
    table = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    torch.testing.assert_close(ckpt.head, (table[yes] - table[no]).float())
    trunk = Checkpoint.load(small_reranker_path, "cpu", want_head=False)  # an embedder may use the trunk
    assert trunk.head is None and trunk.yes_no_ids is None


def test_models_expose_the_checkpoint_facts(small_embedder: Embedder, small_reranker: Reranker) -> None:
    for model in (small_embedder, small_reranker):
        ck = model.checkpoint
        assert (model.config, model.tokenizer, model.device, model.dtype, model.name) == (
            ck.config, ck.tokenizer, ck.device, ck.dtype, ck.name)
        assert model.hidden_size == ck.config.hidden_size
