"""`make demo` runs end to end offline, on tiny checkpoints, and labels its output as meaningless."""

from __future__ import annotations

from pathlib import Path

import pytest

from qwen_embed import demo
from qwen_embed.store import open_store


def test_demo_falls_back_to_tiny_models_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert demo.main(["--db", str(tmp_path / "db"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-Embedding-0.6B is not available" in out and "Qwen/Qwen3-Reranker-0.6B is not available" in out
    assert out.count(demo.TINY_LABEL) == 2
    assert "== 1. Embed and rerank" in out and "cosine similarity" in out and "rerank: P(yes)" in out
    assert "== 2. Index and search (42 sample documents" in out
    assert out.count("search: ") == len(demo.SEARCHES)
    assert open_store(tmp_path / "db").count() == 42
    # the filtered search returns cooking documents only (doc-10 .. doc-13 in the sample corpus)
    cooking = out.split("[where topic = 'cooking']")[1].split("done in")[0]
    ranked = [line.split()[2] for line in cooking.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert len(ranked) == 3 and set(ranked) <= {"doc-10", "doc-11", "doc-12", "doc-13"}, ranked
