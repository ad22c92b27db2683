"""TrainConfig: YAML loading, defaults, overrides, errors that name the key, and the documented table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from qwen_embed.errors import ConfigError
from qwen_embed.train.config import TrainConfig, describe, load_config

REPO = Path(__file__).resolve().parents[2]


def test_yaml_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\n  batch_size: 16\nloss:\n  temperature: 0.02\n")
    cfg = load_config(path, ["lora.enabled=true", "loss.matryoshka_dims=[64, 32]"])
    assert cfg.train.max_steps == 7 and cfg.train.batch_size == 16 and cfg.loss.temperature == 0.02
    assert cfg.lora.enabled and cfg.loss.matryoshka_dims == [64, 32]
    assert cfg.optim.lr == 2e-5 and cfg.loss.margin == 0.1  # defaults


@pytest.mark.parametrize(("raw", "message"), [
    ({"trian": {}}, "unknown section"),
    ({"train": {"max_step": 3}}, r"unknown key\(s\) \['max_step'\]"),
    ({"train": {"max_steps": "ten"}}, "train.max_steps must be int"),
    ({"train": {"batch_size": 1}}, "batch_size=1 must be >= 2"),
    ({"loss": {"matryoshka_dims": [64], "matryoshka_weights": [1, 2]}}, "2 values for 1 dims"),
    ({"model": {"precision": "fp8"}}, "model.precision"),
])
def test_errors_name_the_setting(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(raw)


def test_docs_list_every_setting_with_its_default() -> None:
    docs = (REPO / "docs" / "train.md").read_text()
    assert describe() in docs  # the reference table in the docs is the generated one, up to date
    cfg = TrainConfig()
    for sect in dataclasses.fields(cfg):
        for f in dataclasses.fields(getattr(cfg, sect.name)):
            assert f"| `{f.name}` | `{json.dumps(getattr(getattr(cfg, sect.name), f.name))}` |" in docs


def test_example_configs_load() -> None:
    examples = sorted((REPO / "examples").glob("train_*.yaml"))
    assert examples
    for p in examples:
        load_config(p)


def config_refused(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize(("text", "message"), [
    ("train:\n  max_steps: [7\n", "is not valid YAML: while parsing a flow sequence at line 2, column 14; "),
    ("train:\n  max_steps: 7\n  max_steps: 9\n",
     "is not valid YAML: key 'max_steps' is written twice (line 3, column 3)"),
    ("train: {}\ntrain: {max_steps: 9}\n", "is not valid YAML: key 'train' is written twice (line 2, column 1)"),
])
def test_a_bad_yaml_file_is_one_line_with_its_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert config_refused(path).startswith(f"config file {path} {message}")


def test_a_missing_or_binary_config_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    assert config_refused(missing) == f"config file {missing} does not exist or is not a file."
    path = tmp_path / "c.yaml"
    path.write_bytes(b"\xff\xfe train")
    assert config_refused(path) == f"config file {path} is not UTF-8 text (byte 0); convert it first."


def test_a_bad_override_value_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  max_steps: 7\n")
    msg = config_refused(path, ["loss.matryoshka_dims=[64, 32"])
    assert msg.startswith("override 'loss.matryoshka_dims=[64, 32': the value is not valid YAML: ")
    assert "line 1, column" in msg
    # an override on a file whose top level is not a mapping: the top level is named, not a Python error
    path.write_text("- 1\n")
    msg = config_refused(path, ["train.max_steps=3"])
    assert msg.endswith("the top level must be a mapping of sections, got list.")
