"""MTEB's @k measures (at_k.py) against values worked by hand and a small reference written here from the
definitions: nDCG@k with trec_eval's linear gains (gain = grade, log2(rank + 1) discount, ideal ranking of
every judged grade), recall@k and MAP@k over all relevant documents (pytrec_eval's recall / map_cut),
P@k over k, MRR@k of the first document with grade > 0 and hit rate (success); ranking by score
descending, ties by docno descending (trec_eval, pytrec_eval and MTEB's MRR all break ties so)."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.at_k import DEFAULT_K, check_ks, mteb_scores, query_scores
from qwen_embed.eval.metrics import Prefix, rank_query

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]
KINDS = ("ndcg_at", "map_at", "recall_at", "precision_at", "mrr_at", "hit_rate_at")


# -- an independent reference from the definitions ---------------------------------------------------------
def ranking(scores: Mapping[str, float]) -> list[str]:
    """Score descending, ties by docno descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda x: (x[1], x[0]), reverse=True)]


def reference(judged: Mapping[str, int], scores: Mapping[str, float], k: int) -> dict[str, float]:
    """The six @k measures of one query, straight from their definitions (relevant: grade >= 1)."""
    top = ranking(scores)[:k]
    relevant = {d for d, g in judged.items() if g >= 1}
    hits = [d in relevant for d in top]
    n_rel = len(relevant)
    dcg = sum(max(judged.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    precisions = [sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h]
    return {
        f"ndcg_at_{k}": dcg / idcg if idcg else 0.0,
        f"map_at_{k}": sum(precisions) / n_rel if n_rel else 0.0,
        f"recall_at_{k}": sum(hits) / n_rel if n_rel else 0.0,
        f"precision_at_{k}": sum(hits) / k,
        f"mrr_at_{k}": next((1.0 / (i + 1) for i, h in enumerate(hits) if h), 0.0),
        f"hit_rate_at_{k}": 1.0 if any(hits) else 0.0,
    }


def reference_all(judged: Mapping[str, int], scores: Mapping[str, float], ks: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out.update(reference(judged, scores, k))
    return out


# -- a hand-worked example ----------------------------------------------------------------------------------
# q1: graded; d1/d9 tie at 0.8 (docno descending puts d9 first); d5 is judged -1 (pooled, unjudged); d4 is
#     relevant and never retrieved; ranking d3(0) d9(-) d1(2) d2(1) d5(-1), 5 documents.
# q2: judged, nothing relevant. q3: one relevant, ranked first.
# "only-run" has no judgments and "only-qrels" no results: neither is evaluated.
QRELS: Qrels = {
    "q1": {"d1": 2, "d2": 1, "d3": 0, "d4": 1, "d5": -1},
    "q2": {"a": 0, "b": 0},
    "q3": {"x": 1},
    "only-qrels": {"z": 1},
}
RUN: Run = {
    "q1": {"d3": 0.9, "d1": 0.8, "d9": 0.8, "d2": 0.5, "d5": 0.1},
    "q2": {"a": 1.0, "c": 0.5},
    "q3": {"x": 3.0, "y": 2.0},
    "only-run": {"x": 1.0},
}
IDCG_Q1 = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)  # grades 2, 1, 1 (d4 counts, unretrieved)
HAND_Q1 = {
    1: {"ndcg": 0.0, "map": 0.0, "recall": 0.0, "precision": 0.0, "mrr": 0.0, "hit_rate": 0.0},
    3: {"ndcg": (2 / math.log2(4)) / IDCG_Q1, "map": (1 / 3) / 3, "recall": 1 / 3, "precision": 1 / 3,
        "mrr": 1 / 3, "hit_rate": 1.0},
    10: {"ndcg": (2 / math.log2(4) + 1 / math.log2(5)) / IDCG_Q1, "map": (1 / 3 + 2 / 4) / 3, "recall": 2 / 3,
         "precision": 2 / 10, "mrr": 1 / 3, "hit_rate": 1.0},  # k = 10 > the 5 retrieved
}
HAND_Q3 = {
    1: {"ndcg": 1.0, "map": 1.0, "recall": 1.0, "precision": 1.0, "mrr": 1.0, "hit_rate": 1.0},
    3: {"ndcg": 1.0, "map": 1.0, "recall": 1.0, "precision": 1 / 3, "mrr": 1.0, "hit_rate": 1.0},
    10: {"ndcg": 1.0, "map": 1.0, "recall": 1.0, "precision": 1 / 10, "mrr": 1.0, "hit_rate": 1.0},
}


def flat(hand: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    return {f"{m}_at_{k}": v for k, row in hand.items() for m, v in row.items()}


def test_query_scores_worked_by_hand() -> None:
    """Graded gains, a tie, an unretrieved relevant document and k beyond the ranking."""
    got = query_scores(rank_query(QRELS["q1"], RUN["q1"]), [1, 3, 10])
    assert got == pytest.approx(flat(HAND_Q1), abs=1e-12)
    assert query_scores(rank_query(QRELS["q3"], RUN["q3"]), [1, 3, 10]) == pytest.approx(flat(HAND_Q3), abs=1e-12)


def test_linear_gain_not_exponential() -> None:
    """A grade-3 document at rank 2 under a grade-1 one: trec_eval's gain is the grade, not 2^grade - 1."""
    got = query_scores(rank_query({"a": 1, "b": 3}, {"a": 2.0, "b": 1.0}), [2])["ndcg_at_2"]
    linear = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    exponential = (1 + 7 / math.log2(3)) / (7 + 1 / math.log2(3))
    assert got == pytest.approx(linear, abs=1e-12) and abs(linear - exponential) > 0.05


def test_ties_are_broken_by_docno_descending() -> None:
    """Two documents with one score: the larger docno ranks first, whatever the dict order."""
    for scores in ({"a": 1.0, "b": 1.0}, {"b": 1.0, "a": 1.0}):
        assert query_scores(rank_query({"a": 1}, scores), [1, 2])["mrr_at_1"] == 0.0
        assert query_scores(rank_query({"b": 1}, scores), [1, 2])["mrr_at_1"] == 1.0
        assert query_scores(rank_query({"a": 1}, scores), [1, 2])["mrr_at_2"] == 0.5


def test_query_without_relevant_documents_scores_zero() -> None:
    got = query_scores(rank_query(QRELS["q2"], RUN["q2"]), [1, 5])
    assert got == {f"{m}_{k}": 0.0 for k in (1, 5) for m in KINDS}


def test_names_in_cutoff_order_and_a_deeper_prefix_changes_nothing() -> None:
    rr = rank_query(QRELS["q1"], RUN["q1"])
    got = query_scores(rr, [1, 3, 10])
    assert list(got) == [f"{m}_{k}" for k in (1, 3, 10) for m in KINDS]
    assert query_scores(rr, [1, 3, 10], Prefix.of(rr, 50)) == got


def test_mteb_scores_mean_over_queries_with_judgments_and_results() -> None:
    mean, per_query = mteb_scores(QRELS, RUN, [10, 1, 3])  # any order in, ascending out
    assert sorted(per_query) == ["q1", "q2", "q3"]  # not only-qrels, not only-run
    assert per_query["q1"] == pytest.approx(flat(HAND_Q1), abs=1e-12)
    assert per_query["q3"] == pytest.approx(flat(HAND_Q3), abs=1e-12)
    assert list(mean) == [f"{m}_{k}" for k in (1, 3, 10) for m in KINDS]
    expected = {n: (flat(HAND_Q1)[n] + 0.0 + flat(HAND_Q3)[n]) / 3 for n in mean}
    assert mean == pytest.approx(expected, abs=1e-12)


def test_mteb_scores_default_cutoffs() -> None:
    mean, _ = mteb_scores(QRELS, RUN)
    assert DEFAULT_K == (1, 3, 5, 10, 100)
    assert set(mean) == {f"{m}_{k}" for k in DEFAULT_K for m in KINDS}
    assert mean["precision_at_100"] == pytest.approx((2 / 100 + 0 + 1 / 100) / 3, abs=1e-12)


def _random_case(seed: int) -> tuple[Qrels, Run]:
    rnd = random.Random(seed)
    qrels: Qrels = {}
    run: Run = {}
    for q in range(8):
        pool = [f"d{i:02d}" for i in range(30)]
        qrels[f"q{q}"] = {d: rnd.choice([-1, 0, 0, 1, 1, 2, 3]) for d in rnd.sample(pool, rnd.randrange(1, 12))}
        run[f"q{q}"] = {d: rnd.randrange(6) / 2 for d in rnd.sample(pool, rnd.randrange(1, 20))}  # many ties
    qrels["q0"] = dict.fromkeys(qrels["q0"], 0)  # nothing relevant
    return qrels, run


@pytest.mark.parametrize("seed", range(4))
def test_random_runs_equal_the_reference(seed: int) -> None:
    qrels, run = _random_case(seed)
    ks = [1, 2, 5, 10, 40]  # 40 is past every ranking
    mean, per_query = mteb_scores(qrels, run, ks)
    for q in qrels:
        assert per_query[q] == pytest.approx(reference_all(qrels[q], run[q], ks), abs=1e-12), q
    expected = {n: sum(reference_all(qrels[q], run[q], ks)[n] for q in qrels) / len(qrels) for n in mean}
    assert mean == pytest.approx(expected, abs=1e-12)


def test_agrees_with_pytrec_eval_at_cutoffs_outside_trec_eval_defaults() -> None:
    """pytrec_eval's ndcg_cut / map_cut / recall / P / success at k = 2, 7 and 40 (MTEB reads these)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels, run = _random_case(11)
    ks = [2, 7, 40]
    spec = {f"{m}.2,7,40" for m in ("ndcg_cut", "map_cut", "recall", "P", "success")} | {"recip_rank"}
    ref = pytrec_eval.RelevanceEvaluator(qrels, spec).evaluate(run)
    _, per_query = mteb_scores(qrels, run, ks)
    names = {"ndcg_at": "ndcg_cut", "map_at": "map_cut", "recall_at": "recall", "precision_at": "P",
             "hit_rate_at": "success"}
    for q, values in per_query.items():
        for ours, theirs in names.items():
            for k in ks:
                assert values[f"{ours}_{k}"] == pytest.approx(ref[q][f"{theirs}_{k}"], abs=1e-9), (q, ours, k)
        assert values["mrr_at_40"] == pytest.approx(ref[q]["recip_rank"], abs=1e-9)  # k past the ranking


# -- cutoffs ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("ks", "expected"), [([10, 1, 3], [1, 3, 10]), ((5,), [5]), ([100, 1], [1, 100])])
def test_check_ks_sorts_valid_cutoffs(ks: Sequence[int], expected: list[int]) -> None:
    assert check_ks(ks) == expected


@pytest.mark.parametrize("ks", [[], [0], [-3, 5], [10, 10], [True], [2.0], ["5"], [1, 1.0]])
def test_check_ks_refuses_bad_cutoffs_naming_them(ks: list[object]) -> None:
    with pytest.raises(InputError, match=r"cutoffs must be distinct positive integers") as e:
        check_ks(ks)  # type: ignore[arg-type]
    msg = str(e.value)
    assert str(list(ks)) in msg and "e.g. --k 1,3,5,10,100" in msg and "\n" not in msg


@pytest.mark.parametrize("ks", [[1, "5"], [3, None], [[1], 2], [1, 2.5]])
def test_check_ks_refuses_mixed_types_with_input_error(ks: list[object]) -> None:
    with pytest.raises(InputError, match="cutoffs must be distinct positive integers"):
        check_ks(ks)  # type: ignore[arg-type]


def test_mteb_scores_refuses_bad_cutoffs_and_disjoint_queries() -> None:
    with pytest.raises(InputError, match="cutoffs"):
        mteb_scores(QRELS, RUN, [0, 10])
    with pytest.raises(InputError, match="no query has both judgments and results"):
        mteb_scores({"q1": {"a": 1}}, {"q2": {"a": 1.0}}, [1])
