"""Hard-negative mining: positives and too-close candidates dropped, n sampled, resumable, deterministic."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder
from qwen_embed.embedder import DEFAULT_INSTRUCTION
from qwen_embed.errors import InputError
from qwen_embed.train import mining
from qwen_embed.train.mining import MiningSettings, mine, select_negatives

from .conftest import make_rows, write_jsonl


def test_select_negatives_rules() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1], dtype=np.float32)
    s = MiningSettings(top_k=5, num_negatives=2, margin=0.15)
    # positive is id 1 (0.8), limit 0.65; the top-5 of the others are 0, 2, 3, 4, 5, of which 0 (0.9) and
    # 2 (0.7) score above the limit: 2 of {3, 4, 5} are sampled, best first.
    got = select_negatives(scores, {1}, s, random.Random(0))
    assert len(got) == 2 and set(got) <= {3, 4, 5} and scores[got[0]] > scores[got[1]]
    assert {tuple(select_negatives(scores, {1}, s, random.Random(seed))) for seed in range(20)} == {
        (3, 4), (3, 5), (4, 5)}
    few = select_negatives(scores, {1}, MiningSettings(top_k=4, num_negatives=5, margin=0.15), random.Random(0))
    assert few == [3, 4]  # fewer candidates than n: all of them, best first


def test_mine_writes_rows_that_obey_the_rules(small_embedder: Embedder, tmp_path: Path) -> None:
    rows = make_rows(30, negatives=0)
    src = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "mined.jsonl"
    s = MiningSettings(top_k=10, num_negatives=3, margin=0.0, chunk=7)
    stats = mine(small_embedder, src, out, settings=s)
    assert stats["rows"] == 30 and stats["corpus"] == 30
    mined = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [m["query"] for m in mined] == [r["query"] for r in rows]
    corpus = [str(r["positive"]) for r in rows]
    c = small_embedder.encode_documents(corpus)
    for r, m in zip(rows, mined, strict=True):
        assert m["positive"] not in m["negatives"] and len(m["negatives"]) <= 3
        q = small_embedder.encode([str(r["query"])], instruction=DEFAULT_INSTRUCTION)[0]
        pos = float(c[corpus.index(m["positive"])] @ q)
        assert all(float(c[corpus.index(n)] @ q) <= pos + 1e-5 for n in m["negatives"])
    assert sum(len(m["negatives"]) == 3 for m in mined) >= 10
    assert not list(tmp_path.glob("mined.jsonl.*"))  # no leftovers: partial, progress, corpus cache


def test_mine_resumes_after_an_interruption(small_embedder: Embedder, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(20, negatives=2))
    s = MiningSettings(top_k=8, num_negatives=2, chunk=5)
    mine(small_embedder, src, tmp_path / "ref.jsonl", settings=s)
    real, calls = mining._embed_queries, []

    def flaky(*args: object, **kw: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mining, "_embed_queries", flaky)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        mine(small_embedder, src, out, settings=s)
    assert not out.exists()
    assert json.loads((tmp_path / "out.jsonl.progress.json").read_text())["done"] == 10
    monkeypatch.setattr(mining, "_embed_queries", real)
    done_before = []
    monkeypatch.setattr(mining, "_embed_queries", lambda *a, **k: done_before.append(1) or real(*a, **k))
    mine(small_embedder, src, out, settings=s)
    assert len(done_before) == 2  # only the two chunks that were missing
    assert out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()


def test_a_second_run_on_the_same_output_is_refused_while_one_runs(small_embedder: Embedder, tmp_path: Path) -> None:
    """Two runs appending chunks to one partial file would interleave and repeat rows: while a run holds it,
    another is refused in one line and changes nothing; afterwards the output is written whole."""
    from qwen_embed.files import OutputBusyError, OutputLock

    src = write_jsonl(tmp_path / "rows.jsonl", make_rows(6, negatives=1))
    out = tmp_path / "mined.jsonl"
    partial = tmp_path / "mined.jsonl.partial"
    partial.write_bytes(b"")
    s = MiningSettings(top_k=4, num_negatives=1, chunk=2)
    with OutputLock(partial), pytest.raises(OutputBusyError) as refused:
        mine(small_embedder, src, out, settings=s)
    assert len(str(refused.value).splitlines()) == 1 and str(out) in str(refused.value)
    assert partial.read_bytes() == b"" and not out.exists()
    mine(small_embedder, src, out, settings=s)
    assert len(out.read_text().splitlines()) == 6 and not partial.exists()



@pytest.mark.parametrize(("changes", "says"), [
    ({"margin": float("nan")}, "margin=nan (--margin) must be a finite number in [-2, 2)"),
    ({"margin": float("inf")}, "margin=inf"), ({"margin": -float("inf")}, "margin=-inf"),
    ({"margin": 2.0}, "margin=2.0"), ({"margin": -2.5}, "margin=-2.5"), ({"margin": True}, "margin=True"),
    ({"top_k": 0}, "top_k=0 (--top-k) must be a whole number >= 1 (default 50)"),
    ({"num_negatives": 0}, "num_negatives=0"), ({"chunk": 0}, "chunk=0"),
])
def test_settings_that_cannot_mine_are_refused_before_anything_is_read(tmp_path: Path, changes: dict[str, object],
                                                                       says: str) -> None:
    s = MiningSettings(**changes)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=re.escape(says)):
        mine(None, tmp_path / "absent.jsonl", tmp_path / "out.jsonl", settings=s)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    MiningSettings(margin=-2.0).check()
    MiningSettings(margin=1.99, top_k=1, num_negatives=1, chunk=1).check()
