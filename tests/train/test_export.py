"""Writing trained weights as a Hugging Face checkpoint folder (train/export.py).

References: the written folder is loaded by transformers (`AutoModel`, `AutoModelForCausalLM`,
`AutoModelForSequenceClassification`), whose parameters must equal the state dict given, in every layout
of DESIGN.md; tensors and dtypes are read back with safetensors; the tokenizer files must be the base's
bytes; LoRA merging is checked against the formula W + (alpha / r) B A (peft's merge) computed here from the
written adapter. The project's file rules: an existing non-empty folder is refused (one line, the fix),
overwrite replaces only the files written, a failure mid-write leaves nothing (no partial folder, no
temporary sibling, the previous checkpoint intact), and the folder loads as what was written.
Checkpoints: tests/conftest.py's factory with the small tokenizer (short vocabulary: fast to load).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from qwen_embed.errors import ConfigError, InputError
from qwen_embed.files import OutputExistsError
from qwen_embed.train.export import checkpoint_config, export_run, save_reranker, save_trunk, write_checkpoint

from ..conftest import TinyCheckpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# kind of base checkpoint (factory options), layout written, transformers class that must load it
LAYOUTS: dict[str, tuple[str, dict[str, Any], str, str]] = {
    "embedding": ("embedding", {}, "embedding", "AutoModel"),
    "causal-lm-tied": ("reranker", {}, "causal-lm", "AutoModelForCausalLM"),
    "causal-lm-untied": ("reranker", {"tie_word_embeddings": False}, "causal-lm", "AutoModelForCausalLM"),
    "seq-cls": ("seq-cls", {}, "seq-cls", "AutoModelForSequenceClassification"),
}
ARCH = {"embedding": "Qwen3Model", "causal-lm": "Qwen3ForCausalLM", "seq-cls": "Qwen3ForSequenceClassification"}


def base_of(tiny_checkpoint: TinyCheckpoint, case: str) -> Path:
    kind, options, _, _ = LAYOUTS[case]
    return tiny_checkpoint(kind, tokenizer="small", **options)


def trained(base: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """The base's weights moved a little (as training would)."""
    g = torch.Generator().manual_seed(seed)
    weights = load_file(str(base / "model.safetensors"))
    return {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in weights.items()}


def hf_load(folder: Path, auto: str) -> torch.nn.Module:
    import transformers

    return getattr(transformers, auto).from_pretrained(str(folder), dtype=torch.float32).eval()


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


# -- each layout loads in transformers with the weights given --------------------------------------------------
@pytest.mark.parametrize("case", list(LAYOUTS))
def test_each_layout_loads_in_transformers_with_the_given_weights(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                                                   case: str) -> None:
    base = base_of(tiny_checkpoint, case)
    _, _, layout, auto = LAYOUTS[case]
    state = trained(base)
    out = write_checkpoint(state, base, tmp_path / "out", layout)  # type: ignore[arg-type]
    hf = hf_load(out, auto).state_dict()
    for key, value in state.items():
        torch.testing.assert_close(hf[key], value, rtol=0, atol=0, msg=key)
    if layout == "causal-lm" and "lm_head.weight" not in state:  # tied: the head is the embedding
        torch.testing.assert_close(hf["lm_head.weight"], state["model.embed_tokens.weight"], rtol=0, atol=0)
    config = json.loads((out / "config.json").read_text())
    base_config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == [ARCH[layout]] and config["torch_dtype"] == "float32"
    assert {k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")} == \
        {k: v for k, v in base_config.items() if k not in ("architectures", "torch_dtype")}
    for name in TOKENIZER_FILES:
        assert (out / name).read_bytes() == (base / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "model.safetensors", *TOKENIZER_FILES])
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]  # no temporary sibling left


def test_save_trunk_and_save_reranker_take_modules(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    """The modules the trainer holds (a Qwen3Model trunk, a RerankModel) give what transformers reads as the base."""
    from qwen_embed.checkpoint import Checkpoint
    from qwen_embed.train.rerank_model import load_rerank_model

    emb, rr = base_of(tiny_checkpoint, "embedding"), base_of(tiny_checkpoint, "causal-lm-untied")
    trunk = Checkpoint.load(emb, "cpu", torch.float32, want_head=False).model
    model, _ = load_rerank_model(str(rr), torch.device("cpu"), torch.float32)
    ids = torch.tensor([[3, 14, 15, 92, 65]])
    with torch.no_grad():
        out = save_trunk(trunk, emb, tmp_path / "emb")
        torch.testing.assert_close(hf_load(out, "AutoModel")(ids).last_hidden_state,
                                   hf_load(emb, "AutoModel")(ids).last_hidden_state, rtol=0, atol=0)
        out = save_reranker(model, rr, tmp_path / "rr", "causal-lm")
        torch.testing.assert_close(hf_load(out, "AutoModelForCausalLM")(ids).logits,
                                   hf_load(rr, "AutoModelForCausalLM")(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize(("dtype", "name"), [(torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
                                             (torch.float64, "float64")])
def test_a_saved_dtype_casts_the_tensors_and_names_it(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                                      dtype: torch.dtype, name: str) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    state = trained(base)
    out = write_checkpoint(state, base, tmp_path / "out", dtype=dtype)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
        for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
            t = f.get_tensor(key)
            assert t.dtype == dtype and torch.equal(t, state[key].to(dtype)), key
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == name


def test_a_dtype_a_checkpoint_cannot_name_is_refused_writing_nothing(tiny_checkpoint: TinyCheckpoint,
                                                                     tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    with pytest.raises(ConfigError, match=r"dtype torch.int8 cannot be saved as a checkpoint; use one of float32"):
        write_checkpoint(trained(base), base, tmp_path / "out", dtype=torch.int8)
    assert list(tmp_path.iterdir()) == []


def test_config_of_a_layout(tiny_checkpoint: TinyCheckpoint) -> None:
    """A seq-cls base keeps its labels only as seq-cls; the saved dtype replaces a transformers-5 `dtype` key."""
    seq = base_of(tiny_checkpoint, "seq-cls")
    assert checkpoint_config(seq, torch.float32, "seq-cls")["num_labels"] == 1
    as_lm = checkpoint_config(seq, torch.bfloat16, "causal-lm")
    assert not {"num_labels", "id2label", "label2id", "dtype"} & set(as_lm)
    assert as_lm["torch_dtype"] == "bfloat16" and as_lm["architectures"] == ["Qwen3ForCausalLM"]


def test_unknown_layouts_are_config_errors(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    with pytest.raises(ConfigError) as e:
        checkpoint_config(base, torch.float32, "sentence-transformers")  # type: ignore[arg-type]
    assert "'sentence-transformers'" in one_line(e) and "seq-cls" in str(e.value)
    with pytest.raises(ConfigError) as e:
        save_reranker(torch.nn.Linear(2, 2), base, tmp_path / "out", "embedding")
    assert "causal-lm or seq-cls" in one_line(e)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("keys", "layout"), [
    (["embed_tokens.weight"], "causal-lm"),  # trunk keys without the `model.` prefix
    (["model.embed_tokens.weight"], "embedding"),
    (["model.layers.0.self_attn.q_proj.lora_A.weight", "model.embed_tokens.weight"], "causal-lm"),
    (["layers.0.self_attn.q_proj.base_layer.weight"], "embedding"),
])
def test_keys_of_another_layout_are_refused_before_writing(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                                           keys: list[str], layout: str) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    with pytest.raises(AssertionError):
        write_checkpoint({k: torch.zeros(2) for k in keys}, base, tmp_path / "out", layout)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("layout", ["embedding", "causal-lm"])
def test_an_empty_state_dict_is_refused_with_a_message(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                                       layout: str) -> None:
    with pytest.raises(InputError, match=r"^nothing to write to .*/out: the state dict holds no tensor\.$"):
        write_checkpoint({}, base_of(tiny_checkpoint, "embedding"), tmp_path / "out", layout)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- never lose what the command did not write ----------------------------------------------------------------
def test_a_non_empty_folder_is_refused_and_left_as_it_is(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    with pytest.raises(OutputExistsError) as e:
        write_checkpoint(trained(base), base, out)
    msg = one_line(e)
    assert str(out) in msg and "--overwrite" in msg
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_an_empty_folder_is_written_into(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    (tmp_path / "out").mkdir()
    write_checkpoint(trained(base), base, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_overwrite_replaces_only_the_files_written(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    out = write_checkpoint(trained(base, seed=1), base, tmp_path / "out")
    (out / "notes.txt").write_text("mine")
    (out / "eval").mkdir()
    (out / "eval" / "scores.json").write_text("{}")
    new = trained(base, seed=2)
    write_checkpoint(new, base, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval" / "scores.json").read_text() == "{}"
    written = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in new.items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_mid_write_leaves_nothing(tiny_checkpoint: TinyCheckpoint, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, existing: bool) -> None:
    """The disk fills up while the tokenizer is copied (after the weights were written)."""
    base = base_of(tiny_checkpoint, "embedding")
    out = tmp_path / "out"
    if existing:
        write_checkpoint(trained(base, seed=1), base, out)
    before = snapshot(out) if existing else None

    def full_disk(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copy2", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(trained(base, seed=2), base, out, overwrite=True)
    if existing:
        assert snapshot(out) == before  # the previous checkpoint, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if existing else [])  # no partial folder or temp


def test_a_temporary_sibling_of_a_killed_writer_is_removed(tiny_checkpoint: TinyCheckpoint, tmp_path: Path) -> None:
    base = base_of(tiny_checkpoint, "embedding")
    stale = tmp_path / f".out.tmp-{dead_pid()}-0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"torn")
    other = tmp_path / f".notes.tmp-{dead_pid()}-0123abcd"  # another output's: not ours to remove
    other.write_text("x")
    write_checkpoint(trained(base), base, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", other.name])


def test_overwriting_a_sharded_checkpoint_loads_the_new_weights(tiny_checkpoint: TinyCheckpoint,
                                                                tmp_path: Path) -> None:
    from qwen_embed import Embedder
    from qwen_embed.tiny import make_checkpoint

    base = base_of(tiny_checkpoint, "embedding")
    out = make_checkpoint(tmp_path / "out", "embedding", tokenizer="small", shards=2, seed=5)
    (out / "README.md").write_text("mine")
    write_checkpoint(load_file(str(base / "model.safetensors")), base, out, overwrite=True)
    # the old shards and their index went with the checkpoint they belonged to; the user's file stays
    assert sorted(p.name for p in out.iterdir() if "safetensors" in p.name) == ["model.safetensors"]
    assert (out / "README.md").read_text() == "mine"
    got = Embedder.from_pretrained(out, device="cpu").encode(["alpha beta"])
    want = Embedder.from_pretrained(base, device="cpu").encode(["alpha beta"])
    assert abs(got - want).max() < 1e-6


# -- a run's final outputs -----------------------------------------------------------------------------------
def test_export_run_writes_the_model_and_the_curve_and_keeps_other_files(tiny_checkpoint: TinyCheckpoint,
                                                                         tmp_path: Path) -> None:
    from qwen_embed.checkpoint import Checkpoint

    base = base_of(tiny_checkpoint, "embedding")
    trunk = Checkpoint.load(base, "cpu", torch.float32, want_head=False).model
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")  # an earlier export of this run: replaced
    (run / "README.md").write_text("mine")
    (run / "train_log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    assert export_run(trunk, base, run, "embedding") == run
    assert (run / "README.md").read_text() == "mine"
    assert json.loads((run / "model" / "config.json").read_text())["architectures"] == ["Qwen3Model"]
    written = load_file(str(run / "model" / "model.safetensors"))
    assert all(torch.equal(written[k], v) for k, v in trunk.state_dict().items())
    assert (run / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run / "adapter").exists()


@pytest.mark.parametrize("merge_at_end", [True, False])
def test_export_run_with_lora_writes_the_adapter_and_the_merged_model(tiny_checkpoint: TinyCheckpoint,
                                                                      tmp_path: Path, merge_at_end: bool) -> None:
    from qwen_embed.checkpoint import Checkpoint
    from qwen_embed.train.lora import add_lora, lora_config

    base = base_of(tiny_checkpoint, "embedding")
    plain = load_file(str(base / "model.safetensors"))
    cfg = lora_config(r=2, alpha=8, target_modules=["q_proj", "down_proj"])
    model = add_lora(Checkpoint.load(base, "cpu", torch.float32, want_head=False).model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))  # a trained adapter (B starts at zero)
    run = tmp_path / "run"
    export_run(model, base, run, "embedding", cfg, merge_at_end=merge_at_end)
    assert any("lora_" in k for k in model.state_dict())  # the trained model was not merged in place
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 2
    assert (run / "model").is_dir() == merge_at_end
    if not merge_at_end:
        return
    merged = load_file(str(run / "model" / "model.safetensors"))
    assert merged.keys() == plain.keys()
    changed = set()
    for key, w in plain.items():
        a = adapter.get(f"base_model.model.{key.removesuffix('.weight')}.lora_A.weight")
        b = adapter.get(f"base_model.model.{key.removesuffix('.weight')}.lora_B.weight")
        want = w if a is None else w + (8 / 2) * b @ a  # type: ignore[operator]
        torch.testing.assert_close(merged[key], want, rtol=1e-5, atol=1e-6, msg=key)
        if a is not None:
            changed.add(key.split(".")[-2])
    assert changed == {"q_proj", "down_proj"}


def with_sentence_transformers_files(base: Path, folder: Path) -> Path:
    """A copy of `base` with Qwen3-Embedding's sentence-transformers files (last-token pooling, normalize)."""
    import shutil

    shutil.copytree(base, folder)
    hidden = json.loads((base / "config.json").read_text())["hidden_size"]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"query": "Q: "}}))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": False}))
    return folder


def test_an_exported_embedding_model_loads_in_sentence_transformers_as_its_base(tiny_checkpoint: TinyCheckpoint,
                                                                             tmp_path: Path) -> None:
    """The base's sentence-transformers files go with an exported embedding model (without them
    sentence-transformers loads the folder with mean pooling: other embeddings, silently); a reranker
    written from such a base gets none."""
    st = pytest.importorskip("sentence_transformers")
    from qwen_embed import Embedder

    base = with_sentence_transformers_files(tiny_checkpoint("embedding", tokenizer="small", eos_postprocessor=True),
                                            tmp_path / "base")
    out = write_checkpoint(trained(base), base, tmp_path / "out")
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                 "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    texts = ["alpha beta", "gamma"]
    got = st.SentenceTransformer(str(out), device="cpu").encode(texts, convert_to_numpy=True)
    want = Embedder.from_pretrained(out, device="cpu").encode(texts)
    assert abs(got - want).max() < 1e-5
    reranker = write_checkpoint({f"model.{k}": v for k, v in trained(base).items()}, base, tmp_path / "rr",
                                "causal-lm")
    assert not (reranker / "modules.json").exists() and not (reranker / "1_Pooling").exists()
