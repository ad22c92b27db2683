"""Shared fixtures: tiny random-weight checkpoints made once per session, and the shared data folder.

`../shared/data` beside the repository holds real data (BEIR SciFact, the real Qwen tokenizer,
trec_eval outputs); tests that need it take the `shared_data` fixture and skip, saying why, when it
is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

# One thread per test process and per subprocess it starts: 2 threads on 2 shared cores made a
# 20-step training test 10x slower. Set before torch starts its pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from qwen_embed import Embedder, Reranker  # noqa: E402
from qwen_embed.tiny import make_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the repository in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_embedding_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny embedding checkpoint (hidden 64, 2 layers); real Qwen tokenizer when ../shared has it."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-embedding", "embedding")


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny causal-LM reranker checkpoint (hidden 64, 2 layers)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-reranker", "reranker")


@pytest.fixture(scope="session")
def embedder(tiny_embedding_path: Path) -> Embedder:
    return Embedder.from_pretrained(tiny_embedding_path, device="cpu")


@pytest.fixture(scope="session")
def reranker(tiny_reranker_path: Path) -> Reranker:
    return Reranker.from_pretrained(tiny_reranker_path, device="cpu")
