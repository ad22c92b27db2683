"""TableInfo record and the model / dimension compatibility check."""

from __future__ import annotations

import pytest

from qwen_embed.errors import InputError
from qwen_embed.store import TableInfo, check_compatible
from qwen_embed.store.base import model_name


def info(**kw: object) -> TableInfo:
    base: dict[str, object] = dict(model="Qwen/Qwen3-Embedding-0.6B", dim=1024, hidden_size=1024,
                                   tokenizer_fingerprint="abc", query_instruction="find", chunk_tokens=512,
                                   overlap=64, max_length=8192)
    base.update(kw)
    return TableInfo(**base)  # type: ignore[arg-type]


def test_json_round_trip_and_unknown_keys() -> None:
    a = info()
    assert TableInfo.from_json(a.to_json()) == a
    assert a.model_name == "Qwen3-Embedding-0.6B"
    assert TableInfo.from_json(a.to_json()[:-1] + ', "future_field": 1}') == a


def test_model_name_spellings() -> None:
    assert model_name("Qwen/Qwen3-Embedding-0.6B") == "Qwen3-Embedding-0.6B"
    assert model_name("/root/.cache/huggingface/hub/models--Qwen--Qwen3-Embedding-0.6B/snapshots/abc123") == \
        "Qwen3-Embedding-0.6B"
    assert model_name("/models/Qwen3-Embedding-0.6B/") == "Qwen3-Embedding-0.6B"


def test_dimension_mismatch_is_an_error() -> None:
    with pytest.raises(InputError, match="1024-dim vectors but dim=256"):
        check_compatible(info(), "docs", dim=256)
    check_compatible(info(), "docs", dim=1024)


def test_model_mismatch_is_an_error_but_spellings_of_one_model_match() -> None:
    with pytest.raises(InputError, match=r"indexed with model 'Qwen/Qwen3-Embedding-0\.6B', not 'Qwen/Qwen3-Emb"):
        check_compatible(info(), "docs", model="Qwen/Qwen3-Embedding-4B")
    cached = "/hub/models--Qwen--Qwen3-Embedding-0.6B/snapshots/x"
    check_compatible(info(), "docs", model=cached, tokenizer_fingerprint="abc", hidden_size=1024)
    with pytest.raises(InputError):
        check_compatible(info(), "docs", model=cached, tokenizer_fingerprint="other")
    with pytest.raises(InputError):
        check_compatible(info(), "docs", model=cached, hidden_size=2560)
