"""The recipe runner: graph checks before any work, the tiny recipe end to end, resume after a kill in
stage 2 (same final model), and a changed stage-2 setting re-running stage 2 and what follows only."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.recipe import load_recipe, run, status

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "recipe_tiny.yaml"
PROBE = ["The Moon's gravity causes tides", "vaccines train the immune system", "protein folding in cells"]


def write_recipe(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# The held-out evaluations (after every model-making stage, 11 in this test) took two thirds of its time at the
# example's sizes; these still rank real SciFact documents and still see stage 2's change.
EVAL_SIZES = {"max_queries": 20, "max_docs": 300, "max_length": 128}


def tiny_recipe(tmp: Path, shared_data: Path, workdir: Path) -> dict[str, Any]:
    """examples/recipe_tiny.yaml with its data paths pointing at the shared folder, its workdir moved, and
    smaller held-out evaluations (EVAL_SIZES)."""
    raw = yaml.safe_load(EXAMPLE.read_text())

    def fix(v: Any) -> Any:
        if isinstance(v, str) and v.startswith("../shared/data"):
            return str(shared_data) + v[len("../shared/data"):]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    raw = fix(raw)
    raw["workdir"] = str(workdir)
    raw["evaluate"].update(EVAL_SIZES)
    final = next(stage for stage in raw["stages"] if stage["kind"] == "eval")
    final.update(EVAL_SIZES)
    return raw


def small(raw: dict[str, Any], stages: list[dict[str, Any]]) -> dict[str, Any]:
    return {**raw, "stages": stages}


BASE = {"name": "t", "workdir": "w"}


@pytest.mark.parametrize(("stages", "message"), [
    ([{"name": "a", "kind": "nope"}], "unknown kind 'nope'"),
    ([{"name": "a", "kind": "pairs", "sources": [], "colour": 1}], "unknown setting 'colour'"),
    ([{"name": "a", "kind": "mine", "input": "x"}], "needs the setting 'model'"),
    ([{"name": "a", "kind": "pairs", "sources": []}, {"name": "a", "kind": "pairs", "sources": []}], "two stages"),
    ([{"name": "a", "kind": "mine", "model": {"from": "b.model"}, "input": "x"},
      {"name": "b", "kind": "init"}], "later stage 'b'"),
    ([{"name": "a", "kind": "mine", "model": {"from": "b.pairs"}, "input": "x"},
      {"name": "b", "kind": "mine", "model": {"from": "a.pairs"}, "input": "x"}], "cycle: a -> b -> a"),
    ([{"name": "a", "kind": "mine", "model": {"from": "a.pairs"}, "input": "x"}], "cycle"),
    ([{"name": "a", "kind": "init"}, {"name": "b", "kind": "mine", "model": {"from": "a.weights"}, "input": "x"}],
     "outputs model"),
    ([{"name": "a", "kind": "init"}, {"name": "b", "kind": "mine", "model": {"from": "zz.model"}, "input": "x"}],
     "no stage 'zz'"),
    ([{"name": "a", "kind": "init"}, {"name": "b", "kind": "mine", "model": {"from": "a"}, "input": "x"}],
     "STAGE.OUTPUT"),
])
def test_bad_graphs_are_refused_before_any_work(tmp_path: Path, stages: list[dict[str, Any]], message: str) -> None:
    path = write_recipe(tmp_path / "r.yaml", small(BASE, stages))
    with pytest.raises(InputError, match=message):
        load_recipe(path)
    assert not (tmp_path / "w").exists()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.cli import main

    path = write_recipe(tmp_path / "r.yaml", small(BASE, [{"name": "a", "kind": "nope"}]))
    assert main(["recipe", "run", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown kind" in err
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "mine.txt").write_text("user file")
    ok = write_recipe(tmp_path / "ok.yaml", small(BASE, [{"name": "a", "kind": "init"}]))
    assert main(["recipe", "run", str(ok)]) == 2
    assert "no recipe wrote" in capsys.readouterr().err
    assert (tmp_path / "w" / "mine.txt").read_text() == "user file"


def probe(model: Path) -> np.ndarray:
    return Embedder.from_pretrained(model, device="cpu").encode(PROBE)


@pytest.mark.slow
def test_tiny_recipe_end_to_end_resume_and_change(tmp_path: Path, shared_data: Path) -> None:
    # 1. uninterrupted run
    raw = tiny_recipe(tmp_path, shared_data, tmp_path / "a")
    recipe_a = load_recipe(write_recipe(tmp_path / "a.yaml", raw))
    records = run(recipe_a)
    assert [r.status for r in records] == ["ran"] * len(records)
    assert (tmp_path / "a" / "recipe_report.md").is_file()
    report = (tmp_path / "a" / "recipe_report.md").read_text()
    assert "| stage2 | train-embed | ran |" in report and "held-out nDCG@10" in report
    final_a = probe(tmp_path / "a" / "merged" / "model")
    assert {r["state"] for r in status(recipe_a)} == {"done"}
    again = run(recipe_a)
    assert [r.status for r in again] == ["skipped"] * len(records)

    # 2. a second work folder whose stages before stage 2 are done; kill it during stage 2, run again
    raw_b = tiny_recipe(tmp_path, shared_data, tmp_path / "b")
    path_b = write_recipe(tmp_path / "b.yaml", raw_b)
    (tmp_path / "b").mkdir()
    for name in ("weak", "labelled", "vocab", "init", "stage1", "mined"):
        shutil.copytree(tmp_path / "a" / name, tmp_path / "b" / name)
    shutil.copy(tmp_path / "a" / ".recipe.json", tmp_path / "b" / ".recipe.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "qwen_embed", "recipe", "run", str(path_b)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "b" / "stage2.partial" / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any((p / "state.pt").is_file() for p in ckpts.glob("step-*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the recipe finished before it could be killed in stage 2"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "b" / "stage2.partial").is_dir() and not (tmp_path / "b" / "stage2").exists()
    recipe_b = load_recipe(path_b)
    assert [r["state"] for r in status(recipe_b)][:7] == ["done"] * 6 + ["partial"]
    records_b = run(recipe_b)
    assert [r.status for r in records_b] == ["skipped"] * 6 + ["ran"] * 3
    np.testing.assert_allclose(probe(tmp_path / "b" / "merged" / "model"), final_a, atol=1e-5)

    # 3. change a stage-2 setting: stage 2 and what follows re-run, stage 1 does not
    raw_b["stages"][6]["config"]["optim"]["lr"] = 5.0e-4
    recipe_c = load_recipe(write_recipe(path_b, raw_b))
    states = {r["stage"]: r["state"] for r in status(recipe_c)}
    assert states["stage1"] == "done" and states["stage2"] == "changed" and states["final"] == "changed"
    records_c = run(recipe_c)
    assert [r.status for r in records_c] == ["skipped"] * 6 + ["ran"] * 3
    assert np.abs(probe(tmp_path / "b" / "merged" / "model") - final_a).max() > 1e-4


def test_a_lora_training_stage_feeds_a_merge_stage(tmp_path: Path, small_embedding_path: Path) -> None:
    """A LoRA stage's checkpoints are adapters: its record listed none (`checkpoints: []`), so a merge of them
    failed, and with `merge_at_end: false` its model was run/model, which does not exist. Now each adapter is
    folded into the base under merged-lora/ (the trainer's own merge formula: the fold of the last checkpoint
    equals the model the trainer merged itself), and the merge stage merges them."""
    from safetensors.torch import load_file

    from qwen_embed.recipe import stage_fingerprints

    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(f'{{"query": "what is thing {i}", "positive": "thing {i} is of kind {i % 7}"}}\n'
                            for i in range(48)))

    def lora_stage(name: str, merge_at_end: bool) -> dict[str, Any]:
        return {"name": name, "kind": "train-embed", "config": {
            "model": {"path": str(small_embedding_path), "device": "cpu"},
            "data": {"train_files": [str(rows)], "num_negatives": 0, "query_max_length": 16, "doc_max_length": 16},
            "optim": {"lr": 5e-3, "warmup_steps": 1},
            "train": {"max_steps": 2, "batch_size": 8, "save_every": 1, "keep_checkpoints": 2, "grad_cache": False,
                      "progress": False},
            "lora": {"enabled": True, "r": 4, "alpha": 8, "merge_at_end": merge_at_end}}}

    stages = [lora_stage("s1", True), lora_stage("s2", False),
              {"name": "merged", "kind": "merge", "models": {"from": "s2.checkpoints"}, "last": 2, "method": "linear"}]
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", small(BASE, stages)))
    records = run(recipe, say=lambda m: None)
    work = tmp_path / "w"
    folded = ["merged-lora/step-00000001", "merged-lora/step-00000002"]
    assert records[0].outputs == {"model": "run/model", "checkpoints": folded, "log": "run/train_log.jsonl"}
    assert records[1].outputs == {"model": "merged-lora/final", "checkpoints": folded, "log": "run/train_log.jsonl"}
    weights = {p: load_file(work / p / "model.safetensors") for p in
               ["s1/run/model", "s1/" + folded[1], "s2/" + folded[0], "s2/" + folded[1], "s2/merged-lora/final"]}
    base = load_file(small_embedding_path / "model.safetensors")
    for key, value in weights["s1/run/model"].items():  # the trainer's in-memory merge, and the fold: equal
        torch.testing.assert_close(weights["s1/" + folded[1]][key], value, rtol=1e-5, atol=1e-6)
    assert {k: v.equal(weights["s2/merged-lora/final"][k]) for k, v in weights["s2/" + folded[1]].items()} == \
        dict.fromkeys(base, True)  # the last checkpoint's adapter is the final one
    assert not weights["s2/" + folded[0]]["layers.0.self_attn.q_proj.weight"].equal(
        base["layers.0.self_attn.q_proj.weight"])  # trained: not the base
    assert probe(work / "merged" / "model").shape == (3, 64)
    report = yaml.safe_load((work / "merged" / "model" / "merge_report.json").read_text())
    assert report["inputs"] == [str(work / "s2" / p) for p in folded] and report["output"] == str(
        work / "merged" / "model")
    assert [r["state"] for r in status(recipe)] == ["done"] * 3
    assert set(stage_fingerprints(recipe)) == {"s1", "s2", "merged"}
