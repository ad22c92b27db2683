"""The trainable reranker: the inference trunk under `model.` plus its head, named as transformers names them.

`RerankModel` holds the `Qwen3Model` trunk as `model` and the head as `lm_head` (a causal LM with
untied embeddings), nothing (tied: the head is `model.embed_tokens.weight`) or `score` (a converted
`Qwen3ForSequenceClassification`, one row: W[yes] - W[no]). So `state_dict()` has exactly the keys of
the checkpoint it came from and peft's module names equal those of a PeftModel around transformers'
`Qwen3ForCausalLM`. `forward` returns the last-token hidden states [n, H] in float32; the losses read
the head (`head_weight`) themselves, so that no logits are computed for other positions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from ..batching import PackedBatch
from ..checkpoint import Checkpoint
from ..errors import ConfigError, WeightsError
from ..model import Qwen3Model
from ..weights import safetensors_files


class RerankModel(nn.Module):
    """Trunk + yes/no head of a Qwen3 reranker (causal LM or seq-cls)."""

    def __init__(self, trunk: Qwen3Model, layout: str, head: torch.Tensor | None, yes_no: tuple[int, int]) -> None:
        super().__init__()
        self.model = trunk
        self.layout = layout
        self.yes_id, self.no_id = yes_no
        if layout == "seq-cls":
            assert head is not None and head.shape[0] == 1
            self.score = nn.Linear(head.shape[1], 1, bias=False, device=head.device, dtype=head.dtype)
            self.score.weight = nn.Parameter(head)
        elif head is not None:
            self.lm_head = nn.Linear(head.shape[1], head.shape[0], bias=False, device=head.device, dtype=head.dtype)
            self.lm_head.weight = nn.Parameter(head)

    @property
    def tied(self) -> bool:
        return self.layout == "causal-lm" and not hasattr(self, "lm_head")

    def head_weight(self) -> torch.Tensor:
        """[V, H] output embeddings of a causal LM, or [1, H] score row of a seq-cls model."""
        if self.layout == "seq-cls":
            return self.score.weight
        return self.model.embed_tokens.weight if self.tied else self.lm_head.weight

    def margin_vector(self) -> torch.Tensor:
        """[H] float32: W[yes] - W[no] (logit(yes) - logit(no) = h . this vector)."""
        w = self.head_weight().float()
        return w[0] if self.layout == "seq-cls" else w[self.yes_id] - w[self.no_id]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        """Last-token hidden states [n, H], float32 (after the final norm)."""
        return self.model(batch, output_indices=batch.last_indices).float()


def read_head(base: Checkpoint) -> torch.Tensor | None:
    """The head tensor of a reranker checkpoint (lm_head [V, H], score [1, H]; None when tied), its shape checked."""
    cfg = base.config
    name = "score.weight" if cfg.kind == "seq-cls" else "lm_head.weight"
    for f in safetensors_files(base.path):
        with safe_open(str(f), framework="pt", device="cpu") as h:
            if name in h.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                return _check_head_shape(base, name, h.get_tensor(name))
    if name == "lm_head.weight" and cfg.tie_word_embeddings:
        return None
    raise ConfigError(f"{base.path}: {name} is missing from the weights of this {cfg.architecture}.")


def _check_head_shape(base: Checkpoint, name: str, head: torch.Tensor) -> torch.Tensor:
    """`head` when it has the shape the config implies: [1, H] for a converted seq-cls reranker (the yes - no
    row), [vocab_size, H] for a causal LM's lm_head."""
    cfg = base.config
    want = [1, cfg.hidden_size] if name == "score.weight" else [cfg.vocab_size, cfg.hidden_size]
    if list(head.shape) != want:
        why = ("a converted Qwen3 reranker has one row, W[yes] - W[no]; a classifier of more labels is not one"
               if name == "score.weight" else "the config's vocab_size and hidden_size imply it; the checkpoint "
               "is broken or its config.json is another model's")
        raise WeightsError(f"{base.path}: {name} has shape {list(head.shape)}, not {want}: {why}. Start from a "
                           "Qwen3-Reranker, a base/instruct Qwen3ForCausalLM or a converted "
                           "Qwen3ForSequenceClassification (score = W[yes] - W[no]).")
    return head


def load_rerank_model(path: str, device: torch.device, dtype: torch.dtype) -> tuple[RerankModel, Checkpoint]:
    """Load a causal-LM or seq-cls reranker checkpoint for training (yes/no must be single tokens)."""
    from ..config import ModelConfig
    from ..tokenizer import QwenTokenizer
    from ..weights import resolve_model_dir

    folder = resolve_model_dir(path)
    config = ModelConfig.from_file(folder / "config.json")
    if config.kind not in ("causal-lm", "seq-cls"):
        raise ConfigError(f"{path} is a {config.architecture} checkpoint; reranker training starts from a "
                          "Qwen3ForCausalLM (a Qwen3-Reranker or a base/instruct model) or a converted "
                          "Qwen3ForSequenceClassification; set model.path to one.")
    tok = QwenTokenizer.from_dir(folder)
    yes_no = (tok.single_token_id("yes"), tok.single_token_id("no"))
    base = Checkpoint.load(path, device, dtype, want_head=False)
    head = read_head(base)
    model = RerankModel(base.model, config.kind, None if head is None else head.to(device, dtype), yes_no)
    return model, base


def reranker_from_embedding(embedding_dir: str | Path, out_dir: str | Path) -> Path:
    """A causal-LM reranker checkpoint whose trunk is an embedding model's, the head tied to its embeddings.

    The stand-in for "start the reranker from a pre-trained LM" where there is none: a cross encoder of a
    few million parameters trained from random weights learns nothing in a few hundred steps (the loss
    stays at the label prior's entropy), while one that starts from a trained embedder's trunk does. The
    trunk keys gain the `model.` prefix and config.json becomes the embedder's with `Qwen3ForCausalLM`; the
    head is the token embeddings (tied, or an `lm_head.weight` copy of them when the config does not tie),
    so the yes/no rows start as the embeddings of "yes" and "no"."""
    from safetensors.torch import load_file

    from ..config import ModelConfig
    from .export import write_checkpoint

    src = Path(embedding_dir)
    config = ModelConfig.from_file(src / "config.json")
    if config.kind != "embedding":
        raise ConfigError(f"{src} is a {config.architecture} checkpoint; a reranker is started from an embedding "
                          "model (Qwen3Model) here; name one.")
    state = {f"model.{k}": v for f in safetensors_files(src) for k, v in load_file(str(f)).items()}
    if not config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    return write_checkpoint(state, src, out_dir, "causal-lm")
