"""A reranker started from an embedder's trunk (`reranker_from_embedding`, the recipe's `init: from_embedding`):
it computes the embedder's trunk and scores with the embeddings' "yes" and "no" rows, tied or untied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qwen_embed import Reranker
from qwen_embed.batching import pack
from qwen_embed.checkpoint import Checkpoint
from qwen_embed.errors import ConfigError
from qwen_embed.tiny import make_checkpoint
from qwen_embed.train.rerank_model import reranker_from_embedding


@pytest.mark.parametrize("tied", [True, False])
def test_reranker_from_embedding_scores_with_the_embedders_trunk(tmp_path: Path, tied: bool) -> None:
    emb = make_checkpoint(tmp_path / "emb", "embedding", tokenizer="small", tie_word_embeddings=tied, seed=3)
    rr = Reranker.from_pretrained(reranker_from_embedding(emb, tmp_path / "rr"), device="cpu")
    assert rr.config.architecture == "Qwen3ForCausalLM"
    query, docs = "what is a tide", ["the rise and fall of the sea", "a recipe for bread"]
    seqs = rr.build_input_ids(query, docs)
    trunk = Checkpoint.load(emb, "cpu", "float32", want_head=False).model
    batch = pack(seqs)
    with torch.no_grad():
        h = trunk(batch, output_indices=batch.last_indices).double()  # [n, H] the embedder's last-token states
    table = load_file(str(emb / "model.safetensors"))["embed_tokens.weight"].double()  # [V, H]
    tok = rr.checkpoint.tokenizer
    margin = h @ (table[tok.single_token_id("yes")] - table[tok.single_token_id("no")])
    np.testing.assert_allclose(rr.score(query, docs), torch.sigmoid(margin).numpy(), atol=1e-5)


def test_reranker_from_embedding_refuses_a_reranker(tmp_path: Path) -> None:
    rr = make_checkpoint(tmp_path / "rr", "reranker", tokenizer="small")
    with pytest.raises(ConfigError, match="a reranker is started from an embedding model"):
        reranker_from_embedding(rr, tmp_path / "out")
    assert not (tmp_path / "out").exists()
