"""Issue 11.10: the docs say what the code does (commands in order, paths that exist, real token ids,
every public method)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

import qwen_embed
from qwen_embed import Embedder, Reranker

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md")}


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines()]


def test_readme_training_command_follows_its_two_preparation_steps() -> None:
    config = (REPO / "examples" / "train_tiny.yaml").read_text(encoding="utf-8")
    lines = _lines(README)
    train = next(i for i, ln in enumerate(lines) if ln.startswith("qwen-embed train embed --config examples/"))
    pairs = next(i for i, ln in enumerate(lines) if ln.startswith("qwen-embed train stdlib-pairs data/stdlib"))
    tiny = next(i for i, ln in enumerate(lines) if ln.startswith("qwen-embed make-tiny runs/tiny-init"))
    assert pairs < tiny < train
    # what the two steps write is what the config reads
    assert "path: runs/tiny-init" in config and "data/stdlib/train.jsonl" in config
    assert "--tokenizer data/stdlib/tokenizer.json" in lines[tiny]


def test_dataset_examples_use_the_folder_the_download_step_makes() -> None:
    for name, text in {"README.md": README, **DOCS}.items():
        datasets = [d for d in re.findall(r"--dataset ([\w/$.-]+)", text) if d != "DIR"]
        if not any(d.startswith(("data/", "beir/")) for d in datasets):
            continue
        assert "unzip -q" in text and "-d data" in text, f"{name} uses --dataset without its download step"
        for d in datasets:
            assert d.startswith("data/"), f"{name}: --dataset {d} is not where the download step unpacks"
            zipname = d.removeprefix("data/").replace("$d", "")
            assert zipname == "" or f"{zipname}.zip" in text or "$d.zip" in text, f"{name}: {d} is never downloaded"


def test_tokenize_example_has_the_real_tokenizers_ids(shared_data: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(shared_data / "tokenizers" / "qwen" / "tokenizer.json"))
    text = DOCS["server.md"]
    m = re.search(r"curl -s localhost:8000/tokenize .*?-d '(\{.*?\})'\n(\[\[.*?\]\])\n", text)
    assert m, "docs/server.md has a /tokenize example with its output"
    sent, shown = json.loads(m.group(1)), json.loads(m.group(2))[0]
    enc = tok.encode(sent["inputs"], add_special_tokens=False)
    want = [*enc.ids, tok.token_to_id("<|endoftext|>")]
    assert [t["id"] for t in shown] == want
    assert [(t["start"], t["stop"]) for t in shown[:-1]] == [tuple(o) for o in enc.offsets]
    assert [t["text"] for t in shown] == [tok.decode([i], skip_special_tokens=False) for i in want]


def _public(cls: type) -> list[str]:
    return [n for n, _ in inspect.getmembers(cls) if not n.startswith("_")]


@pytest.mark.parametrize("cls_name", ["Embedder", "Reranker", "Index"])
def test_every_public_method_is_documented(cls_name: str) -> None:
    from qwen_embed.retrieval import Index

    cls = {"Embedder": Embedder, "Reranker": Reranker, "Index": Index}[cls_name]
    api = DOCS["api.md"]
    missing = [n for n in _public(cls) if f"{cls_name}.{n}" not in api and f".{n}`" not in api
               and f", .{n}" not in api]
    assert not missing, f"docs/api.md does not document {cls_name}: {missing}"
    for name in _public(cls):
        assert inspect.getdoc(getattr(cls, name)), f"{cls_name}.{name} has no docstring"


def test_every_top_level_name_is_documented() -> None:
    api = DOCS["api.md"]
    assert all(f"`{n}" in api for n in qwen_embed.__all__), [n for n in qwen_embed.__all__ if f"`{n}" not in api]
    assert "docs/api.md" in README
