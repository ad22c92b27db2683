import json
from pathlib import Path

import pytest

from qwen_embed.config import ModelConfig
from qwen_embed.errors import ConfigError

BASE = {"architectures": ["Qwen3Model"], "model_type": "qwen3", "vocab_size": 151669, "hidden_size": 1024,
        "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 32768, "tie_word_embeddings": True}


def test_rope_theta_top_level_and_torch_dtype() -> None:
    cfg = ModelConfig.from_dict({**BASE, "rope_theta": 1e6, "torch_dtype": "bfloat16"})
    assert cfg.rope_theta == 1e6 and cfg.dtype == "bfloat16" and cfg.kind == "embedding"


def test_rope_parameters_and_dtype_transformers5() -> None:
    cfg = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"},
                                 "dtype": "float32"})
    assert cfg.rope_theta == 5e5 and cfg.dtype == "float32"


def test_kinds() -> None:
    assert ModelConfig.from_dict({**BASE, "architectures": ["Qwen3ForCausalLM"]}).kind == "causal-lm"
    assert ModelConfig.from_dict({**BASE, "architectures": ["Qwen3ForSequenceClassification"]}).is_reranker


def test_parameter_count_of_real_0_6b() -> None:
    cfg = ModelConfig.from_dict(BASE)
    total = cfg.num_parameters(include_embeddings=True)
    assert 590e6 < total < 600e6  # Qwen3-Embedding-0.6B: 595.8M parameters


@pytest.mark.parametrize(
    ("patch", "needle"),
    [({"architectures": ["BertModel"]}, "unsupported architecture 'BertModel'"),
     ({"model_type": "llama"}, "model_type 'llama'"),
     ({"hidden_size": None}, "wrong type"),
     ({"rope_scaling": {"rope_type": "yarn", "factor": 4}}, "rope type 'yarn'")],
)
def test_bad_configs(patch: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        ModelConfig.from_dict({**BASE, **patch})


def test_missing_field_and_bad_file(tmp_path: Path) -> None:
    raw = dict(BASE)
    del raw["num_hidden_layers"]
    with pytest.raises(ConfigError, match="num_hidden_layers"):
        ModelConfig.from_dict(raw)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps([1]))
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_file(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="does not exist"):
        ModelConfig.from_file(tmp_path / "nope.json")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("num_attention_heads", 0, "num_attention_heads=0 is out of range"),
    ("hidden_size", -64, "hidden_size=-64 is out of range"),
    ("num_hidden_layers", 100000, "num_hidden_layers=100000 is out of range"),
    ("rms_norm_eps", float("nan"), "rms_norm_eps=nan"),
    ("rms_norm_eps", "nan", "rms_norm_eps=nan"),
    ("rope_theta", 0, "rope_theta=0.0"),
    ("num_key_value_heads", 3, "not a multiple"),
])
def test_broken_numbers_are_refused_before_building(field: str, value: object, message: str) -> None:
    """Issue 23: such configs built a model for minutes or produced NaN vectors; now a one-line ConfigError."""
    from qwen_embed.config import ModelConfig
    from qwen_embed.errors import ConfigError

    raw = {"architectures": ["Qwen3Model"], "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, field: value}
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(raw)
