"""Quantized indexes through the Index API on SciFact (tiny model): quality kept against float search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.eval import load_beir
from qwen_embed.retrieval import Document, Index
from qwen_embed.tiny import make_checkpoint
from tests.reference import forward_once


@pytest.fixture(scope="module")
def scifact_subset(shared_data: Path) -> tuple[list[Document], list[str]]:
    ds = load_beir(shared_data / "beir" / "scifact", "test")
    docs = [Document(i, t[:600]) for i, t in zip(ds.corpus_ids[:800], ds.corpus_texts[:800], strict=True) if t]
    return docs, ds.query_texts[:40]


@pytest.fixture(scope="module")
def wide_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    path = make_checkpoint(tmp_path_factory.mktemp("q") / "emb", "embedding", hidden_size=128, intermediate_size=256)
    return Embedder.from_pretrained(path, device="cpu")


@pytest.mark.slow
def test_int8_and_binary_rescore_keep_the_float_ranking(tmp_path: Path, wide_embedder: Embedder,
                                                        scifact_subset: tuple[list[Document], list[str]],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    docs, queries = scifact_subset
    ran = forward_once(wide_embedder, monkeypatch)
    top: dict[str, list[list[str]]] = {}
    for precision in ("float32", "int8", "binary"):
        index = Index.open(tmp_path / precision, model=wide_embedder, precision=precision, chunk_tokens=256)
        before = len(ran)
        index.add(docs, batch_docs=400)
        # the first table runs the trunk; the others embed the same chunks in the same batches
        assert (len(ran) > before) if precision == "float32" else (len(ran) == before)
        assert index.info.precision == precision
        again = Index.open(tmp_path / precision, model=wide_embedder)
        assert again.info.precision == precision and len(again) == len(index)
        top[precision] = [[h.id for h in index.search(q, 10)] for q in queries]
        if precision == "binary":
            top["binary-no-rescore"] = [[h.id for h in index.search(q, 10, rescore_multiplier=0)] for q in queries]
        with pytest.raises(InputError, match="different precisions"):
            Index.open(tmp_path / precision, model=wide_embedder, precision="float16" if precision != "float16"
                       else "int8")

    def recall(name: str) -> float:
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top[name], top["float32"], strict=True)]))

    r_int8, r_bin, r_plain = recall("int8"), recall("binary"), recall("binary-no-rescore")
    assert r_int8 >= 0.9, r_int8
    assert r_bin > r_plain, (r_bin, r_plain)  # rescoring with int8 recovers part of what the sign bits lose


def test_cli_index_precision_and_search_rescore(tmp_path: Path, tiny_embedding_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from qwen_embed.cli import main

    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(12):
        (notes / f"n{i}.txt").write_text(f"note {i} about topic {i % 4} and more words")
    db = str(tmp_path / "db")
    model = ["--model", str(tiny_embedding_path), "--device", "cpu"]
    assert main(["index", str(notes), "--db", db, "--precision", "binary", *model]) == 0
    assert Index.open(db, create=False).info.precision == "binary"
    capsys.readouterr()
    assert main(["search", "note 3 topic", "--db", db, "--k", "3", "--rescore-multiplier", "2", "--device", "cpu"]) == 0
    assert len([ln for ln in capsys.readouterr().out.splitlines() if ".txt" in ln]) == 3
    assert main(["index", str(notes), "--db", db, "--precision", "int8", *model]) == 2
    assert "different precisions" in capsys.readouterr().err
