"""Fixtures of the synthetic-data tests: the scripted OpenAI-compatible server and input files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from .fake_llm import FakeLLM

PERSONAS = Path(str(resources.files("qwen_embed.synth") / "data" / "personas_example.jsonl"))

TOPICS = ["blood pressure tablets in older adults", "coral bleaching on tropical reefs",
          "sourdough starters and wild yeast", "interest rate decisions of central banks",
          "memory leaks in Python web services", "drought-tolerant garden plants"]


def passage_text(case: str, n: int) -> str:
    """A passage of a few sentences carrying its script tag."""
    topic = TOPICS[n % len(TOPICS)]
    return (f"[case:{case}#{n}] This report looks at {topic}. Researchers measured outcomes over "
            f"{n + 3} years in {n + 2} sites, and the results point to clear differences between groups.")


def write_passages(path: Path, cases: list[str]) -> Path:
    with path.open("w") as f:
        for n, case in enumerate(cases):
            f.write(json.dumps({"id": f"p{n}", "title": f"Study {n}", "text": passage_text(case, n)}) + "\n")
    return path


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()
