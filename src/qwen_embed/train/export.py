"""Write a trained trunk as a Hugging Face `Qwen3Model` checkpoint folder.

config.json (the base's, with `architectures: ["Qwen3Model"]` and the saved dtype), model.safetensors
with the trunk's keys (no `model.` prefix, no lm_head: the layout of the official embedding
checkpoints) and the tokenizer files copied from the base. `Embedder.from_pretrained` and
transformers' `AutoModel` both load the folder. Written through `files.atomic_dir`: built in a temporary
sibling and renamed into place; an existing non-empty folder is refused unless `overwrite`, and even then
only the files written here are replaced (never the rest of the folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..files import atomic_dir

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "generation_config.json"]
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def embedding_config(base_dir: Path, dtype: torch.dtype) -> dict:
    """The base's config.json turned into a Qwen3Model (embedding) config."""
    raw = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    raw["architectures"] = ["Qwen3Model"]
    for key in ("num_labels", "id2label", "label2id", "problem_type"):
        raw.pop(key, None)
    raw["torch_dtype"] = _DTYPE_NAMES.get(dtype, "float32")
    raw.pop("dtype", None)
    return raw


def save_trunk(model: nn.Module, base_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
               *, overwrite: bool = False) -> Path:
    """Save a plain (un-adapted) trunk's weights with the base's config and tokenizer into out_dir.

    out_dir must be new or empty unless `overwrite`; then only the files written here are replaced.
    """
    base, out = Path(base_dir), Path(out_dir)
    state = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in model.state_dict().items()}
    for k in state:
        if "lora_" in k or "base_layer" in k:
            raise AssertionError(f"save_trunk got an adapted model (key {k}); merge the adapter first")
    saved_dtype = dtype or next(iter(state.values())).dtype
    with atomic_dir(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(embedding_config(base, saved_dtype), indent=2))
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, tmp / name)
    return out
