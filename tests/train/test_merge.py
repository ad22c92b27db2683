"""Checkpoint merging: equality with mergekit's own functions, exact endpoints, layouts, streaming memory, errors.

The reference is mergekit itself (a dev dependency; `mergekit/merge_methods/slerp.py`, `multislerp.py`,
`nuslerp.py`), called on the same tensors: our streaming merge must agree within 1e-6 in float32.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qwen_embed import Embedder, Reranker
from qwen_embed.cli import main
from qwen_embed.tiny import make_checkpoint
from qwen_embed.train.merge import merge_checkpoints
from qwen_embed.weights import WeightReader, safetensors_files

TEXTS = ["the heart pumps blood", "rivers flow into the sea"]


def state_of(folder: Path) -> dict[str, torch.Tensor]:
    reader = WeightReader(safetensors_files(folder))
    return {k: reader.get(k) for k in reader.where}


def fine_tuned(base: Path, out: Path, seed: int, scale: float = 0.01) -> Path:
    """A copy of `base` with small random changes on every tensor (a stand-in for a fine-tuned checkpoint)."""
    shutil.copytree(base, out)
    g = torch.Generator().manual_seed(seed)
    for f in safetensors_files(out):
        state = load_file(str(f))
        save_file({k: v + scale * v.std() * torch.randn(v.shape, generator=g) for k, v in state.items()}, str(f),
                  metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("merge")
    base = make_checkpoint(d / "base", tokenizer="small", seed=0)
    return {
        "a": make_checkpoint(d / "a", tokenizer="small", seed=1),
        "b": make_checkpoint(d / "b", tokenizer="small", seed=2, shards=3),
        "c": make_checkpoint(d / "c", tokenizer="small", seed=3),
        "base": base,
        "ft1": fine_tuned(base, d / "ft1", seed=11),
        "ft2": fine_tuned(base, d / "ft2", seed=12),
    }


def max_diff(out: Path, ref: dict[str, torch.Tensor]) -> float:
    got = state_of(out)
    assert set(got) == set(ref)
    return max(float((got[k] - ref[k]).abs().max()) for k in ref)


# -- equality with mergekit ------------------------------------------------------------------------
def mergekit(name: str) -> Any:
    """A mergekit module (the reference; a dev dependency): only the equality tests skip without it."""
    return pytest.importorskip(f"mergekit.merge_methods.{name}", reason="mergekit (dev extra) is not installed")


def test_slerp_equals_mergekit(ckpts: dict[str, Path], tmp_path: Path) -> None:
    a, b = state_of(ckpts["a"]), state_of(ckpts["b"])
    merge_checkpoints([ckpts["a"], ckpts["b"]], tmp_path / "m", method="slerp", t=0.3)
    ref = {k: mergekit("slerp").slerp(torch.tensor([0.3]), a[k][None], b[k][None])[0] for k in a}
    assert max_diff(tmp_path / "m", ref) <= 1e-6


def test_slerp_of_near_colinear_checkpoints_is_linear_and_reported(ckpts: dict[str, Path], tmp_path: Path) -> None:
    x, y = state_of(ckpts["ft1"]), state_of(ckpts["ft2"])
    report = merge_checkpoints([ckpts["ft1"], ckpts["ft2"]], tmp_path / "m", method="slerp", t=0.3)
    ref = {k: mergekit("slerp").slerp(torch.tensor([0.3]), x[k][None], y[k][None])[0] for k in x}
    assert max_diff(tmp_path / "m", ref) <= 1e-6
    saved = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    groups = saved["groups"]
    assert set(groups) == {"embeddings", "attention", "mlp", "norms"}
    assert sum(g["tensors"] for g in groups.values()) == len(x)
    # fine-tuned copies of one base are < 1 degree apart: every tensor falls back to lerp (|cos| > 0.9995)
    assert all(g["linear_fallback"] == g["tensors"] for g in groups.values())
    assert all(0 < g["angle_deg"]["max"] < 1.8 for g in groups.values())
    assert "equals a weighted average" in report.table()


def mk_group(tensors: list[torch.Tensor], base: torch.Tensor | None) -> object:
    ts = tensors + ([base] if base is not None else [])
    return mergekit("base").TensorGroup.from_tensors(ts, base_index=len(tensors) if base is not None else None)


@pytest.mark.parametrize("with_base", [False, True])
def test_multislerp_three_models_equals_mergekit(ckpts: dict[str, Path], tmp_path: Path, with_base: bool) -> None:
    names = ["ft1", "ft2", "c"] if with_base else ["a", "b", "c"]
    states = [state_of(ckpts[n]) for n in names]
    base = state_of(ckpts["base"]) if with_base else None
    w = [0.5, 0.3, 0.2]
    merge_checkpoints([ckpts[n] for n in names], tmp_path / "m", method="multislerp", weights=[5, 3, 2],
                      base=ckpts["base"] if with_base else None)
    weight = mergekit("base").PerInputValues(list(enumerate(w)))
    ref = {k: mergekit("multislerp").multislerp.implementation(
        mk_group([s[k].clone() for s in states], base[k] if base else None), weight=weight) for k in states[0]}
    assert max_diff(tmp_path / "m", ref) <= 1e-6


def test_task_slerp_equals_mergekit_nuslerp_with_base(ckpts: dict[str, Path], tmp_path: Path) -> None:
    x, y, base = state_of(ckpts["ft1"]), state_of(ckpts["ft2"]), state_of(ckpts["base"])
    report = merge_checkpoints([ckpts["ft1"], ckpts["ft2"]], tmp_path / "m", method="task-slerp", t=0.3,
                               base=ckpts["base"])
    weight = mergekit("base").PerInputValues([(0, 0.7), (1, 0.3)])
    ref = {k: mergekit("nuslerp").nuslerp_merge_method.implementation(mk_group([x[k], y[k]], base[k]), weight=weight)
           for k in x}
    assert max_diff(tmp_path / "m", ref) <= 1e-6
    # the task vectors are independent noise: ~90 degrees apart, no fallback
    for g in report.to_dict()["groups"].values():
        assert g["linear_fallback"] == 0 and 80 < g["angle_deg"]["mean"] < 100


def test_linear_is_the_weighted_average(ckpts: dict[str, Path], tmp_path: Path) -> None:
    a, b = state_of(ckpts["a"]), state_of(ckpts["b"])
    assert main(["merge", str(ckpts["a"]), str(ckpts["b"]), "-o", str(tmp_path / "m"), "--method", "linear",
                 "--weights", "3,1"]) == 0
    got = state_of(tmp_path / "m")
    for k in a:
        np.testing.assert_allclose(got[k].numpy(), 0.75 * a[k].numpy() + 0.25 * b[k].numpy(), atol=1e-7)


# -- exact endpoints and identity ------------------------------------------------------------------
@pytest.mark.parametrize("t,which", [(0.0, "a"), (1.0, "b")])
def test_slerp_endpoints_reproduce_the_inputs_exactly(ckpts: dict[str, Path], tmp_path: Path, t: float,
                                                      which: str) -> None:
    merge_checkpoints([ckpts["a"], ckpts["b"]], tmp_path / "m", method="slerp", t=t)
    want, got = state_of(ckpts[which]), state_of(tmp_path / "m")
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("method", ["linear", "slerp", "multislerp", "task-slerp"])
def test_model_merged_with_itself_is_itself(ckpts: dict[str, Path], tmp_path: Path, method: str) -> None:
    base = ckpts["base"] if method == "task-slerp" else None
    merge_checkpoints([ckpts["ft1"], ckpts["ft1"]], tmp_path / "m", method=method, base=base)
    want, got = state_of(ckpts["ft1"]), state_of(tmp_path / "m")
    assert all(torch.equal(got[k], want[k]) for k in want)


# -- layouts, loading ------------------------------------------------------------------------------
def test_embedding_merge_loads_in_embedder_and_transformers(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m"
    merge_checkpoints([ckpts["a"], ckpts["b"]], out, method="slerp", t=0.5, max_shard_size="200KB")
    assert (out / "model.safetensors.index.json").is_file() and len(safetensors_files(out)) > 1
    assert json.loads((out / "config.json").read_text()) == json.loads((ckpts["a"] / "config.json").read_text())
    assert (out / "tokenizer.json").read_bytes() == (ckpts["a"] / "tokenizer.json").read_bytes()
    ours = Embedder.from_pretrained(out, device="cpu").encode_documents(TEXTS)
    from transformers import AutoModel

    _, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert ours.shape == (2, 64) and np.isfinite(ours).all()


def test_mixed_layouts_keep_the_first_models(tmp_path: Path) -> None:
    rer = make_checkpoint(tmp_path / "rer", "reranker", tokenizer="small", seed=4, tie_word_embeddings=False)
    rer2 = make_checkpoint(tmp_path / "rer2", "reranker", tokenizer="small", seed=5, tie_word_embeddings=False,
                           shards=2)
    emb = make_checkpoint(tmp_path / "emb", "embedding", tokenizer="small", seed=6)
    # reranker + reranker: causal-LM keys and lm_head kept; Reranker and transformers load it
    merge_checkpoints([rer, rer2], tmp_path / "rr", method="slerp", t=0.3)
    keys = set(state_of(tmp_path / "rr"))
    assert "lm_head.weight" in keys and all(k.startswith("model.") or k == "lm_head.weight" for k in keys)
    scores = Reranker.from_pretrained(tmp_path / "rr", device="cpu").score("query", TEXTS)
    assert len(scores) == 2
    from transformers import AutoModelForCausalLM

    _, info = AutoModelForCausalLM.from_pretrained(tmp_path / "rr", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # embedding first, reranker second: matched through the trunk mapping, embedding layout out
    merge_checkpoints([emb, rer], tmp_path / "er", method="linear")
    er, e, r = state_of(tmp_path / "er"), state_of(emb), state_of(rer)
    assert set(er) == set(e)
    k = "layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(er[k], (e[k] + r["model." + k]) / 2, rtol=0, atol=1e-7)
    Embedder.from_pretrained(tmp_path / "er", device="cpu")
    # converted seq-cls rerankers: score.weight is merged as the head group
    cls1 = make_checkpoint(tmp_path / "cls1", "seq-cls", tokenizer="small", seed=8)
    cls2 = make_checkpoint(tmp_path / "cls2", "seq-cls", tokenizer="small", seed=9, shards=2)
    report = merge_checkpoints([cls1, cls2], tmp_path / "cc", method="slerp", t=0.5)
    assert report.to_dict()["groups"]["head"]["tensors"] == 1 and "score.weight" in state_of(tmp_path / "cc")
    Reranker.from_pretrained(tmp_path / "cc", device="cpu").score("query", TEXTS)
    # reranker (with lm_head) first, embedding second: the head is missing there -> refused, naming it
    with pytest.raises(Exception, match=r"lm_head\.weight"):
        merge_checkpoints([rer, emb], tmp_path / "re", method="linear")
    assert not (tmp_path / "re").exists()


# -- memory ----------------------------------------------------------------------------------------
RSS_SCRIPT = """
import resource, sys, torch
torch.set_num_threads(1)
from qwen_embed.train.merge import merge_checkpoints
small, big, out = sys.argv[1:4], sys.argv[4:7], sys.argv[7]
merge_checkpoints(small, out + "-warm-up", method="multislerp", weights=[1, 2, 3])  # imports, first-use caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
merge_checkpoints(big, out, method="multislerp", weights=[1, 2, 3], max_shard_size="3MB")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_peak_memory_is_about_one_tensor_per_input(ckpts: dict[str, Path], tmp_path: Path) -> None:
    shape = dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                 intermediate_size=512, tokenizer="small", shards=6)
    paths = [make_checkpoint(tmp_path / f"m{i}", seed=i, **shape) for i in range(3)]  # type: ignore[arg-type]
    size = sum(f.stat().st_size for f in safetensors_files(paths[0]))
    assert size > 15e6 and len(safetensors_files(paths[0])) == 6
    src = Path(__file__).resolve().parents[2] / "src"
    small = [ckpts[n] for n in ("a", "b", "c")]
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(RSS_SCRIPT), *map(str, small + paths),
                          str(tmp_path / "o")], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"})
    grew = int(out.stdout.strip().splitlines()[-1])
    # one input (19.6 MB) + a small constant; measured: 12 MB streaming, 59 MB with every shard kept mapped
    assert grew < size + 4e6, (grew, size)
    assert len(safetensors_files(tmp_path / "o")) > 1


# -- bad input -------------------------------------------------------------------------------------
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["merge", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def assert_nothing_left(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_bad_settings_are_one_line_errors(ckpts: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = str(ckpts["a"]), str(ckpts["b"]), str(ckpts["c"])
    out = str(tmp_path / "o")
    assert "exactly 2 models" in run_cli([a, "-o", out], capsys)
    assert "exactly 2 models" in run_cli([a, b, c, "-o", out, "--method", "slerp"], capsys)
    assert "2 values for 3 models" in run_cli([a, b, c, "-o", out, "--method", "multislerp", "--weights", "1,2"],
                                              capsys)
    assert "needs --base" in run_cli([a, b, "-o", out, "--method", "task-slerp"], capsys)
    assert "[0, 1]" in run_cli([a, b, "-o", out, "--t", "1.5"], capsys)
    assert "not sum to 0" in run_cli([a, b, "-o", out, "--method", "linear", "--weights", "1,-1"], capsys)
    assert_nothing_left(tmp_path, "o")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "mine.txt").write_text("keep")
    assert "--overwrite" in run_cli([a, b, "-o", out], capsys)
    assert main(["merge", a, b, "-o", out, "--overwrite"]) == 0
    assert (tmp_path / "o" / "mine.txt").read_text() == "keep" and (tmp_path / "o" / "model.safetensors").is_file()


def test_bad_checkpoints_are_refused_before_writing(ckpts: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    a = str(ckpts["a"])
    small = make_checkpoint(tmp_path / "small", tokenizer="small", hidden_size=32, head_dim=8)
    assert "hidden_size=32" in run_cli([a, str(small), "-o", str(tmp_path / "o")], capsys)
    # same config, one tensor of another shape: named with both shapes
    odd = tmp_path / "odd"
    shutil.copytree(ckpts["a"], odd)
    state = load_file(str(odd / "model.safetensors"))
    state["norm.weight"] = torch.ones(63)
    save_file(state, str(odd / "model.safetensors"))
    err = run_cli([a, str(odd), "-o", str(tmp_path / "o")], capsys)
    assert "norm.weight" in err and "[64]" in err and "[63]" in err
    # another architecture
    other = tmp_path / "llama"
    shutil.copytree(ckpts["a"], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaModel"], "model_type": "llama"}))
    assert "LlamaModel" in run_cli([a, str(other), "-o", str(tmp_path / "o")], capsys)
    # a truncated shard
    cut = tmp_path / "cut"
    shutil.copytree(ckpts["b"], cut)
    shard = safetensors_files(cut)[1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    assert "truncated" in run_cli([a, str(cut), "-o", str(tmp_path / "o")], capsys)
    assert_nothing_left(tmp_path, "o")


def test_a_shard_that_breaks_mid_merge_leaves_nothing(ckpts: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.train import merge

    calls = {"n": 0}
    real_get = WeightReader.get

    def flaky(self: WeightReader, key: str) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 9:
            shard = self.where[key]
            shard.write_bytes(shard.read_bytes()[:100])  # the file is cut while we read it
        return real_get(self, key)

    cut = tmp_path / "cut"
    shutil.copytree(ckpts["b"], cut)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(merge.WeightReader, "get", flaky)
        err = run_cli([str(ckpts["a"]), str(cut), "-o", str(tmp_path / "o")], capsys)
    assert "truncated" in err or "cannot be read" in err
    assert_nothing_left(tmp_path, "o")


# -- merge-lora, one of the merge methods ------------------------------------------------------------
def test_merge_lora_keeps_a_reranker_base_layout_and_equals_peft(tmp_path: Path) -> None:
    from qwen_embed.checkpoint import Checkpoint
    from qwen_embed.train.lora import add_lora, lora_config, merge_lora, save_adapter

    base = make_checkpoint(tmp_path / "rer", "reranker", tokenizer="small", seed=7, tie_word_embeddings=False,
                           shards=2)
    ck = Checkpoint.load(base, "cpu", "float32", want_head=False)
    cfg = lora_config(r=4, alpha=8)
    model = add_lora(ck.model, cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    save_adapter(model, cfg, tmp_path / "adapter")
    want = {k: v.detach() for k, v in merge_lora(model).state_dict().items()}  # peft's merge, in memory
    assert main(["merge-lora", "--base", str(base), "--adapter", str(tmp_path / "adapter"), "-o",
                 str(tmp_path / "m")]) == 0
    got, orig = state_of(tmp_path / "m"), state_of(base)
    assert set(got) == set(orig) and "lm_head.weight" in got  # the causal-LM layout is kept
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["Qwen3ForCausalLM"]
    for k, v in want.items():
        torch.testing.assert_close(got["model." + k], v, rtol=0, atol=1e-6)
    assert torch.equal(got["lm_head.weight"], orig["lm_head.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], orig[q])
    Reranker.from_pretrained(tmp_path / "m", device="cpu").score("query", TEXTS)


# -- the training config's merge section -------------------------------------------------------------
def run_config(small_ckpt: Path, train_file: Path, out: Path, merge: dict[str, object], lora: bool = False) -> object:
    from qwen_embed.train.config import TrainConfig

    return TrainConfig.from_dict({
        "model": {"path": str(small_ckpt), "device": "cpu"},
        "data": {"train_files": [str(train_file)], "num_negatives": 0, "query_max_length": 16, "doc_max_length": 24},
        "optim": {"lr": 5e-3, "warmup_steps": 1},
        "train": {"output_dir": str(out), "batch_size": 8, "max_steps": 3, "save_every": 1, "keep_checkpoints": 3,
                  "progress": False, "grad_cache": False},
        "eval": {"file": str(train_file), "every": 100, "max_queries": 16},
        "lora": {"enabled": lora, "r": 4, "alpha": 8},
        "merge": merge,
    })


@pytest.mark.parametrize("lora", [False, True])
def test_a_run_merges_its_last_checkpoints_and_evaluates_them(small_ckpt: Path, train_file: Path, tmp_path: Path,
                                                              lora: bool) -> None:
    from qwen_embed.train.loop import Trainer

    cfg = run_config(small_ckpt, train_file, tmp_path / "run", {"method": "multislerp", "checkpoints": "last-3",
                                                                 "weights": [1, 1, 2]}, lora=lora)
    Trainer(cfg).run()  # type: ignore[arg-type]
    merged = tmp_path / "run" / "merged"
    report = json.loads((merged / "merge_report.json").read_text())
    assert [Path(p).parts[-2] for p in report["inputs"]] == ["step-00000001", "step-00000002", "step-00000003"]
    assert all(Path(p).is_dir() and Path(p).name == ("adapter" if lora else "model") for p in report["inputs"])
    scores = json.loads((merged / "held_out_eval.json").read_text())
    assert list(scores["inputs"]) == ["step-00000001", "step-00000002", "step-00000003"]
    assert set(scores["merged"]) == {"recall@10", "mrr@10", "ndcg@10", "recall_at_10", "mrr_at_10", "ndcg_at_10"}
    Embedder.from_pretrained(merged, device="cpu").encode_documents(TEXTS)
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".merge-inputs")]


def test_merge_settings_are_checked_when_the_config_is_read(small_ckpt: Path, train_file: Path,
                                                            tmp_path: Path) -> None:
    from qwen_embed.errors import ConfigError

    cfg = run_config(small_ckpt, train_file, tmp_path, {"method": "linear", "checkpoints": [2, "step-00000003"]})
    assert cfg.merge.checkpoints == [2, "step-00000003"]  # type: ignore[attr-defined]
    bad = [({"method": "soup"}, "unknown"), ({"method": "slerp", "checkpoints": "last-3"}, "exactly 2"),
           ({"method": "linear", "checkpoints": "last-5"}, "keep_checkpoints >= 5"),
           ({"method": "linear", "checkpoints": "newest"}, "last-K"),
           ({"method": "multislerp", "weights": [1, 2]}, "2 values for 3"),
           ({"method": "slerp", "checkpoints": "last-2", "t": 2.0}, "[0, 1]"),
           ({"method": "linear", "checkpoints": 3}, "must be str or list")]
    for merge, msg in bad:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            run_config(small_ckpt, train_file, tmp_path, merge)


@pytest.mark.slow
def test_scifact_run_merges_and_scores_on_real_pairs(shared_data: Path, small_ckpt: Path, tmp_path: Path) -> None:
    """Real SciFact (claim, abstract) pairs: a short run, its last 3 checkpoints merged and scored on held-out
    test claims. The merge of nearby checkpoints scores like them (docs/train.md has the full-size figures)."""
    from qwen_embed.tokenizer import document_text
    from qwen_embed.train.loop import Trainer

    from .conftest import write_jsonl

    src = shared_data / "beir" / "scifact"
    corpus = map(json.loads, (src / "corpus.jsonl").read_text().splitlines())
    docs = {r["_id"]: document_text(r.get("title"), r.get("text")) for r in corpus}
    queries = {r["_id"]: r["text"] for r in map(json.loads, (src / "queries.jsonl").read_text().splitlines())}

    def rows(split: str, n: int) -> list[dict[str, object]]:
        lines = (src / "qrels" / f"{split}.tsv").read_text().splitlines()[1 : n + 1]
        return [{"query": queries[q], "positive": docs[d]} for q, d, _ in (ln.split("\t") for ln in lines)]

    train = write_jsonl(tmp_path / "train.jsonl", rows("train", 64))
    held = write_jsonl(tmp_path / "test.jsonl", rows("test", 48))
    cfg = run_config(small_ckpt, train, tmp_path / "run", {"method": "multislerp", "checkpoints": "last-3"})
    cfg.eval.file = str(held)  # type: ignore[attr-defined]
    cfg.train.max_steps = 4  # type: ignore[attr-defined]
    Trainer(cfg).run()  # type: ignore[arg-type]
    scores = json.loads((tmp_path / "run" / "merged" / "held_out_eval.json").read_text())
    inputs = [m["ndcg@10"] for m in scores["inputs"].values()]
    assert len(inputs) == 3 and min(inputs) - 0.1 <= scores["merged"]["ndcg@10"] <= max(inputs) + 0.1
