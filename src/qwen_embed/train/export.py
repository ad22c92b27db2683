"""Write trained weights as a Hugging Face checkpoint folder, in the layout the base came in.

Layouts (DESIGN.md): "embedding" (`Qwen3Model`: trunk keys without a prefix, no head), "causal-lm"
(`Qwen3ForCausalLM`: trunk keys under `model.`, plus `lm_head.weight` unless the embeddings are tied)
and "seq-cls" (a converted `Qwen3ForSequenceClassification` reranker: `model.` keys plus
`score.weight` [1, H]). config.json is the base's with `architectures` and the saved dtype set;
the tokenizer files are copied from the base, and for an embedding model its sentence-transformers files
(`modules.json`, `1_Pooling/`, ...: `hub.copy_side_files`), so sentence-transformers loads it with the
base's last-token pooling instead of its default mean pooling. `Embedder` / `Reranker.from_pretrained` and transformers
load the folder. `write_checkpoint` is the pure writer (state dict, base dir, out dir, layout) -> folder;
`save_trunk` and `save_reranker` take a module. Written through `files.atomic_dir`: built in a temporary
sibling and renamed into place; an existing non-empty folder is refused unless `overwrite`, and even
then only the files written here are replaced (never the rest of the folder), with the checkpoint's
weight files replaced as a set (`hub.is_weight_file`: an old index and shards do not stay beside the new
`model.safetensors`, where a loader would read them).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError, InputError
from ..files import atomic_dir
from ..hub import copy_side_files, is_weight_file

Layout = Literal["embedding", "causal-lm", "seq-cls"]
ARCHITECTURE: dict[str, str] = {"embedding": "Qwen3Model", "causal-lm": "Qwen3ForCausalLM",
                                "seq-cls": "Qwen3ForSequenceClassification"}
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64"}


def checkpoint_config(base_dir: Path, dtype: torch.dtype, layout: Layout = "embedding") -> dict:
    """The base's config.json turned into a config of `layout` with the saved dtype."""
    if layout not in ARCHITECTURE:
        raise ConfigError(f"layout {layout!r} is not one of {sorted(ARCHITECTURE)}.")
    raw = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    raw["architectures"] = [ARCHITECTURE[layout]]
    if layout != "seq-cls":
        for key in ("num_labels", "id2label", "label2id", "problem_type"):
            raw.pop(key, None)
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"weights of dtype {dtype} cannot be saved as a checkpoint; use one of "
                          f"{', '.join(_DTYPE_NAMES.values())}.")
    raw["torch_dtype"] = _DTYPE_NAMES[dtype]
    raw.pop("dtype", None)
    return raw


def embedding_config(base_dir: Path, dtype: torch.dtype) -> dict:
    """The base's config.json turned into a Qwen3Model (embedding) config."""
    return checkpoint_config(base_dir, dtype, "embedding")


def _check_keys(state: Mapping[str, torch.Tensor], layout: Layout) -> None:
    for k in state:
        if "lora_" in k or "base_layer" in k:
            raise AssertionError(f"got an adapted model (key {k}); merge the adapter first")
    trunk_prefixed = all(k.startswith("model.") or k in ("lm_head.weight", "score.weight") for k in state)
    if (layout == "embedding") == trunk_prefixed:
        raise AssertionError(f"state keys (e.g. {next(iter(state))}) do not fit the {layout} layout")


def write_checkpoint(state: Mapping[str, torch.Tensor], base_dir: str | Path, out_dir: str | Path,
                     layout: Layout = "embedding", dtype: torch.dtype | None = None, *,
                     overwrite: bool = False) -> Path:
    """Write a state dict (keys of `layout`) with the base's config and tokenizer into out_dir.

    out_dir must be new or empty unless `overwrite`; then only the files written here are replaced (and the
    weight files of the checkpoint there, as a set: no old shard or index is left beside the new weights).
    """
    base, out = Path(base_dir), Path(out_dir)
    if not state:
        raise InputError(f"nothing to write to {out}: the state dict holds no tensor.")
    _check_keys(state, layout)
    tensors = {k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in state.items()}
    saved_dtype = dtype or next(iter(tensors.values())).dtype
    with atomic_dir(out, overwrite=overwrite, as_a_set=is_weight_file) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = checkpoint_config(base, saved_dtype, layout)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        copy_side_files(base, tmp, sentence_transformers=layout == "embedding")
    return out


def save_trunk(model: nn.Module, base_dir: str | Path, out_dir: str | Path, dtype: torch.dtype | None = None,
               *, overwrite: bool = False) -> Path:
    """Save a plain (un-adapted) trunk's weights with the base's config and tokenizer into out_dir."""
    return write_checkpoint(model.state_dict(), base_dir, out_dir, "embedding", dtype, overwrite=overwrite)


def save_reranker(model: nn.Module, base_dir: str | Path, out_dir: str | Path, layout: Layout,
                  dtype: torch.dtype | None = None, *, overwrite: bool = False) -> Path:
    """Save a plain `RerankModel` (trunk under `model.`, its head) as a causal-LM or seq-cls checkpoint."""
    if layout == "embedding":
        raise ConfigError("a reranker is saved as causal-lm or seq-cls, not embedding.")
    return write_checkpoint(model.state_dict(), base_dir, out_dir, layout, dtype, overwrite=overwrite)


def export_run(model: nn.Module, base_dir: str | Path, run_dir: str | Path, layout: Layout, lora_config: object = None,
               *, merge_at_end: bool = True) -> Path:
    """A run's final outputs: run_dir/model (the base's layout; with LoRA the merged model when
    `merge_at_end`), run_dir/adapter (PEFT) for LoRA, and the learning curve of run_dir/train_log.jsonl."""
    run = Path(run_dir)
    if lora_config is not None:
        import copy

        from .lora import merge_lora, save_adapter

        save_adapter(model, lora_config, run / "adapter")
        if merge_at_end:
            write_checkpoint(merge_lora(copy.deepcopy(model)).state_dict(), base_dir, run / "model", layout,
                             overwrite=True)
    else:
        write_checkpoint(model.state_dict(), base_dir, run / "model", layout, overwrite=True)
    log = run / "train_log.jsonl"
    if log.is_file():
        try:
            from .plot import plot_learning_curve

            plot_learning_curve(log, run / "learning_curve.png")
        except ImportError:  # matplotlib is optional
            pass
        except InputError as e:  # the model is written: a log the curve cannot be drawn from does not undo it
            print(f"the learning curve was not drawn: {e}", file=sys.stderr)
    return run
