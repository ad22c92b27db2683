"""trec_eval's text output of chosen measures (trec_text.py's `-m`): the lines of trec_eval 10.0's own outputs
(../shared/data/trec_eval: out.test is `trec_eval`, out.test.a `-m all_trec`, out.test.aq `-m all_trec -q`,
all on qrels.test + results.test), an excerpt of its out.test.meas_params for cutoffs outside the defaults,
the layout worked by hand, and bad specs refused in one line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.eval.metrics import Evaluation, evaluate
from qwen_embed.eval.trec import read_qrels, read_run_file
from qwen_embed.eval.trec_text import MeasureChoice, choose_measures, format_measures

# trec_eval 10.0's test/out.test.meas_params (usnistgov/trec_eval, same qrels.test + results.test), the lines of
# the measures we compute at any cutoff. Its command: trec_eval -q -m P.5,7,3 -m recall.20,2000
# -m ndcg_cut.10,20,23.4 -m success.2,5,20 (and iprec_at_recall, Rprec_mult, utility, 11pt_avg and ndcg with
# parameters, left out here). trec_eval prints only the measures asked for: no runid or num_q line.
MEAS_PARAMS = (
    "P_3                   \t301\t0.0000\n"
    "P_5                   \t301\t0.0000\n"
    "P_7                   \t301\t0.2857\n"
    "recall_20             \t301\t0.0105\n"
    "recall_2000           \t301\t0.1498\n"
    "ndcg_cut_10           \t301\t0.1518\n"
    "ndcg_cut_20           \t301\t0.1985\n"
    "ndcg_cut_23           \t301\t0.1814\n"
    "success_2             \t301\t0.0000\n"
    "success_5             \t301\t0.0000\n"
    "success_20            \t301\t1.0000\n"
    "P_3                   \t302\t0.6667\n"
    "P_5                   \t302\t0.8000\n"
    "P_7                   \t302\t0.7143\n"
    "recall_20             \t302\t0.2078\n"
    "recall_2000           \t302\t0.6494\n"
    "ndcg_cut_10           \t302\t0.7530\n"
    "ndcg_cut_20           \t302\t0.8082\n"
    "ndcg_cut_23           \t302\t0.7964\n"
    "success_2             \t302\t1.0000\n"
    "success_5             \t302\t1.0000\n"
    "success_20            \t302\t1.0000\n"
    "P_3                   \t303\t0.0000\n"
    "P_5                   \t303\t0.0000\n"
    "P_7                   \t303\t0.0000\n"
    "recall_20             \t303\t0.1000\n"
    "recall_2000           \t303\t1.0000\n"
    "ndcg_cut_10           \t303\t0.0000\n"
    "ndcg_cut_20           \t303\t0.0509\n"
    "ndcg_cut_23           \t303\t0.0509\n"
    "success_2             \t303\t0.0000\n"
    "success_5             \t303\t0.0000\n"
    "success_20            \t303\t1.0000\n"
    "P_3                   \tall\t0.2222\n"
    "P_5                   \tall\t0.2667\n"
    "P_7                   \tall\t0.3333\n"
    "recall_20             \tall\t0.1061\n"
    "recall_2000           \tall\t0.5997\n"
    "ndcg_cut_10           \tall\t0.3016\n"
    "ndcg_cut_20           \tall\t0.3525\n"
    "ndcg_cut_23           \tall\t0.3429\n"
    "success_2             \tall\t0.3333\n"
    "success_5             \tall\t0.3333\n"
    "success_20            \tall\t1.0000\n"
)
MEAS_PARAMS_SPECS = ["P.5,7,3", "recall.20,2000", "ndcg_cut.10,20,23", "success.2,5,20"]


def evaluated(trec_dir: Path, choice: MeasureChoice) -> Evaluation:
    """qrels.test + results.test evaluated as the command does for `choice` (its extra cutoffs included)."""
    run = read_run_file(trec_dir / "results.test")
    return evaluate(read_qrels(trec_dir / "qrels.test"), run.scores, run_name=run.name, extra_k=choice.extra_k)


def measure_lines(text: str) -> list[str]:
    """The lines of a trec_eval output without its runid and num_q lines."""
    return [ln for ln in text.splitlines(keepends=True) if ln.split("\t")[0].strip() not in ("runid", "num_q")]


def reference_lines(text: str, names: set[str]) -> list[str]:
    return [ln for ln in text.splitlines(keepends=True) if ln.split("\t")[0].strip() in names]


def test_official_is_trec_eval_default_output(trec_dir: Path) -> None:
    choice = choose_measures(["official"])
    assert format_measures(evaluated(trec_dir, choice), choice) == (trec_dir / "out.test").read_text()


@pytest.mark.parametrize("spec", ["all_trec", "all"])
def test_all_trec_is_trec_eval_all_trec_output(trec_dir: Path, spec: str) -> None:
    choice = choose_measures([spec])
    assert format_measures(evaluated(trec_dir, choice), choice) == (trec_dir / "out.test.a").read_text()


def test_all_trec_per_query_is_trec_eval_output(trec_dir: Path) -> None:
    choice = choose_measures(["all_trec"])
    got = format_measures(evaluated(trec_dir, choice), choice, per_query=True)
    assert got == (trec_dir / "out.test.aq").read_text()


SELECTIONS = [
    ["map"],
    ["ndcg_cut.10"],
    ["P.5,10", "map", "ndcg_cut"],
    ["gm_map", "gm_bpref", "Rprec", "bpref", "recip_rank"],
    ["iprec_at_recall", "Rprec_mult", "11pt_avg"],
    ["success", "recall.1000,5", "relative_P", "map_cut.100"],
    ["num_ret", "num_rel", "num_rel_ret", "num_nonrel_judged_ret", "utility"],
    ["set_P", "set_relative_P", "set_recall", "set_map", "set_F", "rbp", "rbp_resid", "unj", "infAP"],
    ["ndcg", "ndcg_rel", "Rndcg", "binG", "G"],
]


@pytest.mark.parametrize("specs", SELECTIONS)
@pytest.mark.parametrize("per_query", [False, True])
def test_chosen_measures_print_trec_eval_lines(trec_dir: Path, specs: list[str], per_query: bool) -> None:
    """Each chosen line equals trec_eval's, in its order (per query: each query in turn, no gm_* lines)."""
    choice = choose_measures(specs)
    got = format_measures(evaluated(trec_dir, choice), choice, per_query=per_query)
    reference = (trec_dir / ("out.test.aq" if per_query else "out.test.a")).read_text()
    expected = reference_lines(reference, {name for name, _ in choice.names})
    assert expected and measure_lines(got) == expected


def test_cutoffs_outside_the_defaults_equal_trec_eval_meas_params(trec_dir: Path) -> None:
    """P_3, P_7, recall_2000, ndcg_cut_23, success_2, ... as trec_eval prints them (per query and all)."""
    choice = choose_measures(MEAS_PARAMS_SPECS)
    assert choice.extra_k == [2, 3, 7, 20, 23, 2000]  # success_20: success defaults to 1, 5, 10
    got = format_measures(evaluated(trec_dir, choice), choice, per_query=True)
    assert measure_lines(got) == MEAS_PARAMS.splitlines(keepends=True)


def test_only_the_measures_asked_for_are_printed(trec_dir: Path) -> None:
    choice = choose_measures(MEAS_PARAMS_SPECS)
    assert format_measures(evaluated(trec_dir, choice), choice, per_query=True) == MEAS_PARAMS


def test_map_cut_at_other_cutoffs_equals_pytrec_eval(trec_dir: Path) -> None:
    """map_cut.3,7 (not in out.test.meas_params) against pytrec_eval, trec_eval's code as a library."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    choice = choose_measures(["map_cut.3,7"])
    ev = evaluated(trec_dir, choice)
    qrels, run = read_qrels(trec_dir / "qrels.test"), read_run_file(trec_dir / "results.test").scores
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"map_cut.3,7"}).evaluate(run)
    expected = [f"map_cut_{k:<14}\t{q}\t{ref[q][f'map_cut_{k}']:6.4f}\n" for q in sorted(ref) for k in (3, 7)]
    mean = {k: sum(v[f"map_cut_{k}"] for v in ref.values()) / len(ref) for k in (3, 7)}
    expected += [f"map_cut_{k:<14}\tall\t{mean[k]:6.4f}\n" for k in (3, 7)]
    assert measure_lines(format_measures(ev, choice, per_query=True)) == expected


def test_layout_worked_by_hand() -> None:
    """%-22s name, tab, query, tab, %6.4f value (counts as integers); per query without gm_* lines."""
    per_query = {"q1": {"num_ret": 7.0, "map": 2 / 3, "gm_map": math.log(0.5), "P_5": 0.123449}}
    agg = {"num_q": 1.0, "num_ret": 7.0, "map": 2 / 3, "gm_map": 0.5, "P_5": 0.99996}
    ev = Evaluation(per_query, agg, run_name="mine")
    choice = choose_measures(["P.5", "gm_map", "map", "num_ret", "runid", "num_q"])
    assert format_measures(ev, choice, per_query=True) == (
        "num_ret               \tq1\t7\n"
        "map                   \tq1\t0.6667\n"
        "P_5                   \tq1\t0.1234\n"
        "runid                 \tall\tmine\n"
        "num_q                 \tall\t1\n"
        "num_ret               \tall\t7\n"
        "map                   \tall\t0.6667\n"
        "gm_map                \tall\t0.5000\n"
        "P_5                   \tall\t1.0000\n"
    )


# -- choose_measures ----------------------------------------------------------------------------------------
def test_names_in_trec_eval_order_once_each() -> None:
    """trec_eval's measure table order whatever the order given; a family's cutoffs ascending; no repeats."""
    choice = choose_measures(["success.1", "ndcg_cut.3", "map", "P.20,5", "map", "P.5"])
    assert choice.names == [("map", "map"), ("P_5", "P_5"), ("P_20", "P_20"), ("ndcg_cut_3", "ndcg_at_3"),
                            ("success_1", "success_1")]
    assert choice.extra_k == [3]


def test_families_and_nicknames() -> None:
    assert [n for n, _ in choose_measures(["ndcg_cut"]).names] == [
        f"ndcg_cut_{k}" for k in (5, 10, 15, 20, 30, 100, 200, 500, 1000)]
    assert [n for n, _ in choose_measures(["success"]).names] == ["success_1", "success_5", "success_10"]
    assert [n for n, _ in choose_measures(["iprec_at_recall"]).names] == [
        f"iprec_at_recall_{p / 10:.2f}" for p in range(11)]
    official = ["num_ret", "num_rel", "num_rel_ret", "map", "gm_map", "Rprec", "bpref", "recip_rank",
                *[f"iprec_at_recall_{p / 10:.2f}" for p in range(11)],
                *[f"P_{k}" for k in (5, 10, 15, 20, 30, 100, 200, 500, 1000)]]
    # trec_eval's nicknames (measures.c: off_names, trec_names) hold runid and num_q, all_trec relstring too
    assert [n for n, _ in choose_measures(["official"]).names] == ["runid", "num_q", *official]
    assert [n for n, _ in choose_measures(["official"]).values] == official
    assert choose_measures(["official"]).extra_k == []
    names = [n for n, _ in choose_measures(["all_trec"]).names]
    assert names[:2] == ["runid", "num_q"] and names[names.index("P_1000") + 1:][:2] == ["relstring", "recall_5"]
    assert [n for n, _ in choose_measures(["recall.5", "relstring", "P.5", "num_q"]).names] == [
        "num_q", "P_5", "relstring", "recall_5"]


def test_cutoffs_outside_the_defaults_read_the_at_k_measures() -> None:
    choice = choose_measures(["P.7", "recall.7", "ndcg_cut.7", "map_cut.7", "success.7", "ndcg_cut.10"])
    assert choice.names == [("P_7", "precision_at_7"), ("recall_7", "recall_at_7"), ("ndcg_cut_7", "ndcg_at_7"),
                            ("ndcg_cut_10", "ndcg_cut_10"), ("map_cut_7", "map_at_7"),
                            ("success_7", "hit_rate_at_7")]
    assert choice.extra_k == [7]


@pytest.mark.parametrize("spec", ["ndcgg", "", "map.5", "relative_P.5", "Rprec_mult.0.5", "relstring.5", "runid.1",
                                  "P_7"])
def test_unknown_measures_are_refused_in_one_line(spec: str) -> None:
    with pytest.raises(InputError) as e:
        choose_measures(["map", spec])
    msg = str(e.value)
    assert f"-m {spec!r} is not a trec_eval measure we compute" in msg
    assert "use all_trec, official" in msg and "ndcg_cut[.k,...]" in msg and "\n" not in msg


@pytest.mark.parametrize("spec", ["P.0", "P.-5", "ndcg_cut.x", "recall.5,ten", "success.,", "map_cut.2.5", "P.1_0",
                                  "P.\u0663", "P.+5", "recall.5,,x"])
def test_bad_cutoffs_are_refused_in_one_line(spec: str) -> None:
    base = spec.split(".")[0]
    with pytest.raises(InputError) as e:
        choose_measures([spec])
    msg = str(e.value)
    assert msg.startswith(f"-m {spec}: {base} takes positive integer cutoffs")
    assert f"e.g. -m {base}.10" in msg and "\n" not in msg
