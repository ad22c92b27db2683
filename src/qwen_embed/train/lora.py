"""LoRA through peft on the q/k/v/o/gate/up/down projections, adapters in PEFT's own format, and merging.

`add_lora` injects peft LoRA layers into our `Qwen3Model` in place (`peft.inject_adapter_in_model`),
freezing everything else. `save_adapter` writes `adapter_config.json` + `adapter_model.safetensors`
with the keys PEFT writes for a `PeftModel` around transformers' `Qwen3Model`
(`base_model.model.layers.{i}.self_attn.q_proj.lora_A.weight`; our module names equal transformers'),
so `peft.PeftModel.from_pretrained(AutoModel..., adapter_dir)` loads it too. `merge_lora` folds the
adapters into the base weights with peft's own merge (W + alpha/r * B @ A) and restores plain
`nn.Linear` modules (the trainer's in-memory merge); `merge_checkpoint`, the `qwen-embed merge-lora`
command, streams the same formula through the merge module (`train.merge.merge_adapter`).
A reranker (`rerank_model.RerankModel`: trunk under `model.`, head beside) gets the keys of a PeftModel
around transformers' `Qwen3ForCausalLM` (`base_model.model.model.layers.{i}...`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from ..errors import InputError
from ..files import atomic_file
from .config import LORA_TARGETS

PREFIX = "base_model.model."
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: list[str] | None = None,
                base_model: str | None = None, task_type: str = "FEATURE_EXTRACTION") -> Any:
    # returns a peft.LoraConfig (peft is imported lazily so that the CLI starts fast)
    """A peft LoraConfig: task FEATURE_EXTRACTION (embedding trunk), CAUSAL_LM or SEQ_CLS (rerankers)."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules or LORA_TARGETS,
                      bias="none", task_type=task_type, base_model_name_or_path=base_model)


def add_lora(model: nn.Module, config: Any) -> nn.Module:
    """Inject LoRA layers in place; only their parameters stay trainable."""
    from peft import inject_adapter_in_model

    for p in model.parameters():
        p.requires_grad_(False)
    model = inject_adapter_in_model(config, model)
    n = sum(1 for name, _ in model.named_parameters() if "lora_" in name)
    if n == 0:
        raise InputError(f"lora.target_modules={list(config.target_modules)} matched no layer; use names from "
                         f"{LORA_TARGETS}.")
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights with PEFT's saved key names."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    return {PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_adapter(model: nn.Module, config: Any, out_dir: str | Path) -> Path:
    """Write the adapter in PEFT format (adapter_config.json + adapter_model.safetensors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / ADAPTER_WEIGHTS, "wb") as f:  # a temporary sibling, renamed (or removed on failure)
        f.write(save(adapter_state(model), metadata={"format": "pt"}))
    config.save_pretrained(str(out))
    return out


def read_adapter_config(adapter_dir: str | Path) -> Any:
    """The adapter folder's peft LoraConfig (checked to be LoRA)."""
    from peft import LoraConfig

    path = Path(adapter_dir)
    if not (path / ADAPTER_CONFIG).is_file() or not (path / ADAPTER_WEIGHTS).is_file():
        raise InputError(f"{path} is not a PEFT adapter folder: it needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}.")
    raw = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    if raw.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{path}: peft_type {raw.get('peft_type')!r} is not LORA; only LoRA adapters merge.")
    return LoraConfig.from_pretrained(str(path))


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Inject the adapter's layers into a plain trunk and load its weights (strictly)."""
    from peft import set_peft_model_state_dict

    config = read_adapter_config(adapter_dir)
    model = add_lora(model, config)
    device = next(model.parameters()).device
    raw = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS), device=str(device))
    state = {k.removeprefix(PREFIX): v for k, v in raw.items()}
    result = set_peft_model_state_dict(model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise InputError(f"{adapter_dir}: adapter keys that match no layer: {unexpected[:4]}.")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA layer into its base Linear (peft's merge) and put the plain Linear back."""
    from peft.tuners.lora import LoraLayer

    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, module in targets:
        module.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def base_mismatch(base: str | os.PathLike[str], adapter_dir: str | Path) -> str | None:
    """A warning when `base` is not the base the adapter recorded and their vocabularies or shapes differ
    (config.json only, nothing loaded); None when they agree or the recorded base cannot be found."""
    from ..config import ModelConfig
    from ..errors import QwenEmbedError
    from ..files import file_digest
    from ..weights import resolve_model_dir

    try:
        raw = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        recorded = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
        if not recorded:
            return None
        ours_dir, theirs_dir = resolve_model_dir(base), resolve_model_dir(recorded)
        ours = ModelConfig.from_file(ours_dir / "config.json")
        theirs = ModelConfig.from_file(theirs_dir / "config.json")
        same_tokenizer = file_digest(ours_dir / "tokenizer.json") == file_digest(theirs_dir / "tokenizer.json")
    except (OSError, ValueError, QwenEmbedError):
        return None
    names = ("vocab_size", "hidden_size", "num_hidden_layers")
    diffs = [f"{n} {getattr(ours, n)} != {getattr(theirs, n)}" for n in names if getattr(ours, n) != getattr(theirs, n)]
    diffs += [] if same_tokenizer else ["another tokenizer.json"]
    if not diffs:
        return None
    return (f"the adapter was trained on {recorded}, and --base {base} differs from it ({', '.join(diffs)}); the "
            f"merged model will not match what was trained. Pass --base {recorded} unless this is intended.")


def merge_checkpoint(base: str | os.PathLike[str], adapter_dir: str | Path, out_dir: str | Path,
                     dtype: str | None = None, *, overwrite: bool = False) -> Path:
    """Base checkpoint + PEFT adapter -> merged checkpoint folder (`qwen-embed merge-lora`).

    The merge module's LoRA method (`train.merge.merge_adapter`): the base is streamed one tensor at a
    time and W + (alpha / r) B @ A is written for each adapted projection; the output keeps the base's
    layout (an embedding or a causal-LM reranker), config and tokenizer. out_dir is checked before any
    loading: a file, or a folder that exists and is not empty, is refused unless `overwrite`; even then
    only the merged checkpoint's own files are replaced.
    """
    from .merge import merge_adapter

    return merge_adapter(base, adapter_dir, out_dir, dtype=dtype, overwrite=overwrite)
