"""The trainable reranker (`train/rerank_model.py`) against transformers on the same tiny checkpoints.

References: the checkpoint's safetensors file (keys and tensors of `state_dict()`), transformers'
`Qwen3ForCausalLM` / `Qwen3ForSequenceClassification` loaded from the same folder (the last-token hidden
state after the final norm, the yes - no logit difference at the last position, the gradient of every
parameter by its transformers name, tied embeddings shared as transformers ties them), and transformers'
`Qwen3Model` for the reranker started from an embedder. Refusals of broken heads are one-line errors that
give the tensor, its shape, the shape wanted and the fix.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_embed.batching import pack
from qwen_embed.errors import ConfigError, QwenEmbedError
from qwen_embed.train.rerank_model import RerankModel, load_rerank_model, read_head, reranker_from_embedding
from tests.conftest import TinyCheckpoint

from .conftest import assert_same_grads

CPU = torch.device("cpu")
# token-id inputs of mixed lengths (within the small tokenizer's vocabulary); no template needed here
SEQUENCES = [[5, 17, 42, 99, 3, 250, 7], [11, 600, 12], [300, 301, 302, 303, 304, 305, 306, 307, 308, 9, 1]]
LAYOUTS = ["tied", "untied", "seq-cls"]


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: TinyCheckpoint) -> dict[str, Path]:
    """One small-tokenizer checkpoint per head layout; a wider init spread so that the logits differ."""
    return {"tied": tiny_checkpoint("reranker", tokenizer="small", std=0.08),
            "untied": tiny_checkpoint("reranker", tokenizer="small", std=0.08, tie_word_embeddings=False),
            "seq-cls": tiny_checkpoint("seq-cls", tokenizer="small", std=0.08)}


@functools.lru_cache(maxsize=8)
def transformers_model(path: Path) -> Any:
    """transformers' own model of the folder, float32, eval mode (its config names the architecture)."""
    import json

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    arch = json.loads((path / "config.json").read_text())["architectures"][0]
    auto = AutoModelForSequenceClassification if arch == "Qwen3ForSequenceClassification" else AutoModelForCausalLM
    return auto.from_pretrained(str(path), dtype=torch.float32).eval()


def transformers_yes_no(path: Path) -> tuple[int, int]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    return tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")


def transformers_outputs(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(last-token hidden states [n, H] after the final norm, the reranker logit [n]: logit(yes) - logit(no)
    of a causal LM's last position, or a converted seq-cls model's one label), one sequence at a time."""
    hf = transformers_model(path)
    yes, no = transformers_yes_no(path)
    hidden, logit = [], []
    with torch.no_grad():
        for s in SEQUENCES:
            ids = torch.tensor([s])
            hidden.append(hf.model(ids).last_hidden_state[0, -1])
            logit.append(reranker_logit(hf(ids).logits, yes, no))
    return torch.stack(hidden), torch.stack(logit)


def reranker_logit(logits: torch.Tensor, yes: int, no: int) -> torch.Tensor:
    """A seq-cls model's one label logit ([1, 1]), or a causal LM's yes - no at the last position ([1, T, V])."""
    if logits.dim() == 2:
        return logits[0, 0]
    return logits[0, -1, yes] - logits[0, -1, no]


def load(path: Path, dtype: torch.dtype = torch.float32) -> RerankModel:
    model, _ = load_rerank_model(str(path), CPU, dtype)
    return model


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_dict_is_the_checkpoints_keys_and_tensors(checkpoints: dict[str, Path], layout: str) -> None:
    """state_dict() holds exactly the file's tensors under the file's names, so checkpoints and exports of
    the trained module are the checkpoint's own layout."""
    path = checkpoints[layout]
    model = load(path)
    file = load_file(str(path / "model.safetensors"))
    state = model.state_dict()
    assert sorted(state) == sorted(file)
    for name, tensor in file.items():
        assert torch.equal(state[name], tensor), name
    assert model.layout == ("seq-cls" if layout == "seq-cls" else "causal-lm")
    assert model.tied == (layout == "tied")
    assert "lm_head.weight" in file or layout != "untied"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forward_and_margin_equal_transformers(checkpoints: dict[str, Path], layout: str) -> None:
    """forward = transformers' last hidden state at each sequence's end; h . margin_vector = its yes - no
    logit (causal LM) or its one label logit (seq-cls); sigmoid of that is the two-way yes softmax."""
    path = checkpoints[layout]
    model = load(path)
    assert (model.yes_id, model.no_id) == transformers_yes_no(path)
    batch = pack(SEQUENCES)
    with torch.no_grad():
        h = model(batch)
        margin = h @ model.margin_vector()
    ref_h, ref_logit = transformers_outputs(path)
    assert h.dtype == torch.float32 and h.shape == (len(SEQUENCES), 64)
    torch.testing.assert_close(h, ref_h, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(margin, ref_logit, atol=2e-5, rtol=1e-5)
    assert float(ref_logit.std()) > 1e-2  # the logits differ: the comparison means something
    if layout != "seq-cls":
        logits = transformers_model(path)(torch.tensor([SEQUENCES[0]])).logits[0, -1].detach()
        two_way = torch.softmax(torch.stack([logits[model.no_id], logits[model.yes_id]]), 0)[1]
        assert abs(float(torch.sigmoid(margin[0])) - float(two_way)) <= 1e-6


@pytest.mark.parametrize("layout", LAYOUTS)
def test_gradients_equal_transformers_by_parameter_name(checkpoints: dict[str, Path], layout: str) -> None:
    """The same scalar (sum of the reranker logits) backpropagated through both models: every parameter
    has transformers' name (so peft targets the same modules) and the same gradient; a tied head is the
    embedding matrix itself, so the head's gradient lands in the embeddings as in transformers."""
    path = checkpoints[layout]
    model = load(path)
    (model(pack(SEQUENCES)) @ model.margin_vector()).sum().backward()
    ours = {n: p.grad for n, p in model.named_parameters()}
    ref_model = transformers_model(path)
    yes, no = transformers_yes_no(path)
    ref_model.zero_grad()
    for s in SEQUENCES:
        reranker_logit(ref_model(torch.tensor([s])).logits, yes, no).backward()
    ref = {n: p.grad for n, p in ref_model.named_parameters()}
    ref_model.zero_grad()
    assert_same_grads(ours, ref)
    if layout == "tied":
        assert model.head_weight() is model.model.embed_tokens.weight
        grad = model.model.embed_tokens.weight.grad
        assert grad is not None and float(grad[[model.yes_id, model.no_id]].abs().sum()) > 0


def test_bfloat16_weights_give_float32_states_and_margin(checkpoints: dict[str, Path]) -> None:
    model = load(checkpoints["untied"], torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.head_weight() is model.lm_head.weight
    w = load_file(str(checkpoints["untied"] / "model.safetensors"))["lm_head.weight"].bfloat16().float()
    margin = model.margin_vector()
    assert margin.dtype == torch.float32 and torch.equal(margin, w[model.yes_id] - w[model.no_id])
    with torch.no_grad():
        assert model(pack(SEQUENCES)).dtype == torch.float32


def broken_copy(src: Path, dst: Path, edit: dict[str, torch.Tensor | None]) -> Path:
    """A copy of a checkpoint folder with tensors replaced (or removed, for None)."""
    shutil.copytree(src, dst)
    state = load_file(str(dst / "model.safetensors"))
    for name, tensor in edit.items():
        if tensor is None:
            del state[name]
        else:
            state[name] = tensor
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize(("layout", "name", "shape", "needles"), [
    ("untied", "lm_head.weight", None, ("lm_head.weight is missing", "Qwen3ForCausalLM")),
    ("seq-cls", "score.weight", None, ("score.weight is missing", "Qwen3ForSequenceClassification")),
    ("seq-cls", "score.weight", (2, 64), ("score.weight has shape [2, 64]", "[1, 64]")),
    ("untied", "lm_head.weight", (640, 32), ("lm_head.weight has shape [640, 32]", "[640, 64]")),
])
def test_a_broken_head_is_refused_in_one_line(checkpoints: dict[str, Path], tmp_path: Path, layout: str,
                                              name: str, shape: tuple[int, int] | None,
                                              needles: tuple[str, ...]) -> None:
    """A missing head, a two-label classifier's score or a head of another width: a one-line error naming
    the tensor and the shape wanted, never an assertion or a shape error deep in the first training step."""
    path = broken_copy(checkpoints[layout], tmp_path / "broken", {name: None if shape is None else torch.zeros(shape)})
    with pytest.raises(QwenEmbedError) as info:
        load_rerank_model(str(path), CPU, torch.float32)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    assert str(path) in message


def test_read_head_of_a_tied_checkpoint_is_none(checkpoints: dict[str, Path]) -> None:
    from qwen_embed.checkpoint import Checkpoint

    base = Checkpoint.load(checkpoints["tied"], CPU, torch.float32, want_head=False)
    assert read_head(base) is None
    untied = Checkpoint.load(checkpoints["untied"], CPU, torch.float32, want_head=False)
    head = read_head(untied)
    assert head is not None and torch.equal(head, load_file(str(checkpoints["untied"] / "model.safetensors"))[
        "lm_head.weight"])


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_reranker_from_embedding_loads_in_transformers_as_the_embedders_trunk(
        tiny_checkpoint: TinyCheckpoint, tmp_path: Path, tied: bool) -> None:
    """transformers loads the new folder as a Qwen3ForCausalLM with no missing or unexpected weight; its
    last-position yes - no logit is transformers' Qwen3Model state of the embedder times the difference of
    the embedder's "yes" and "no" embedding rows."""
    from transformers import AutoModel, AutoModelForCausalLM

    emb = tiny_checkpoint("embedding", tokenizer="small", std=0.08, tie_word_embeddings=tied)
    out = reranker_from_embedding(emb, tmp_path / "rr")
    causal, loading = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    causal.eval()
    trunk = AutoModel.from_pretrained(str(emb), dtype=torch.float32).eval()
    table = load_file(str(emb / "model.safetensors"))["embed_tokens.weight"]
    yes, no = transformers_yes_no(out)
    with torch.no_grad():
        for s in SEQUENCES:
            logits = causal(torch.tensor([s])).logits[0, -1]
            h = trunk(torch.tensor([s])).last_hidden_state[0, -1]
            assert abs(float(logits[yes] - logits[no]) - float(h @ (table[yes] - table[no]))) <= 1e-5
    assert causal.config.tie_word_embeddings == tied


def test_reranker_from_embedding_refuses_to_overwrite(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    emb = tiny_checkpoint("embedding", tokenizer="small", std=0.08, tie_word_embeddings=True)
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "notes.txt").write_text("keep me")
    with pytest.raises(QwenEmbedError):
        reranker_from_embedding(emb, tmp_path / "rr")
    assert [p.name for p in (tmp_path / "rr").iterdir()] == ["notes.txt"]


def test_embedding_checkpoint_is_not_a_reranker_start(tiny_checkpoint: TinyCheckpoint) -> None:
    with pytest.raises(ConfigError, match="reranker training starts from a Qwen3ForCausalLM"):
        load_rerank_model(str(tiny_checkpoint("embedding", tokenizer="small", std=0.08, tie_word_embeddings=True)),
                          CPU, torch.float32)
