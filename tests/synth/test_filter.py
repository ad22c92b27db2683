"""The cosine filter: kept or dropped at the threshold against cosines computed here, duplicates removed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import DEFAULT_INSTRUCTION, Embedder, format_query
from qwen_embed.cli import main
from qwen_embed.errors import InputError
from qwen_embed.files import OutputExistsError
from qwen_embed.synth import filter_pairs

ROWS = [
    {"query": "how do vaccines train the immune system", "positive": "Vaccines expose the body to antigens.",
     "instruction": "Given a question seeking knowledge, retrieve passages that answer the question",
     "meta": {"n": 0}},
    {"query": "coral bleaching causes", "positive": "Warm water makes corals expel their algae.",
     "instruction": "Given search keywords, retrieve passages that match the topic the keywords describe"},
    {"query": "is sourdough leavened by wild yeast", "positive": "A starter holds wild yeast and bacteria."},
    {"query": "central bank rate decision effects", "positives": ["Rates move borrowing costs.", "unused"],
     "instruction": "Given a request for an overview of a topic, retrieve passages that summarise it"},
    {"query": "python memory leak in web service", "positive": "Reference cycles keep objects alive.",
     "instruction": "Given a yes-or-no question, retrieve passages that answer it"},
    {"query": "plants for a dry garden", "positive": "Lavender and sage need little water."},
]


def reference_cosines(emb: Embedder, rows: list[dict]) -> np.ndarray:
    """Each pair alone: the query templated with its instruction (else the default), unnormalised vectors."""
    out = []
    for r in rows:
        q = emb.encode([format_query(r["query"], r.get("instruction") or DEFAULT_INSTRUCTION)], normalize=False)[0]
        pos = r["positive"] if "positive" in r else r["positives"][0]
        d = emb.encode([pos], normalize=False)[0]
        out.append(float(q @ d / np.linalg.norm(q) / np.linalg.norm(d)))
    return np.array(out)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_threshold_and_duplicates(embedder: Embedder, tmp_path: Path) -> None:
    dup = {**ROWS[0], "meta": {"n": "duplicate"}}
    src = write(tmp_path / "pairs.jsonl", [*ROWS, dup])
    ref = reference_cosines(embedder, ROWS)
    everything = filter_pairs(src, tmp_path / "all.jsonl", embedder=embedder, min_cos=-1.0)
    assert everything["rows"] == 7 and everything["duplicates"] == 1 and everything["kept"] == 6
    kept = [json.loads(ln) for ln in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert [r["query"] for r in kept] == [r["query"] for r in ROWS] and kept[0]["meta"]["n"] == 0
    assert np.allclose([r["meta"]["cos"] for r in kept], ref, atol=1e-5)
    for k, c in enumerate(ref):
        for threshold in (c - 1e-4, c + 1e-4):
            out = tmp_path / f"kept-{k}-{threshold > c}.jsonl"
            s = filter_pairs(src, out, embedder=embedder, min_cos=float(threshold))
            queries = {json.loads(ln)["query"] for ln in out.read_text().splitlines()}
            assert (ROWS[k]["query"] in queries) == (threshold < c)
            clear = [i for i, ci in enumerate(ref) if abs(ci - threshold) > 2e-4]
            assert all((ROWS[i]["query"] in queries) == (ref[i] > threshold) for i in clear)
            assert s["kept"] == len(queries) and s["kept"] + s["below_min_cos"] == 6


def test_default_instruction_is_applied(embedder: Embedder, tmp_path: Path) -> None:
    row = ROWS[2]  # no instruction of its own
    src = write(tmp_path / "one.jsonl", [row])
    filter_pairs(src, tmp_path / "a.jsonl", embedder=embedder, min_cos=-1.0)
    filter_pairs(src, tmp_path / "b.jsonl", embedder=embedder, min_cos=-1.0, default_instruction="Find the text")
    a = json.loads((tmp_path / "a.jsonl").read_text())["meta"]["cos"]
    b = json.loads((tmp_path / "b.jsonl").read_text())["meta"]["cos"]
    q = embedder.encode([row["query"]], instruction="Find the text")[0]
    assert abs(b - float(q @ embedder.encode([row["positive"]])[0])) < 1e-5
    assert abs(a - reference_cosines(embedder, [row])[0]) < 1e-5 and abs(a - b) > 1e-4


def test_bad_inputs_and_existing_output(embedder: Embedder, tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.jsonl", [])
    with pytest.raises(InputError, match="holds no rows"):
        filter_pairs(empty, tmp_path / "o.jsonl", embedder=embedder)
    assert not (tmp_path / "o.jsonl").exists()
    bad = write(tmp_path / "bad.jsonl", [{"query": "q"}])
    with pytest.raises(InputError, match=r"bad\.jsonl:1: needs 'positive'"):
        filter_pairs(bad, tmp_path / "o.jsonl", embedder=embedder)
    (tmp_path / "exists.jsonl").write_text("mine\n")
    with pytest.raises(OutputExistsError):
        filter_pairs(write(tmp_path / "p.jsonl", ROWS), tmp_path / "exists.jsonl", embedder=embedder)
    assert (tmp_path / "exists.jsonl").read_text() == "mine\n"
    with pytest.raises(InputError, match="not a cosine"):
        filter_pairs(tmp_path / "p.jsonl", tmp_path / "o.jsonl", embedder=embedder, min_cos=1.5)


def test_cli(tiny_embedding_path: Path, embedder: Embedder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write(tmp_path / "pairs.jsonl", [*ROWS, ROWS[1]])
    ref = reference_cosines(embedder, ROWS)
    threshold = float(np.median(ref))
    assert main(["synth", "filter", str(src), "--embedding-model", str(tiny_embedding_path), "--device", "cpu",
                 "--min-cos", str(threshold), "-o", str(tmp_path / "kept.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert summary["duplicates"] == 1 and summary["kept"] == int((ref > threshold).sum())
