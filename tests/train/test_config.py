"""TrainConfig: YAML loading, defaults, overrides, errors that name the key, and the documented table."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest

from qwen_embed.errors import ConfigError
from qwen_embed.train.config import Range, TrainConfig, describe, load_config

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


def config_refused(path: Path, overrides: list[str] | None = None, kind: str = "embed") -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides, kind=kind)
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


# -- ranges: every numeric setting is checked when the config is read ------------------------------------------
def leaves(hint: object) -> set[object]:
    """The plain types inside a type hint (list[int | str] -> {int, str})."""
    args = typing.get_args(hint)
    return set().union(*map(leaves, args)) if args else {hint}


def ranged_settings() -> list[tuple[str, str, Range, object]]:
    """(section, key, range, type hint) of every setting that declares a range."""
    out = []
    for sect in dataclasses.fields(TrainConfig):
        cls = typing.get_type_hints(TrainConfig)[sect.name]
        hints = typing.get_type_hints(cls)
        out += [(sect.name, f.name, f.metadata["range"], hints[f.name]) for f in dataclasses.fields(cls)
                if "range" in f.metadata]
    return out


def test_every_numeric_setting_declares_its_range() -> None:
    hints = typing.get_type_hints(TrainConfig)
    missing = [f"{sect.name}.{f.name}" for sect in dataclasses.fields(TrainConfig)
               for f in dataclasses.fields(hints[sect.name])
               if leaves(typing.get_type_hints(hints[sect.name])[f.name]) & {int, float} and "range" not in f.metadata]
    assert missing == []


def outside(valid: Range, is_int: bool) -> list[float]:
    """Values just outside a range (and, for a float setting, NaN and the infinities)."""
    step = 1 if is_int else 1e-3
    out = [] if valid.low is None else [valid.low if valid.open_low else valid.low - step]
    out += [] if valid.high is None else [valid.high if valid.open_high else valid.high + step]
    return out if is_int else [float(v) for v in [*out, math.nan, math.inf, -math.inf]]


CASES = [(s, k, v, typing.get_origin(h) is list or list in map(typing.get_origin, typing.get_args(h)))
         for s, k, valid, h in ranged_settings() for v in outside(valid, float not in leaves(h))]


@pytest.mark.parametrize("kind", ["embed", "rerank"])
@pytest.mark.parametrize(("section", "key", "value", "listed"), CASES, ids=[f"{s}.{k}={v}" for s, k, v, _ in CASES])
def test_a_value_out_of_its_range_is_one_line_naming_it(tmp_path: Path, kind: str, section: str, key: str,
                                                        value: object, listed: bool) -> None:
    """Each numeric setting just outside its range (and NaN, inf for floats) is refused when the config is
    read, for `train embed` and `train rerank`: the key, the value and the allowed range in one line."""
    path = tmp_path / "c.yaml"
    path.write_text("{}\n")
    text = json.dumps([value] if listed else value)
    for python, yaml in (("NaN", ".nan"), ("-Infinity", "-.inf"), ("Infinity", ".inf")):
        text = text.replace(python, yaml)
    msg = config_refused(path, [f"{section}.{key}={text}"], kind)
    valid = {(s, k): r for s, k, r, _ in ranged_settings()}[(section, key)]
    assert f"{section}.{key}{'[0]' if listed else ''}={value} must be " in msg and str(valid) in msg, msg


@pytest.mark.parametrize(("override", "message"), [
    ("optim.lr=-1", "optim.lr=-1.0 must be > 0 (default 2e-05)."),
    ("optim.beta1=1.5", "optim.beta1=1.5 must be in [0, 1) (default 0.9)."),
    ("lora.dropout=2", "lora.dropout=2.0 must be in [0, 1) (default 0.0)."),
    ("train.log_every=0", "train.log_every=0 must be >= 1 (default 10)."),
    ("eval.every=0", "eval.every=0 must be >= 1 (default 500)."),
    ("train.save_every=-1", "train.save_every=-1 must be >= 0 (default 500)."),
    ("optim.lr=nan", "optim.lr=nan must be a finite number > 0 (default 2e-05)."),
    ("loss.margin=.inf", "loss.margin=inf must be a finite number (default 0.1)."),
    ("train.batch_size=1", "train.batch_size=1 must be >= 2 (in-batch negatives; default 64)."),
    ("loss.matryoshka_weights=[0, 0]", "sum to 0"),
])
def test_the_reported_settings_are_refused_with_their_range(tmp_path: Path, override: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  matryoshka_dims: [64, 32]\n")
    assert message in config_refused(path, [override])
