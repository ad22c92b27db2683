"""The standard-library pairs: docstrings stripped by the AST, unique queries, a stable split."""

from __future__ import annotations

import json
from pathlib import Path

from qwen_embed.train.stdlib_pairs import _strip_docstring, collect_pairs, is_held_out, write_pairs


def test_strip_docstring_keeps_the_code() -> None:
    src = 'def f(a):\n    """Doc line.\n\n    More."""\n    return a + 1\n'
    assert _strip_docstring(src) == "def f(a):\n    return a + 1\n"
    assert _strip_docstring("def g():\n    'only a docstring'\n") == "def g():\n    pass\n"
    assert _strip_docstring("def h():\n    return 1\n") == "def h():\n    return 1\n"


def test_pairs_are_unique_and_deterministic(tmp_path: Path) -> None:
    pairs = collect_pairs(["shutil", "textwrap", "fnmatch"])
    assert len(pairs) > 20
    assert len({p.query for p in pairs}) == len(pairs)
    assert [p.name for p in pairs] == sorted(p.name for p in pairs)
    assert all('"""' not in p.source.split("\n", 2)[1] for p in pairs)  # the docstring is gone
    assert collect_pairs(["shutil", "textwrap", "fnmatch"]) == pairs
    assert is_held_out("shutil.copyfile") == is_held_out("shutil.copyfile")
    held = sum(is_held_out(f"mod.f{i}") for i in range(2000))
    assert 150 < held < 250  # about 10 %


def test_write_pairs_rows(tmp_path: Path) -> None:
    train, held, n_train, n_held = write_pairs(tmp_path)
    rows = [json.loads(ln) for ln in train.read_text().splitlines()]
    assert len(rows) == n_train and n_held == len(held.read_text().splitlines())
    assert set(rows[0]) == {"query", "positive", "task", "id"} and rows[0]["task"] == "code"
    assert not {r["id"] for r in rows} & {json.loads(ln)["id"] for ln in held.read_text().splitlines()}
