"""ModelConfig: the Qwen3 shape, parsed once from a checkpoint's config.json.

Accepts both spellings transformers has used: `rope_theta` at top level (transformers 4) or inside
`rope_parameters` (transformers 5), and `torch_dtype` or `dtype`. The architecture decides the
checkpoint kind (DESIGN.md): `Qwen3Model` -> embedding, `Qwen3ForCausalLM` -> reranker (yes/no rows of
lm_head), `Qwen3ForSequenceClassification` -> reranker with a converted [1, hidden] `score` head.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

Kind = Literal["embedding", "causal-lm", "seq-cls"]

ARCHITECTURES: dict[str, Kind] = {
    "Qwen3Model": "embedding",
    "Qwen3ForCausalLM": "causal-lm",
    "Qwen3ForSequenceClassification": "seq-cls",
}


MAX_LAYERS = 512  # the largest Qwen3 has 94; a config beyond this is broken, not big


@dataclass(frozen=True)
class ModelConfig:
    """The numbers that define a Qwen3 trunk (field names as in config.json)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"
    architecture: str = "Qwen3Model"

    def __post_init__(self) -> None:
        """Refuse numbers no Qwen3 trunk has before anything is built (a zero head count, a negative width,
        100,000 layers, a NaN epsilon): the message names the field, its value and the limit."""
        for name, lo, hi in (("vocab_size", 1, 1 << 24), ("hidden_size", 1, 1 << 16),
                             ("intermediate_size", 1, 1 << 18), ("num_hidden_layers", 1, MAX_LAYERS),
                             ("num_attention_heads", 1, 1024), ("num_key_value_heads", 1, 1024),
                             ("head_dim", 1, 1024), ("max_position_embeddings", 1, 1 << 24)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ConfigError(f"config.json: {name}={value} is out of range ({lo}..{hi}); this is not a Qwen3 "
                                  f"checkpoint's config (check the file).")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"config.json: num_attention_heads={self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads={self.num_key_value_heads}.")
        if not math.isfinite(self.rms_norm_eps) or not 0 < self.rms_norm_eps < 1:
            raise ConfigError(f"config.json: rms_norm_eps={self.rms_norm_eps} must be a finite number in (0, 1) "
                              f"(Qwen3: 1e-6).")
        if not math.isfinite(self.rope_theta) or self.rope_theta <= 1:
            raise ConfigError(f"config.json: rope_theta={self.rope_theta} must be a finite number above 1 "
                              f"(Qwen3: 1000000).")

    @property
    def kind(self) -> Kind:
        return ARCHITECTURES[self.architecture]

    @property
    def is_reranker(self) -> bool:
        return self.kind != "embedding"

    def num_parameters(self, include_embeddings: bool = False) -> int:
        """Parameter count of the trunk (the number used for model FLOPs when embeddings are excluded)."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2) + 2 * d
        layer = attn + 3 * h * i + 2 * h
        total = self.num_hidden_layers * layer + h
        return total + (self.vocab_size * h if include_embeddings else 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = raw.get("architectures") or ["Qwen3Model"]
        arch = archs[0]
        if arch not in ARCHITECTURES:
            raise ConfigError(
                f"{source}: unsupported architecture {arch!r} (model_type={raw.get('model_type')!r}); "
                f"qwen-embed loads {', '.join(ARCHITECTURES)}. Pass a Qwen3 embedding or reranker checkpoint."
            )
        mt = raw.get("model_type", "qwen3")
        if mt != "qwen3":
            raise ConfigError(f"{source}: model_type {mt!r} is not 'qwen3'; pass a Qwen3 checkpoint.")
        rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
        theta = raw.get("rope_theta", rope.get("rope_theta", 1_000_000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ConfigError(f"{source}: rope type {rope_type!r} is not supported (only 'default').")
        try:
            heads = int(raw["num_attention_heads"])
            hidden = int(raw["hidden_size"])
            return cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(raw.get("num_key_value_heads", heads)),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(theta),
                max_position_embeddings=int(raw.get("max_position_embeddings", 32768)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                dtype=str(raw.get("dtype") or raw.get("torch_dtype") or "bfloat16"),
                architecture=arch,
            )
        except KeyError as e:
            raise ConfigError(f"{source}: required field {e.args[0]!r} is missing.") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: a field has the wrong type ({e}).") from None

    @classmethod
    def from_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            check_not_adapter(path.parent)
            raise ConfigError(f"{path} does not exist; a checkpoint folder needs config.json.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object, found {type(raw).__name__}.")
        return cls.from_dict(raw, source=str(path))


ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(path: Path) -> str | None:
    """The base model recorded in a PEFT adapter folder (None when it is not an adapter folder)."""
    cfg = path / ADAPTER_CONFIG
    if not cfg.is_file() or (path / "config.json").is_file():
        return None
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    base = raw.get("base_model_name_or_path") if isinstance(raw, dict) else None
    return str(base) if base else ""


def check_not_adapter(path: Path) -> None:
    """Refuse a PEFT adapter folder given as a checkpoint, naming its base and the two ways to use it."""
    base = adapter_base(path)
    if base is None:
        return
    b = base or "BASE"
    raise ConfigError(
        f"{path} is a LoRA adapter ({ADAPTER_CONFIG}), not a checkpoint; its base is {base or 'not recorded'}. "
        f"Load it on its base (Embedder.from_pretrained({b!r}, adapter={str(path)!r}), or --model {b} --adapter "
        f"{path}), or merge it first: qwen-embed merge-lora --base {b} --adapter {path} -o MERGED."
    )
