"""The per-task instruction table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qwen_embed.eval.instructions import OFFICIAL_DEFAULT, TASK_INSTRUCTIONS, is_known, lookup


def test_lookup_normalises_names_and_falls_back() -> None:
    covid = "Given a query on COVID-19, retrieve documents that answer the query"
    assert lookup("TREC-COVID") == lookup("TRECCOVID") == covid
    assert lookup("scifact") == "Given a scientific claim, retrieve documents that support or refute the claim"
    assert lookup("ArguAna") == "Given a claim, find documents that refute the claim"
    assert lookup("CQADupstackEnglishRetrieval") == lookup("CQADupstackRetrieval")
    assert is_known("CQADupstackTexRetrieval")
    assert lookup("SomeNewTask") == OFFICIAL_DEFAULT and not is_known("SomeNewTask")


def test_table_matches_the_public_copy(shared_data: Path) -> None:
    path = shared_data / "qwen3_task_prompts.hkust_copy.json"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    src = json.loads(path.read_text())
    assert src["default"] == OFFICIAL_DEFAULT
    for task, instruction in TASK_INSTRUCTIONS.items():
        ref = src.get(task, instruction)
        assert instruction == (ref["query"] if isinstance(ref, dict) else ref), task
