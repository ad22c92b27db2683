"""`make demo` offline: with the demo models shipped in the package it ranks the sample corpus sensibly (each
search's expected document in its top 3, by embedding and after reranking; part 1's best document first);
with `--tiny` it runs on random checkpoints and labels its output as meaningless."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest

from qwen_embed import Embedder, Reranker, demo
from qwen_embed.retrieval import Index
from qwen_embed.store import open_store

# the document that answers each search of demo.SEARCHES (ids of qwen_embed/data/sample_corpus.jsonl), and
# the document of demo.DOCUMENTS that answers each query of demo.QUERIES
EXPECTED = {"why do we have tides": "doc-01", "how does a vaccine protect me": "doc-06",
            "what makes bread light and airy": "doc-10"}
BEST = {"What is the capital of China?": 0, "Explain gravity": 1}

needs_demo_models = pytest.mark.skipif(demo.demo_model("embedding") is None or demo.demo_model("reranker") is None,
                                       reason="the package has no demo models (qwen_embed/data/demo-models)")


def _offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))


def _top3(out: str, query: str) -> list[str]:
    """The ids of the three hits printed under the search for `query`."""
    part = out.split(f"search: {query!r}")[1].split("search: ")[0]
    return [line.split()[2] for line in part.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]


@needs_demo_models
def test_demo_offline_uses_the_shipped_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _offline(tmp_path, monkeypatch)
    assert demo.main(["--db", str(tmp_path / "db"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "using the shipped demo embedding model" in out and "using the shipped demo reranker model" in out
    assert out.count(demo.DEMO_LABEL) == 2 and demo.TINY_LABEL not in out
    assert {q for q, _ in demo.SEARCHES} == set(EXPECTED)
    for query in EXPECTED:  # every search printed its three hits
        assert len(_top3(out, query)) == 3, query


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Embedder, Reranker, Index]]:
    """The demo's offline models (no hub, no cache) and the sample corpus indexed with them."""
    tmp = tmp_path_factory.mktemp("demo")
    with pytest.MonkeyPatch.context() as mp:
        _offline(tmp, mp)
        with demo.load_models(demo.DEFAULT_EMBEDDING_MODEL, demo.DEFAULT_RERANKER_MODEL, "cpu", False) as (
                emb, rr, notes):
            assert len(notes) == 2 and all("shipped demo" in n for n in notes), notes
            index, count, _ = demo.index_sample_corpus(emb, tmp / "db")
            assert count == 42
            yield emb, rr, index


# Where the shipped models miss (their README, "What they score"): checks beyond issue 21's acceptance (the
# demo's reranked top 3, which they meet). Strict: a model that gets one right makes its test fail until the mark
# is removed.
MISSES = "the shipped 7M-parameter demo embedder ranks doc-01 13th by embedding alone (demo-models/README.md)"


def missing(queries: Iterable[str], miss: str, reason: str) -> list[object]:
    """`queries` as test parameters, `miss` marked as a strict expected failure for `reason`."""
    return [pytest.param(q, marks=pytest.mark.xfail(strict=True, reason=reason)) if q == miss else q for q in queries]


@needs_demo_models
@pytest.mark.parametrize("query", missing(EXPECTED, "why do we have tides", MISSES))
def test_shipped_embedder_finds_each_searchs_document_in_the_top_3(
        shipped: tuple[Embedder, Reranker, Index], query: str) -> None:
    _, _, index = shipped
    by_embedding = [h.id for h in index.search(query, k=3, where=dict(demo.SEARCHES)[query])]
    assert EXPECTED[query] in by_embedding, by_embedding


@pytest.fixture(scope="module")
def reranked(shipped: tuple[Embedder, Reranker, Index]) -> Callable[[str], list[str]]:
    """The ids of a demo search's reranked top 3, as the demo searches (its filter, demo.CANDIDATES), each
    search run once for the tests below (a top 1 is the top 3's first: both rerank the same candidates)."""
    _, rr, index = shipped
    done: dict[str, list[str]] = {}

    def top3(query: str) -> list[str]:
        if query not in done:
            hits = index.search(query, k=3, reranker=rr, candidates=demo.CANDIDATES, where=dict(demo.SEARCHES)[query])
            done[query] = [h.id for h in hits]
        return done[query]

    return top3


@needs_demo_models
@pytest.mark.parametrize("query", list(EXPECTED))
def test_shipped_reranker_keeps_each_searchs_document_in_the_top_3(reranked: Callable[[str], list[str]],
                                                                   query: str) -> None:
    assert EXPECTED[query] in reranked(query), reranked(query)


@needs_demo_models
@pytest.mark.parametrize("query", list(BEST))
def test_shipped_embedder_picks_part_1s_answer(shipped: tuple[Embedder, Reranker, Index], query: str) -> None:
    emb, _, _ = shipped
    sims = emb.encode_queries([query]) @ emb.encode_documents(demo.DOCUMENTS).T  # [1, documents]
    assert int(np.argmax(sims[0])) == BEST[query], sims


@needs_demo_models
@pytest.mark.parametrize("query", list(EXPECTED))
def test_shipped_reranker_puts_each_searchs_document_first(reranked: Callable[[str], list[str]], query: str) -> None:
    assert reranked(query)[0] == EXPECTED[query], reranked(query)


# Natural questions over the sample corpus, not its titles (none of them is a training pair): the document
# that answers each
NATURAL = {"why is the sky blue": "doc-31", "how do plants make food from sunlight": "doc-05",
           "what does a hash table do": "doc-22", "when did the wright brothers fly": "doc-16",
           "how long is a marathon": "doc-40", "why does sugar cause cavities": "doc-30",
           "what is inflation": "doc-35", "how does compound interest grow": "doc-36",
           "why are there volcanoes in iceland": "doc-21", "how do rainbows form": "doc-34",
           "what is the offside rule": "doc-39", "why do leaves turn red in autumn": "doc-09",
           "how much water should I drink": "doc-28", "who invented the printing press": "doc-14",
           "why does water boil at lower temperature on mountains": "doc-33", "what do mitochondria do": "doc-08",
           "how does sleep help memory": "doc-07", "why is mars red": "doc-02", "what is a light year": "doc-03",
           "how should I store basil": "doc-13"}


@needs_demo_models
@pytest.mark.slow  # ~28 s: 62 searches reranking 20 candidates each
def test_shipped_models_answer_natural_questions_and_titles(shipped: tuple[Embedder, Reranker, Index]) -> None:
    """The model card's figures: the reranker adds to the embedder on questions it was not trained on (first
    12 of 20 vs 11; the reranker shipped before put 3 first) and finds nearly every document by its title."""
    _, rr, index = shipped
    by_embedding = [index.search(q, k=3)[0].id == d for q, d in NATURAL.items()]
    reranked = [[h.id for h in index.search(q, k=3, reranker=rr, candidates=demo.CANDIDATES)] for q in NATURAL]
    first = sum(r[0] == d for r, d in zip(reranked, NATURAL.values(), strict=True))
    assert first >= max(10, sum(by_embedding)), (first, sum(by_embedding))
    assert sum(d in r for r, d in zip(reranked, NATURAL.values(), strict=True)) >= 13
    titles = [(d["title"], d["id"]) for d in map(json.loads, demo.sample_corpus().read_text().splitlines())]
    top3 = sum(d in [h.id for h in index.search(t, k=3, reranker=rr, candidates=demo.CANDIDATES)] for t, d in titles)
    assert top3 >= 40, top3


RERANKER_MISSES = ("the shipped demo reranker ranks 'Water boils at 100 degrees...' above the gravity document "
                   "(demo-models/README.md)")


@needs_demo_models
@pytest.mark.parametrize("query", missing(BEST, "Explain gravity", RERANKER_MISSES))
def test_shipped_reranker_picks_part_1s_answer(shipped: tuple[Embedder, Reranker, Index], query: str) -> None:
    _, rr, _ = shipped
    scores = rr.score(query, demo.DOCUMENTS)
    assert int(np.argmax(scores)) == BEST[query], scores


def test_demo_runs_on_tiny_models_with_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _offline(tmp_path, monkeypatch)
    assert demo.main(["--db", str(tmp_path / "db"), "--device", "cpu", "--tiny"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen3-Embedding-0.6B is not available (--tiny was given); using a tiny random-weight" in out
    assert "Qwen/Qwen3-Reranker-0.6B is not available (--tiny was given); using a tiny random-weight" in out
    assert out.count(demo.TINY_LABEL) == 2
    # the label is printed before part 1 and again after the last search: it points at nothing ("below")
    assert out.index(demo.TINY_LABEL) < out.index("== 1.") and out.rindex(demo.TINY_LABEL) > out.rindex("search: ")
    assert "below" not in out[out.rindex("search: "):], out[out.rindex("search: "):]
    assert "== 1. Embed and rerank" in out and "cosine similarity" in out and "rerank: P(yes)" in out
    assert "== 2. Index and search (42 sample documents" in out
    assert out.count("search: ") == len(demo.SEARCHES)
    assert open_store(tmp_path / "db").count() == 42
    # the filtered search returns cooking documents only (doc-10 .. doc-13 in the sample corpus)
    cooking = out.split("[where topic = 'cooking']")[1].split("done in")[0]
    ranked = [line.split()[2] for line in cooking.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])]
    assert len(ranked) == 3 and set(ranked) <= {"doc-10", "doc-11", "doc-12", "doc-13"}, ranked
