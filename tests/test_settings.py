"""ModelSettings: one declaration of the model-loading flags, read back and loaded the same way everywhere."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.server.settings import ServerSettings
from qwen_embed.settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_MAX_LENGTH, ModelSettings
from qwen_embed.train.config import TrainConfig


def _parser(default: str | None, **kw: object) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    ModelSettings.add_arguments(p, default, **kw)  # type: ignore[arg-type]
    return p


def test_flags_defaults_and_round_trip() -> None:
    args = _parser(DEFAULT_EMBEDDING_MODEL).parse_args([])
    assert ModelSettings.from_args(args) == ModelSettings(model=DEFAULT_EMBEDDING_MODEL)
    assert ModelSettings().max_length is None  # not given: the loaders take 8192, or the model's limit where lower
    assert DEFAULT_MAX_LENGTH == 8192
    args = _parser("m", flag="--embedding-model").parse_args(
        ["--embedding-model", "x", "--device", "cpu", "--dtype", "float32", "--max-length", "64",
         "--batch-tokens", "512"])
    assert ModelSettings.from_args(args, flag="--embedding-model") == ModelSettings(
        "x", device="cpu", dtype="float32", max_length=64, batch_tokens=512)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelSettings().model = "y"  # type: ignore[misc]


def test_required_without_default_and_optional_with_none() -> None:
    with pytest.raises(SystemExit):
        _parser(None).parse_args([])  # no default: required
    args = _parser(None, required=False).parse_args([])  # optional, no default
    settings = ModelSettings.from_args(args)
    assert settings.model is None
    with pytest.raises(InputError, match="no model given"):
        settings.load_embedder()


def test_threads_and_deterministic_land_in_the_type() -> None:
    p = _parser("m")
    got = ModelSettings.from_args(p.parse_args(["--threads", "3", "--deterministic"]))
    assert got.threads == 3 and got.deterministic is True
    default = ModelSettings.from_args(_parser("m").parse_args([]))
    assert default.threads is None and default.deterministic is False
    assert got.loader_kwargs()["threads"] == 3 and got.loader_kwargs()["deterministic"] is True


def test_load_embedder_is_from_pretrained(tiny_embedding_path: Path) -> None:
    settings = ModelSettings(str(tiny_embedding_path), device="cpu", max_length=32)
    emb = settings.load_embedder()
    ref = Embedder.from_pretrained(tiny_embedding_path, device="cpu", max_length=32)
    assert emb.max_length == 32 and emb.device.type == "cpu"
    np.testing.assert_array_equal(emb.encode(["a text"]), ref.encode(["a text"]))


def test_server_and_training_config_give_the_same_type() -> None:
    s = ServerSettings(embedding_model="e", reranker_model="r", device="cpu", max_length=64, max_batch_tokens=100)
    assert s.model_settings("embedding") == ModelSettings("e", device="cpu", max_length=64, batch_tokens=100)
    assert s.model_settings("reranker").model == "r"
    cfg = TrainConfig()
    assert cfg.model.loading() == ModelSettings(DEFAULT_EMBEDDING_MODEL, dtype="float32")
    cfg.model.precision = "bf16"
    assert cfg.model.loading().dtype == "bfloat16"
