"""Learning on real text: a tiny model from random weights learns docstring -> source retrieval.

The pairs are built from this machine's Python standard library (first docstring line vs the function
source without its docstring; the held-out split is by name). The recipe is examples/train_tiny.yaml
with the paths pointed at a temporary folder; a byte-level BPE is trained on the training rows so
that the tiny model sees short sequences.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from qwen_embed.train.config import load_config
from qwen_embed.train.loop import Trainer
from qwen_embed.train.stdlib_pairs import train_tokenizer, write_pairs

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_model_learns_stdlib_retrieval(tmp_path: Path, tiny_checkpoint: Callable[..., Path]) -> None:
    train, held, n_train, n_held = write_pairs(tmp_path / "data")
    assert n_train > 1000 and n_held > 100
    tok = train_tokenizer(train, tmp_path / "data" / "tokenizer.json", 2048)
    init = tiny_checkpoint("embedding", tokenizer=str(tok))
    cfg = load_config(REPO / "examples" / "train_tiny.yaml", [
        f"model.path={init}", f"data.train_files=[{train}]", f"eval.file={held}",
        f"train.output_dir={tmp_path / 'run'}", "train.progress=false"])
    Trainer(cfg).run()
    evals = [json.loads(ln) for ln in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    recall = {r["step"]: r["eval"]["recall@10"] for r in evals if "eval" in r}
    chance = 10 / n_held
    print(f"held-out Recall@10 by step: {recall} (chance {chance:.3f}, {n_held} held-out pairs)")
    assert recall[0] < 0.25  # a random model: near chance
    assert recall[cfg.train.max_steps] >= 0.5
