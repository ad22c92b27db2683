"""Index under hostile or unlucky use: concurrent writers, duplicates from old runs, maintenance left
undone by a killed run, and metadata filters that try to be more than one expression."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.retrieval import Document, Index
from qwen_embed.retrieval.chunking import ChunkSettings
from qwen_embed.retrieval.index import IndexReport, doc_hash
from qwen_embed.store import bind_where, sql_literal

TOPICS = ["the moon and tides", "baking bread at home", "vaccines and the immune system", "rivers of Europe"]


def corpus(n: int) -> list[Document]:
    return [Document(f"d{i}", f"Notes {i} about {TOPICS[i % 4]}. " * 3, f"T{i}", {"topic": TOPICS[i % 4]})
            for i in range(n)]


def ids_in(index: Index) -> list[str]:
    return index.store.vectors()[0]


@pytest.mark.slow
def test_concurrent_writers_never_duplicate(tmp_path: Path, tiny_embedding_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from qwen_embed.retrieval import Document, Index
        docs = [Document(f"d{{i}}", f"Notes {{i}} about topic {{i % 7}}. " * 20) for i in range(120)]
        index = Index.open({str(tmp_path / "db")!r}, model={str(tiny_embedding_path)!r}, device="cpu",
                           chunk_tokens=32, overlap=4)
        print(index.add(docs, batch_docs=16).summary())
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    index = Index.open(tmp_path / "db", create=False)
    ids = ids_in(index)
    assert len(ids) == len(set(ids)) and len({i.split("#")[0] for i in ids}) == 120
    # one of the two runs did the work, the other found it done
    assert sorted("120 unchanged" in o for o, _ in outs) == [False, True], outs


def test_duplicates_from_old_runs_are_rewritten(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    index.add(corpus(6))
    table = index.store.table  # type: ignore[attr-defined]
    dup = table.search().where("doc_id = 'd2'").limit(None).to_arrow()
    table.add(dup.select([f.name for f in table.schema]).cast(table.schema))  # what two racing writers left
    assert len(ids_in(index)) == 7
    index = Index.open(tmp_path / "db", model=embedder)
    report = index.add(corpus(6))
    ids = ids_in(index)
    assert len(ids) == len(set(ids)) == 6
    assert ("d2", "stored twice by concurrent writers: rewritten") in report.skipped
    hits = index.search("Notes 2 about vaccines", k=6)
    assert len({h.id for h in hits}) == len(hits)


def test_maintenance_left_undone_is_done_by_the_next_run(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    docs = corpus(12)
    settings = ChunkSettings(index.info.chunk_tokens, index.info.overlap)
    for i in range(0, 12, 3):  # commits without the run's final maintenance (killed after its last commit)
        batch = [(d, doc_hash(d)) for d in docs[i : i + 3]]
        rows = index._embed(embedder, batch, settings, IndexReport())
        index.store.replace_documents([d.id for d, _ in batch], rows)
    table = index.store.table  # type: ignore[attr-defined]
    assert table.stats()["fragment_stats"]["num_small_fragments"] == 4
    assert index.store.maintenance_due()
    report = Index.open(tmp_path / "db", model=embedder).add(docs)
    assert report.unchanged == 12
    table.checkout_latest()
    assert table.stats()["fragment_stats"]["num_fragments"] == 1 and not index.store.maintenance_due()


def test_filters_bind_parameters_and_refuse_second_statements(tmp_path: Path, embedder: Embedder) -> None:
    index = Index.open(tmp_path / "db", model=embedder)
    index.add(corpus(8))
    evil = "rivers of Europe' OR 1=1 OR topic = '"
    assert index.search("rivers", k=8, where="topic = :t", params={"t": evil}) == []
    hits = index.search("rivers", k=8, where="topic = :t", params={"t": "rivers of Europe"})
    assert {h.id for h in hits} == {"d3", "d7"}
    for bad, msg in [("topic = 'x'; DROP TABLE documents", "second statement"), ("topic = 'x' -- rest", "comment"),
                     ("topic = 'x' /* c */", "comment"), ("topic = 'x", "unterminated"),
                     ("topic = :t", "no value"), ("chunk / 0 = 1", "not a valid filter")]:
        with pytest.raises(InputError, match=msg) as e:
            index.search("rivers", k=3, where=bad)
        assert ".rs:" not in str(e.value)  # no Rust source locations in a user's one line
    # a ';' or '--' inside a string literal is data, not SQL
    assert index.search("rivers", k=3, where="topic = 'a;b -- c'") == []
    with pytest.raises(InputError, match="does not appear"):
        bind_where("topic = :t", {"t": "x", "u": 1})
    assert bind_where("n > :n AND ok = :b AND x = :s", {"n": 3, "b": True, "s": "it's"}) == \
        "n > 3 AND ok = TRUE AND x = 'it''s'"
    with pytest.raises(InputError, match="finite"):
        sql_literal(float("nan"))
