"""Inputs: passages and personas in both formats, and the top personas of a passage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, format_query
from qwen_embed.errors import InputError
from qwen_embed.synth import PersonaIndex, read_passages, read_personas
from qwen_embed.synth.sources import PERSONA_INSTRUCTION

from .conftest import PERSONAS


def test_passages_jsonl_and_lines(tmp_path: Path) -> None:
    jl = tmp_path / "p.jsonl"
    jl.write_text('{"id": 7, "title": "Reefs", "text": "Corals bleach. "}\n\n{"text": "No id here"}\n'
                  '{"_id": "d3", "text": "BEIR style"}\n')
    assert [(p.id, p.text) for p in read_passages(jl)] == [("7", "Reefs Corals bleach."), ("1", "No id here"),
                                                           ("d3", "BEIR style")]
    txt = tmp_path / "p.txt"
    txt.write_text("first passage\n\n  second passage  \n")
    assert [(p.id, p.text) for p in read_passages(txt)] == [("0", "first passage"), ("1", "second passage")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(InputError, match="needs a string field 'text'"):
        read_passages(bad)


def test_personas_jsonl_and_lines(tmp_path: Path) -> None:
    personas = read_personas(PERSONAS)
    assert len(personas) == 40 and len(set(personas)) == 40
    txt = tmp_path / "personas.txt"
    txt.write_text("A nurse\n\nA  farmer \n")
    assert read_personas(txt) == ["A nurse", "A farmer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"name": "x"}) + "\n")
    with pytest.raises(InputError, match="'persona'"):
        read_personas(bad)


def test_top_personas_match_a_brute_force_ranking(embedder: Embedder) -> None:
    personas = read_personas(PERSONAS)
    texts = ["Warm water makes corals expel their algae.", "How to feed a sourdough starter.",
             "Central banks raised interest rates again."]
    top = PersonaIndex(embedder, personas, k=5).top(texts)
    for text, got in zip(texts, top, strict=True):
        q = embedder.encode([format_query(text, PERSONA_INSTRUCTION)], normalize=False)[0]
        d = embedder.encode(personas, normalize=False)
        cos = d @ q / np.linalg.norm(d, axis=1) / np.linalg.norm(q)
        want = [personas[i] for i in np.argsort(-cos, kind="stable")[:5]]
        assert got == want
    assert len(PersonaIndex(embedder, personas[:3], k=5).top(texts[:1])[0]) == 3  # fewer personas than k
