"""Loading: sharded files, the three checkpoint kinds, dtype/device choice, and every refusal."""

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from qwen_embed import Embedder, Reranker
from qwen_embed.errors import ConfigError, ModelNotFoundError, WeightsError
from qwen_embed.tiny import make_checkpoint
from qwen_embed.weights import pick_dtype, resolve_model_dir


def test_sharded_equals_single(tiny_checkpoint: Callable[..., Path]) -> None:
    one = tiny_checkpoint("embedding", tokenizer="small", seed=3)
    three = tiny_checkpoint("embedding", tokenizer="small", seed=3, shards=3)
    assert (three / "model.safetensors.index.json").is_file() and len(list(three.glob("*.safetensors"))) == 3
    texts = ["sharded weights", "one file"]
    a = Embedder.from_pretrained(one, device="cpu").encode(texts)
    b = Embedder.from_pretrained(three, device="cpu").encode(texts)
    assert np.array_equal(a, b)


def test_default_dtype_and_override(tiny_embedding_path: Path) -> None:
    assert Embedder.from_pretrained(tiny_embedding_path, device="cpu").dtype == torch.float32
    assert Embedder.from_pretrained(tiny_embedding_path, device="cpu", dtype="bf16").dtype == torch.bfloat16
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    with pytest.raises(WeightsError, match="int8"):
        pick_dtype("int8", torch.device("cpu"))


def test_untied_reranker_reads_lm_head(tiny_checkpoint: Callable[..., Path]) -> None:
    path = tiny_checkpoint("reranker", tokenizer="small", tie_word_embeddings=False)
    rr = Reranker.from_pretrained(path, device="cpu")
    from safetensors.torch import load_file

    lm = load_file(str(path / "model.safetensors"))["lm_head.weight"]
    yes, no = rr.checkpoint.yes_no_ids or (0, 0)
    assert torch.allclose(rr.head, lm[yes] - lm[no])


def test_folder_without_weights(tmp_path: Path, tiny_embedding_path: Path) -> None:
    d = tmp_path / "noweights"
    d.mkdir()
    for f in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_embedding_path / f, d / f)
    with pytest.raises(WeightsError, match=r"no \*\.safetensors weights in"):
        Embedder.from_pretrained(d)


def test_unsupported_architecture(tmp_path: Path, tiny_embedding_path: Path) -> None:
    d = tmp_path / "bert"
    shutil.copytree(tiny_embedding_path, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="unsupported architecture 'BertModel'"):
        Embedder.from_pretrained(d)


def test_truncated_safetensors(tmp_path: Path, tiny_embedding_path: Path) -> None:
    d = tmp_path / "trunc"
    shutil.copytree(tiny_embedding_path, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(WeightsError, match="truncated"):
        Embedder.from_pretrained(d)


def test_mismatched_weights_are_reported(tmp_path: Path) -> None:
    a = make_checkpoint(tmp_path / "a", "embedding", tokenizer="small", num_hidden_layers=3)
    cfg = json.loads((a / "config.json").read_text())
    cfg["num_hidden_layers"] = 4
    (a / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"missing 11: layers\.\{3\}"):
        Embedder.from_pretrained(a)
    cfg["num_hidden_layers"], cfg["intermediate_size"] = 3, 256
    (a / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match=r"mlp\.down_proj\.weight has shape \[64, 128\]"):
        Embedder.from_pretrained(a)


def test_reranker_refuses_embedding_checkpoint(tiny_embedding_path: Path) -> None:
    with pytest.raises(ConfigError, match="embedding checkpoint"):
        Reranker.from_pretrained(tiny_embedding_path)


def test_embedder_refuses_a_reranker_unless_its_trunk_is_wanted(tiny_reranker_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a reranker checkpoint \(Qwen3ForCausalLM\).*allow_causal_lm=True"):
        Embedder.from_pretrained(tiny_reranker_path, device="cpu")
    seq_cls = make_checkpoint(tmp_path / "sc", "seq-cls", tokenizer="small")
    with pytest.raises(ConfigError, match="Qwen3ForSequenceClassification"):
        Embedder.from_pretrained(seq_cls, device="cpu")
    emb = Embedder.from_pretrained(tiny_reranker_path, device="cpu", allow_causal_lm=True)
    assert emb.encode(["x"]).shape == (1, 64)


def test_hub_id_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: offline in any environment
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t = time.time()
    with pytest.raises(ModelNotFoundError, match=r"Qwen/Qwen3-Embedding-0\.6B.*pass the folder"):
        Embedder.from_pretrained("Qwen/Qwen3-Embedding-0.6B")
    assert time.time() - t < 30
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        Reranker.from_pretrained("Qwen/Qwen3-Reranker-0.6B")


def test_paths_that_are_not_checkpoints(tmp_path: Path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        resolve_model_dir(f)
    with pytest.raises(ModelNotFoundError, match="does not exist; check the path"):
        resolve_model_dir(tmp_path / "missing" / "deeper" / "folder")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/abs.safetensors", "sub/../../x.safetensors"])
def test_index_naming_shards_outside_the_folder_is_refused(tmp_path: Path, shard: str) -> None:
    """Issue 23.9: an index naming `../..` or absolute shards made the loader read outside the checkpoint."""
    import json

    from qwen_embed.errors import WeightsError
    from qwen_embed.weights import safetensors_files

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": shard}}))
    with pytest.raises(WeightsError, match="not a file of"):
        safetensors_files(folder)


@pytest.mark.parametrize(("kind", "key", "value"), [
    ("embedding", "layers.1.mlp.up_proj.weight", float("nan")),
    ("embedding", "embed_tokens.weight", float("-inf")),
    ("reranker", "model.layers.0.self_attn.q_norm.weight", float("nan")),
    ("reranker", "lm_head.weight", float("nan")),  # only its yes / no rows are read: the head vector is checked
])
def test_nan_or_inf_weights_are_refused_by_name(tmp_path: Path, kind: str, key: str, value: float,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23.2: NaN weights gave NaN vectors that `embed` wrote and the server served (exit 0, 200)."""
    from safetensors.torch import load_file, save_file

    from qwen_embed.cli import main

    path = make_checkpoint(tmp_path / "bad", kind, tokenizer="small", tie_word_embeddings=False)  # type: ignore[arg-type]
    w = load_file(str(path / "model.safetensors"))
    w[key] = torch.full_like(w[key], value)
    save_file(w, str(path / "model.safetensors"))
    cls = Embedder if kind == "embedding" else Reranker
    name = "the reranker head" if key == "lm_head.weight" else key
    with pytest.raises(WeightsError, match=rf"{name}.* holds \d+ NaN or infinite values"):
        cls.from_pretrained(path, device="cpu")
    (tmp_path / "in.txt").write_text("one\ntwo\n")
    out = tmp_path / ("out.jsonl" if kind == "embedding" else "out.json")
    argv = (["embed", str(tmp_path / "in.txt"), "-o", str(out)] if kind == "embedding" else
            ["rerank", "--query", "q", "--documents", str(tmp_path / "in.txt"), "-o", str(out)])
    capsys.readouterr()
    assert main([*argv, "--model", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite" in err and not out.exists()


def test_all_finite_sees_nan_that_a_sum_would_miss_and_passes_large_finite_values() -> None:
    from qwen_embed.weights import all_finite

    big = torch.full((4,), 3e38)  # finite, but its float32 sum overflows to inf
    assert all_finite(big) and all_finite(torch.zeros(0)) and all_finite(torch.arange(3))
    for bad in (float("nan"), float("inf"), float("-inf")):
        t = torch.randn(1000, dtype=torch.bfloat16)
        t[777] = bad
        assert not all_finite(t)
