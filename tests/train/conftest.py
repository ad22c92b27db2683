"""Fixtures of the training tests: synthetic rows (the checkpoint is tests/conftest.py's `small_embedding_path`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from qwen_embed.processes import child_context

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
         "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon", "phi", "chi", "psi", "omega"]


def make_rows(n: int, negatives: int = 2, tasks: tuple[str, ...] = ("a",)) -> list[dict[str, object]]:
    """Deterministic synthetic rows with distinct texts (the content does not matter to these tests)."""
    rows = []
    for i in range(n):
        w = [WORDS[(i * 7 + k) % len(WORDS)] for k in range(4)]
        rows.append({
            "query": f"what is {w[0]} {i}",
            "positive": f"{w[0]} {w[1]} is the answer number {i} " + " ".join(w),
            "negatives": [f"{w[2]} {w[3]} unrelated {i} {k}" for k in range(negatives)],
            "task": tasks[i % len(tasks)],
        })
    return rows


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_ranks(fn: Callable[..., None], nprocs: int, *args: Any) -> None:
    """`fn(rank, *args)` in `nprocs` processes, waited for (torch's `start_processes`); they are forked from
    qwen-embed's fork server, as its own children are (processes.py: torch is imported once, not per rank)."""
    child_context()  # its preload, should this call start the server
    mp.start_processes(fn, args=args, nprocs=nprocs, start_method="forkserver", join=True)


@pytest.fixture(scope="session")
def train_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("train-data") / "train.jsonl", make_rows(64))


@pytest.fixture(scope="session")
def small_ckpt(small_embedding_path: Path) -> Path:
    """The small embedding checkpoint (an alias of the shared factory's `small_embedding_path`)."""
    return small_embedding_path


def assert_same_grads(ours: Mapping[str, torch.Tensor | None], ref: Mapping[str, torch.Tensor | None]) -> None:
    """Same parameter names; each gradient within 1e-5 of the largest one plus 1e-4 of itself, elementwise,
    and each parameter's own largest difference under 1e-3 of its largest gradient."""
    assert sorted(ours) == sorted(ref)
    scale = max(float(g.abs().max()) for g in ref.values() if g is not None)
    assert scale > 0
    for name, g in ref.items():
        mine = ours[name]
        assert g is not None and mine is not None, name
        gap = (mine - g).abs()
        assert bool((gap <= 1e-5 * scale + 1e-4 * g.abs()).all()), f"{name}: gradients differ by {float(gap.max())}"
        assert float(gap.max()) <= 1e-3 * float(g.abs().max()), f"{name}: {float(gap.max())} of {float(g.abs().max())}"
