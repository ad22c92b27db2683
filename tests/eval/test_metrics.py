"""Metrics: trec_eval 10.0's own outputs byte for byte, pytrec_eval to 1e-9, and values worked by hand."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.metrics import (
    MEASURES,
    aggregate,
    check_ks,
    evaluate,
    format_trec_eval,
    mteb_scores,
    rank_query,
    relstring,
)
from qwen_embed.eval.trec import read_qrels, read_run_file

pytrec_eval = pytest.importorskip("pytrec_eval")


@pytest.mark.parametrize(("output", "per_query"), [("out.test.a", False), ("out.test.aq", True)])
def test_reproduces_trec_eval_output_byte_for_byte(trec_dir: Path, output: str, per_query: bool) -> None:
    run = read_run_file(trec_dir / "results.test")
    ev = evaluate(read_qrels(trec_dir / "qrels.test"), run.scores, run_name=run.name)
    assert format_trec_eval(ev, per_query=per_query) == (trec_dir / output).read_text()


def test_default_measures_are_a_prefix_of_the_a_output(trec_dir: Path) -> None:
    # out.test holds trec_eval's default ("official") measures: the same numbers as in out.test.a
    full = {ln.split("\t")[0].strip(): ln for ln in (trec_dir / "out.test.a").read_text().splitlines()}
    for line in (trec_dir / "out.test").read_text().splitlines():
        assert full[line.split("\t")[0].strip()] == line


def _compare_with_pytrec(qrels: dict, run: dict, version: str = "9") -> int:
    ours = evaluate(qrels, run, version=version)
    ref = pytrec_eval.RelevanceEvaluator(qrels, pytrec_eval.supported_measures).evaluate(run)
    assert set(ref) == set(ours.per_query)
    checked = 0
    for qid, values in ref.items():
        for name, value in values.items():
            if name in ("runid", "num_q", "relstring"):
                continue
            assert ours.per_query[qid][name] == pytest.approx(value, abs=1e-9, rel=0), (qid, name)
            checked += 1
    for name in ours.per_query[next(iter(ref))]:
        if name in ref[next(iter(ref))]:
            agg = pytrec_eval.compute_aggregated_measure(name, [v[name] for v in ref.values()])
            assert ours.aggregate[name] == pytest.approx(agg, abs=1e-9, rel=0), name
    return checked


@pytest.mark.parametrize("qrels_file", ["qrels.test", "qrels.rel_level"])
def test_agrees_with_pytrec_eval_on_trec_eval_files(trec_dir: Path, qrels_file: str) -> None:
    qrels = read_qrels(trec_dir / qrels_file)  # rel_level: graded 0..4 and -1 (pooled, unjudged)
    run = read_run_file(trec_dir / "results.test").scores
    assert _compare_with_pytrec(qrels, run) > 3 * 90


def test_versions_differ_only_in_recall_points(trec_dir: Path) -> None:
    qrels, run = read_qrels(trec_dir / "qrels.test"), read_run_file(trec_dir / "results.test").scores
    v10, v9 = evaluate(qrels, run).aggregate, evaluate(qrels, run, version="9").aggregate
    differ = {k for k in v10 if v10[k] != v9[k]}
    assert differ and all(k.startswith(("iprec_at_recall", "11pt_avg")) for k in differ)


def _random_case(seed: int) -> tuple[dict, dict]:
    rnd = random.Random(seed)
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(12):
        qid = f"q{q}"
        docs = [f"d{rnd.randrange(300)}" for _ in range(rnd.randrange(1, 60))]
        qrels[qid] = {d: rnd.choice([-1, 0, 0, 0, 1, 1, 2, 3]) for d in docs}
        if q == 0:
            qrels[qid] = {d: 0 for d in docs}  # no relevant document at all
        if q == 1:
            continue  # judged, never retrieved
        pool = [f"d{i}" for i in range(300)]
        ranked = rnd.sample(pool, rnd.randrange(1, 250))
        run[qid] = {d: float(rnd.randrange(20)) / 4 for d in ranked}  # many ties
    run["unjudged-query"] = {"d1": 1.0}
    return qrels, run


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_pytrec_eval_on_random_runs(seed: int) -> None:
    qrels, run = _random_case(seed)
    assert _compare_with_pytrec(qrels, run) > 500


def test_complete_counts_unretrieved_queries_as_empty() -> None:
    qrels, run = _random_case(0)
    default, complete = evaluate(qrels, run), evaluate(qrels, run, complete=True)
    assert default.queries_without_results == ["q1"] and default.queries_without_judgments == ["unjudged-query"]
    assert default.aggregate["num_q"] == 11 and complete.aggregate["num_q"] == 12
    assert complete.per_query["q1"]["map"] == 0 and complete.per_query["q1"]["num_ret"] == 0
    assert complete.aggregate["map"] == pytest.approx(default.aggregate["map"] * 11 / 12)
    assert complete.aggregate["gm_map"] < default.aggregate["gm_map"]


# -- values worked by hand --------------------------------------------------------------------------------
QRELS = {"q": {"a": 2, "b": 0, "c": 1, "d": 1, "e": -1}}
# ranking: x (not judged), a (2), b (0), e (pooled, unjudged), c (1); d is never retrieved
RUN = {"q": {"x": 5.0, "a": 4.0, "b": 3.0, "e": 2.0, "c": 2.0}}  # e/c tie: docno descending puts e first


def test_hand_worked_example() -> None:
    rr = rank_query(QRELS["q"], RUN["q"])
    assert rr.rels == [-1, 2, 0, -2, 1] and relstring(rr) == "-20.1"
    m = evaluate(QRELS, RUN).per_query["q"]
    assert (m["num_ret"], m["num_rel"], m["num_rel_ret"]) == (5, 3, 2)
    assert m["recip_rank"] == pytest.approx(1 / 2)
    assert m["P_5"] == pytest.approx(2 / 5) and m["recall_5"] == pytest.approx(2 / 3)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 5) / 3)
    assert m["Rprec"] == pytest.approx(1 / 3)  # one relevant in the top R = 3
    dcg = 2 / math.log2(3) + 1 / math.log2(6)
    idcg = 2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"] == pytest.approx(dcg / idcg) and m["ndcg_cut_5"] == pytest.approx(dcg / idcg)
    assert m["bpref"] == pytest.approx((1 + (1 - 1 / 1)) / 3)  # a before any nonrel, c after b (1 of min(1, 3))
    assert m["success_1"] == 0 and m["success_5"] == 1
    assert m["num_nonrel_judged_ret"] == 1 and m["unj_5"] == pytest.approx(2 / 5)
    mean, per_q = mteb_scores(QRELS, RUN, [1, 3])
    assert mean["mrr_at_1"] == 0 and mean["mrr_at_3"] == pytest.approx(1 / 2)
    assert mean["ndcg_at_3"] == pytest.approx((2 / math.log2(3)) / idcg)
    assert mean["recall_at_3"] == pytest.approx(1 / 3) and mean["precision_at_3"] == pytest.approx(1 / 3)
    assert mean["map_at_3"] == pytest.approx((1 / 2) / 3) and per_q["q"]["hit_rate_at_3"] == 1


def test_aggregate_sums_counts_and_geometric_means() -> None:
    per_query = {"a": {"num_ret": 3.0, "map": 0.5, "gm_map": math.log(0.5)},
                 "b": {"num_ret": 4.0, "map": 0.1, "gm_map": math.log(0.2)}}
    agg = aggregate(per_query)
    assert agg == pytest.approx({"num_q": 2, "num_ret": 7, "map": 0.3, "gm_map": math.sqrt(0.1)})


def test_measure_list_has_no_duplicates() -> None:
    assert len(MEASURES) == len(set(MEASURES)) and "ndcg_cut_10" in MEASURES and "P_1000" in MEASURES


def test_bad_inputs() -> None:
    with pytest.raises(InputError, match="no query has both"):
        evaluate({"q1": {"a": 1}}, {"q2": {"a": 1.0}})
    with pytest.raises(InputError, match="version"):
        evaluate(QRELS, RUN, version="8")
    with pytest.raises(InputError, match="cutoffs"):
        check_ks([10, 10])
    with pytest.raises(InputError, match="cutoffs"):
        check_ks([0, 5])
