"""Retrieval metrics in our own code: trec_eval's measures by their trec_eval names, and the @k view MTEB reports.

The per-query code is a line-by-line port of trec_eval 10.0 (usnistgov/trec_eval, `m_*.c`, `form_res_rels.c`),
including what is easy to get wrong:
- ranking: score descending, ties broken by docno descending; the rank column of a run is ignored;
- a retrieved document absent from the qrels is "not in the pool" (-1), one judged negative is "in the pool
  but unjudged" (-2); relevant means rel >= relevance_level (default 1); gains are the relevance values;
- only queries that have both qrels and results are evaluated and averaged (trec_eval's default), unless
  `complete=True` (trec_eval -c): then a query without results counts with an empty ranking;
- a query whose judgments are all non-relevant is evaluated (most measures give 0 for it);
- num_ret / num_rel / num_rel_ret / num_nonrel_judged_ret are summed over queries, gm_map and gm_bpref are
  geometric means (per query they hold log(max(value, 1e-5)), as in trec_eval and pytrec_eval), every other
  measure is the arithmetic mean over the evaluated queries.
The measures and cutoffs are trec_eval's defaults (`-m all_trec`): `MEASURES` lists them in trec_eval's order.
`format_trec_eval` prints the output of `trec_eval -a [-q]` byte for byte. trec_eval 10 rounds the recall points
of iprec_at_recall and 11pt_avg (lround(p * R)) where trec_eval 9, and so pytrec_eval, used (long)(p * R + 0.9):
`version="9"` gives the older numbers.

`rbp`: trec_eval normalises gains to [0, 1] when some gain lies outside; it compares against uninitialised
variables, which we read as 0 (so with graded qrels the gains are divided by the top level).
Skipped trec_eval measures: `dcg`, `ideal_dcg` (not printed by `-a`), the preference measures (`prefs_*`,
they need a preference-format qrels), the judgment-group measures (`*_avgjg`, they need qrels_jg), `yaap`
and `Runj` (not in trec_eval's `-a` output either).

`mteb_scores` gives the numbers MTEB and BEIR report (ndcg_at_k, map_at_k, recall_at_k, precision_at_k,
mrr_at_k, hit_rate_at_k), computed from the same per-query code: MTEB gets them from pytrec_eval's
ndcg_cut / map_cut / recall / P / success and its own MRR@k (first document with rel > 0 in the top k).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import InputError
from .trec import sorted_docs

NONPOOL = -1  # retrieved, not in the qrels
UNJUDGED = -2  # retrieved, in the qrels with a negative judgment (pooled but not judged)
MIN_GEO_MEAN = 0.00001
INFAP_EPSILON = 0.00001

CUTOFFS = (5, 10, 15, 20, 30, 100, 200, 500, 1000)
RECALL_POINTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
RPREC_MULTS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0)
SUCCESS_CUTOFFS = (1, 5, 10)
UNJ_CUTOFFS = (5, 10, 20)
RELSTRING_LEN = 10
RBP_P = 0.9
UTILITY_PARAMS = (1.0, -1.0, 0.0, 0.0)
SET_F_BETA = 1.0


def _names(base: str, params: Sequence[float], fmt: str = "{}") -> list[str]:
    return [f"{base}_{fmt.format(p)}" for p in params]


# trec_eval -a order. SUMMED are totals over queries, GEOMETRIC are per-query logs averaged then exp'ed.
MEASURES: list[str] = [
    "num_ret", "num_rel", "num_rel_ret", "map", "gm_map", "Rprec", "bpref", "recip_rank",
    *_names("iprec_at_recall", RECALL_POINTS, "{:.2f}"), *_names("P", CUTOFFS),
    *_names("recall", CUTOFFS), "infAP", "gm_bpref", *_names("Rprec_mult", RPREC_MULTS, "{:.2f}"),
    "utility", "11pt_avg", "binG", "G", "ndcg", "ndcg_rel", "Rndcg", *_names("ndcg_cut", CUTOFFS),
    *_names("map_cut", CUTOFFS), *_names("relative_P", CUTOFFS), *_names("success", SUCCESS_CUTOFFS),
    "set_P", "set_relative_P", "set_recall", "set_map", "set_F", "num_nonrel_judged_ret", "rbp", "rbp_resid",
    *_names("unj", UNJ_CUTOFFS),
]
SUMMED = frozenset({"num_ret", "num_rel", "num_rel_ret", "num_nonrel_judged_ret"})
GEOMETRIC = frozenset({"gm_map", "gm_bpref"})
INTEGER = SUMMED
MTEB_PREFIXES = ("ndcg_at", "map_at", "recall_at", "precision_at", "mrr_at", "hit_rate_at")
DEFAULT_K = (1, 3, 5, 10, 100)


@dataclass
class Ranked:
    """One query's ranking as trec_eval sees it (its RES_RELS)."""

    rels: list[int]  # relevance of each retrieved document in rank order (NONPOOL / UNJUDGED when negative)
    rel_levels: list[int]  # number of judged documents at each level 0..max (judged = rel >= 0)
    num_rel: int
    num_rel_ret: int
    relevance_level: int
    version: str = "10"  # "9": iprec_at_recall and 11pt_avg place recall points as trec_eval 9 (and pytrec_eval)

    @property
    def num_ret(self) -> int:
        return len(self.rels)

    @property
    def num_rel_levels(self) -> int:
        return max((i + 1 for i, c in enumerate(self.rel_levels) if c), default=0)


def rank_query(judged: Mapping[str, int], scores: Mapping[str, float], relevance_level: int = 1,
               judged_only: bool = False, depth: int | None = None, version: str = "10") -> Ranked:
    """Order the retrieved documents and look up their relevance (trec_eval's te_form_res_rels)."""
    ranked = sorted_docs(scores)
    if depth is not None:
        ranked = ranked[:depth]
    rels = []
    for doc, _ in ranked:
        r = judged.get(doc)
        rels.append(NONPOOL if r is None else (UNJUDGED if r < 0 else r))
    if judged_only:
        rels = [r for r in rels if r >= 0]
    top = max(judged.values(), default=-1)
    levels = [0] * (top + 1)
    for r in judged.values():
        if r >= 0:
            levels[r] += 1
    num_rel = sum(levels[relevance_level:]) if relevance_level >= 0 else sum(levels)
    num_rel_ret = sum(1 for r in rels if r >= 0 and r >= relevance_level)
    return Ranked(rels, levels, num_rel, num_rel_ret, relevance_level, version)


# -- gains shared by ndcg, ndcg_rel, Rndcg, G, rbp (trec_eval's gain_init.c with default gains) ------------
@dataclass
class _Gains:
    levels: list[tuple[int, float, int]]  # (rel level, gain, number judged at it), by increasing gain

    @classmethod
    def of(cls, rr: Ranked) -> _Gains:
        return cls([(i, float(i), rr.rel_levels[i]) for i in range(rr.num_rel_levels)])

    def gain(self, rel: int) -> float:
        for level, g, _ in self.levels:
            if level == rel:
                return g
        return 0.0


@dataclass
class _Ideal:
    """Walks the ideal ranking: gains from the top level down, each as often as it was judged."""

    gains: _Gains
    cur: int = 0
    count: int = 0
    gain: float = 0.0

    def __post_init__(self) -> None:
        self.cur = len(self.gains.levels) - 1
        self.gain = self.gains.levels[self.cur][1] if self.cur >= 0 else 0.0

    def step(self) -> float:
        self.count += 1
        while self.cur >= 0 and self.count > self.gains.levels[self.cur][2]:
            self.count = 1
            self.cur -= 1
            self.gain = self.gains.levels[self.cur][1] if self.cur >= 0 else 0.0
        return self.gain


# -- per-query measures, one function per trec_eval file ----------------------------------------------------
def _is_rel(rr: Ranked, r: int) -> bool:
    return r >= rr.relevance_level


def _average_precision(rr: Ranked) -> float:
    rel_so_far, total = 0, 0.0
    for i, r in enumerate(rr.rels):
        if _is_rel(rr, r):
            rel_so_far += 1
            total += rel_so_far / (i + 1)
    return total / rr.num_rel if rel_so_far else 0.0


def _bpref(rr: Ranked) -> float:
    num_nonrel = sum(rr.rel_levels[: max(rr.relevance_level, 0)])
    nonrel_so_far, total = 0, 0.0
    for r in rr.rels:
        if r < 0:
            continue
        if r < rr.relevance_level:
            nonrel_so_far += 1
        elif nonrel_so_far > 0:
            total += 1.0 - min(nonrel_so_far, rr.num_rel) / min(num_nonrel, rr.num_rel)
        else:
            total += 1.0
    return total / rr.num_rel if rr.num_rel else total


def _infap(rr: Ranked) -> float:
    nonrel, rel, unjudged, total = 0, 0, 0, 0.0
    for j, r in enumerate(rr.rels):
        if r == NONPOOL:
            continue
        if r == UNJUDGED:
            unjudged += 1
            continue
        if r < rr.relevance_level:
            nonrel += 1
            continue
        rel += 1
        if j == 0:
            total += 1.0
        else:
            fj = float(j)
            total += (1.0 / (fj + 1.0) + (fj / (fj + 1.0)) * ((rel - 1 + nonrel + unjudged) / fj)
                      * ((rel - 1 + INFAP_EPSILON) / (rel - 1 + nonrel + 2 * INFAP_EPSILON)))
    return total / rr.num_rel if rr.num_rel else total


def _lround(x: float) -> int:
    """C's lround for x >= 0: nearest integer, halves away from zero."""
    whole = int(x)
    return whole + (1 if x - whole >= 0.5 else 0)


def _recall_cutoffs(rr: Ranked, points: Sequence[float]) -> list[int]:
    """Recall points as numbers of relevant documents: trec_eval 10 rounds (lround), v9 added 0.9 and truncated."""
    if rr.version == "9":
        return [int(p * rr.num_rel + 0.9) for p in points]
    return [_lround(p * rr.num_rel) for p in points]


def _iprec_at_recall(rr: Ranked, points: Sequence[float]) -> list[float]:
    out = [0.0] * len(points)
    if rr.num_ret == 0:
        return out
    cutoffs = _recall_cutoffs(rr, points)
    cut = len(points) - 1
    while cut >= 0 and cutoffs[cut] > rr.num_rel_ret:
        cut -= 1
    int_precis = rr.num_rel_ret / rr.num_ret
    rel_so_far = rr.num_rel_ret
    i = rr.num_ret
    while i > 0 and rel_so_far > 0:
        int_precis = max(int_precis, rel_so_far / i)
        if _is_rel(rr, rr.rels[i - 1]):
            while cut >= 0 and rel_so_far == cutoffs[cut]:
                out[cut] = int_precis
                cut -= 1
            rel_so_far -= 1
        i -= 1
    while cut >= 0:
        out[cut] = int_precis
        cut -= 1
    return out


def _rprec_mult(rr: Ranked, mults: Sequence[float]) -> list[float]:
    out = [0.0] * len(mults)
    if rr.num_ret == 0:
        return out
    cutoffs = [int(p * rr.num_rel + 0.9) for p in mults]  # Rprec_mult keeps v9's rule in trec_eval 10
    cut = len(mults) - 1
    while cut >= 0 and cutoffs[cut] > rr.num_ret:
        out[cut] = rr.num_rel_ret / cutoffs[cut]
        cut -= 1
    rel_so_far = rr.num_rel_ret
    i = rr.num_ret
    while i > 0 and rel_so_far > 0:
        precis = rel_so_far / i
        while cut >= 0 and i == cutoffs[cut]:
            out[cut] = precis
            cut -= 1
        if _is_rel(rr, rr.rels[i - 1]):
            rel_so_far -= 1
        i -= 1
    return out


def _ndcg(rr: Ranked, g: _Gains) -> float:
    ideal = _Ideal(g)
    results_dcg = ideal_dcg = 0.0
    i, n = 0, rr.num_ret
    while i < n and ideal.gain > 0.0:
        rg = g.gain(rr.rels[i])
        if rg != 0:
            results_dcg += rg / math.log2(i + 2)
        ig = ideal.step()
        if ig > 0.0:
            ideal_dcg += ig / math.log2(i + 2)
        i += 1
    while i < n:
        rg = g.gain(rr.rels[i])
        if rg != 0:
            results_dcg += rg / math.log2(i + 2)
        i += 1
    while ideal.gain > 0.0:
        ig = ideal.step()
        if ig > 0.0:
            ideal_dcg += ig / math.log2(i + 2)
        i += 1
    return results_dcg / ideal_dcg if ideal_dcg > 0.0 else 0.0


def _ndcg_rel(rr: Ranked, g: _Gains) -> float:
    ideal = _Ideal(g)
    results_dcg = ideal_dcg = total = 0.0
    num_rel = num_rel_ret = 0
    i, n = 0, rr.num_ret
    while i < n and ideal.gain > 0.0:
        rg = g.gain(rr.rels[i])
        if rg != 0:
            results_dcg += rg / math.log2(i + 2)
        ig = ideal.step()
        if ig > 0.0:
            num_rel += 1
            ideal_dcg += ig / math.log2(i + 2)
        if rg > 0:
            total += results_dcg / ideal_dcg
            num_rel_ret += 1
        i += 1
    while i < n:
        rg = g.gain(rr.rels[i])
        if rg != 0:
            results_dcg += rg / math.log2(i + 2)
        if rg > 0:
            total += results_dcg / ideal_dcg
            num_rel_ret += 1
        i += 1
    while ideal.gain > 0.0:
        ig = ideal.step()
        if ig > 0.0:
            num_rel += 1
            ideal_dcg += ig / math.log2(i + 2)
        i += 1
    if ideal_dcg > 0.0:
        total += float(num_rel - num_rel_ret) * results_dcg / ideal_dcg
    return total / num_rel if total > 0.0 else 0.0


def _rndcg(rr: Ranked, g: _Gains) -> float:
    if rr.num_rel == 0:
        return 0.0
    ideal = _Ideal(g)
    old_gain = ideal.gain
    results_dcg = ideal_dcg = total = 0.0
    changes = 0
    i, n = 0, rr.num_ret
    while i < n and ideal.gain > 0.0:
        rg = g.gain(rr.rels[i])
        ig = ideal.step()
        if old_gain != ig:
            if ideal_dcg > 0.0:
                total += results_dcg / ideal_dcg
                changes += 1
            old_gain = ig
        if rg != 0:
            results_dcg += rg / math.log2(i + 2)
        if ig > 0.0:
            ideal_dcg += ig / math.log2(i + 2)
        i += 1
    if i < n:
        while i < n:
            rg = g.gain(rr.rels[i])
            if rg != 0:
                results_dcg += rg / math.log2(i + 2)
            i += 1
        if ideal_dcg > 0.0:
            total += results_dcg / ideal_dcg
            changes += 1
    while ideal.gain > 0.0:
        ig = ideal.step()
        if old_gain != ig:
            if ideal_dcg > 0.0:
                total += results_dcg / ideal_dcg
                changes += 1
            old_gain = ig
        if ig > 0.0:
            ideal_dcg += ig / math.log2(i + 2)
        i += 1
    return total / changes if changes else 0.0


def _g(rr: Ranked, g: _Gains) -> float:
    ideal = _Ideal(g)
    results_g = sum_results = sum_ideal = sum_cost = 0.0
    min_cost = 1.0
    i, n = 0, rr.num_ret
    while i < n and ideal.gain > 0.0:
        rg = g.gain(rr.rels[i])
        sum_results += rg
        ig = ideal.step()
        if ig > 0.0:
            sum_ideal += ig
        sum_cost += ig if ig >= min_cost else min_cost
        if rg != 0:
            results_g += rg / math.log2(2 + sum_cost - sum_results)
        i += 1
    while i < n:
        rg = g.gain(rr.rels[i])
        sum_results += rg
        sum_cost += min_cost
        if rg != 0:
            results_g += rg / math.log2(2 + sum_cost - sum_results)
        i += 1
    while ideal.gain > 0.0:
        ig = ideal.step()
        if ig > 0.0:
            sum_ideal += ig
        i += 1
    return results_g / sum_ideal if sum_ideal > 0.0 else 0.0


def _ndcg_cut(rr: Ranked, cutoffs: Sequence[int]) -> list[float]:
    dcg, total = [], 0.0
    for c in range(max(cutoffs, default=0)):
        if c < rr.num_ret and rr.rels[c] > 0:
            total += rr.rels[c] / math.log2(c + 2)
        dcg.append(total)
    ideal, total = [], 0.0
    levels, lvl = rr.rel_levels, rr.num_rel_levels - 1
    count = 0
    for c in range(max(cutoffs, default=0)):
        count += 1
        while lvl > 0 and count > levels[lvl]:
            lvl -= 1
            count = 1
        if lvl > 0:
            total += lvl / math.log2(c + 2)
        ideal.append(total)
    return [dcg[k - 1] / ideal[k - 1] if ideal[k - 1] > 0.0 else dcg[k - 1] for k in cutoffs]


def _rbp(rr: Ranked, g: _Gains, p: float = RBP_P) -> float:
    gains = [x[1] for x in g.levels]
    lo, hi = min([0.0, *gains]), max([0.0, *gains])
    if lo < 0 or hi > 1:
        g = _Gains([(lv, (x - lo) / (hi - lo), c) for lv, x, c in g.levels])
    total, cur_p = 0.0, 1.0
    for r in rr.rels:
        gain = g.gain(r)
        if gain != 0:
            total += gain * cur_p
        cur_p *= p
    return (1.0 - p) * total


def _rbp_resid(rr: Ranked, p: float = RBP_P) -> float:
    unj, total, cur_p = 0, 0.0, 1.0
    for r in rr.rels:
        if r < 0:
            unj += 1
            total += cur_p
        cur_p *= p
    return cur_p + (1 - p) * total if unj else 0.0


def relstring(rr: Ranked, length: int = RELSTRING_LEN) -> str:
    """The relevance of the first `length` documents, one character each (trec_eval's relstring)."""
    def char(r: int) -> str:
        return ">" if r > 9 else str(r) if r >= 0 else "-" if r == NONPOOL else "." if r == UNJUDGED else "<"
    return "".join(char(r) for r in rr.rels[:length])


def query_measures(rr: Ranked) -> dict[str, float]:
    """Every measure of MEASURES for one ranked query (gm_* as logs, the counts as floats)."""
    n, rels, num_rel, rel_ret = rr.num_ret, rr.rels, rr.num_rel, rr.num_rel_ret
    is_rel = [_is_rel(rr, r) for r in rels]
    top = max(max(CUTOFFS), n)
    cum = [0] * (top + 1)  # cum[k] = relevant documents in the top k
    for k in range(1, top + 1):
        cum[k] = cum[k - 1] + (1 if k <= n and is_rel[k - 1] else 0)
    first_rel = next((i for i, x in enumerate(is_rel) if x), None)
    g = _Gains.of(rr)
    ap = _average_precision(rr)
    bpref = _bpref(rr)
    m: dict[str, float] = {
        "num_ret": float(n), "num_rel": float(num_rel), "num_rel_ret": float(rel_ret), "map": ap,
        "gm_map": math.log(max(ap, MIN_GEO_MEAN)),
        "Rprec": cum[min(n, num_rel)] / num_rel if min(n, num_rel) else 0.0,
        "bpref": bpref, "recip_rank": 1.0 / (first_rel + 1) if first_rel is not None else 0.0,
    }
    m.update(zip(_names("iprec_at_recall", RECALL_POINTS, "{:.2f}"), _iprec_at_recall(rr, RECALL_POINTS),
                 strict=True))
    m.update({f"P_{k}": cum[k] / k for k in CUTOFFS})
    m.update({f"recall_{k}": cum[k] / num_rel if num_rel else 0.0 for k in CUTOFFS})
    m["infAP"] = _infap(rr)
    m["gm_bpref"] = math.log(max(bpref, MIN_GEO_MEAN))
    m.update(zip(_names("Rprec_mult", RPREC_MULTS, "{:.2f}"), _rprec_mult(rr, RPREC_MULTS), strict=True))
    u = UTILITY_PARAMS
    m["utility"] = u[0] * rel_ret + u[1] * (n - rel_ret) + u[2] * (num_rel - rel_ret) + u[3] * (
        0 + rel_ret - n - num_rel)
    pts = _iprec_at_recall(rr, RECALL_POINTS)
    m["11pt_avg"] = sum(pts) / len(pts)
    bin_g, rel_so_far = 0.0, 0
    for i, x in enumerate(is_rel):
        if x:
            rel_so_far += 1
            bin_g += 1.0 / math.log2(3 + i - rel_so_far)
    m["binG"] = bin_g / num_rel if rel_so_far else 0.0
    m["G"] = _g(rr, g)
    m["ndcg"] = _ndcg(rr, g)
    m["ndcg_rel"] = _ndcg_rel(rr, g)
    m["Rndcg"] = _rndcg(rr, g)
    m.update(zip(_names("ndcg_cut", CUTOFFS), _ndcg_cut(rr, CUTOFFS), strict=True))
    ap_sum, rel_so_far, ap_at = 0.0, 0, [0.0] * (top + 1)
    for i in range(top):
        if i < n and is_rel[i]:
            rel_so_far += 1
            ap_sum += rel_so_far / (i + 1)
        ap_at[i + 1] = ap_sum
    m.update({f"map_cut_{k}": ap_at[k] / num_rel if num_rel else 0.0 for k in CUTOFFS})
    m.update({f"relative_P_{k}": cum[k] / min(k, num_rel) if num_rel else 0.0 for k in CUTOFFS})
    m.update({f"success_{k}": 1.0 if cum[k] > 0 else 0.0 for k in SUCCESS_CUTOFFS})
    m["set_P"] = rel_ret / n if n else 0.0
    m["set_relative_P"] = rel_ret / min(n, num_rel) if n and num_rel else 0.0
    m["set_recall"] = rel_ret / num_rel if num_rel else 0.0
    m["set_map"] = (float(rel_ret) * float(rel_ret)) / (float(n) * float(num_rel)) if n and num_rel else 0.0
    if rel_ret:
        p_, r_, beta = rel_ret / n, rel_ret / num_rel, SET_F_BETA
        m["set_F"] = (beta + 1.0) * p_ * r_ / (beta * p_ + r_)
    else:
        m["set_F"] = 0.0
    m["num_nonrel_judged_ret"] = float(sum(1 for r in rels if 0 <= r < rr.relevance_level))
    m["rbp"] = _rbp(rr, g)
    m["rbp_resid"] = _rbp_resid(rr)
    for k in UNJ_CUTOFFS:
        m[f"unj_{k}"] = sum(1 for r in rels[:k] if r < 0) / k
    return m


# -- whole runs ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Per-query values and their aggregate, with the facts needed to read them."""

    per_query: dict[str, dict[str, float]]
    aggregate: dict[str, float]
    relstrings: dict[str, str] = field(default_factory=dict)
    run_name: str = ""
    queries_without_results: list[str] = field(default_factory=list)  # judged, nothing retrieved
    queries_without_judgments: list[str] = field(default_factory=list)  # retrieved, never judged (ignored)


def aggregate(per_query: Mapping[str, Mapping[str, float]], num_queries: int | None = None) -> dict[str, float]:
    """trec_eval's summary: sums for counts, geometric means for gm_*, arithmetic means for the rest."""
    n = len(per_query) if num_queries is None else num_queries
    names = list(next(iter(per_query.values()), {}))
    out: dict[str, float] = {"num_q": float(n)}
    for name in names:
        total = 0.0
        for q in per_query.values():
            total += q[name]
        if name in SUMMED:
            out[name] = total
        elif name in GEOMETRIC:
            total += (n - len(per_query)) * math.log(MIN_GEO_MEAN)
            out[name] = math.exp(total / n) if n else 0.0
        else:
            out[name] = total / n if n else 0.0
    return out


def evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], *,
             relevance_level: int = 1, complete: bool = False, judged_only: bool = False,
             depth: int | None = None, run_name: str = "", extra_k: Sequence[int] = (),
             version: str = "10") -> Evaluation:
    """Evaluate a run against qrels with every trec_eval measure (and MTEB's @k measures for `extra_k`).

    complete: average over every judged query (trec_eval -c), an unretrieved one counting as an empty ranking.
    judged_only: drop retrieved documents that are not judged before ranking (trec_eval -J).
    depth: look at the top `depth` documents of each query only (trec_eval -M).
    version: "10" follows trec_eval 10.0; "9" places the recall points of iprec_at_recall and 11pt_avg as
    trec_eval 9 did (p * R + 0.9, truncated), which is what pytrec_eval computes. Nothing else differs.
    """
    if version not in ("9", "10"):
        raise InputError(f"version must be '10' (trec_eval 10.0) or '9' (trec_eval 9 / pytrec_eval), got {version!r}")
    if depth is not None and depth < 1:
        raise InputError(f"depth must be a positive number of documents, got {depth}.")
    per_query: dict[str, dict[str, float]] = {}
    strings: dict[str, str] = {}
    missing = [q for q in qrels if q not in run]
    for qid in sorted(qrels):  # trec_eval sorts the queries of the qrels
        if qid not in run and not complete:
            continue
        rr = rank_query(qrels[qid], run.get(qid, {}), relevance_level, judged_only, depth, version)
        per_query[qid] = query_measures(rr)
        if extra_k:
            per_query[qid].update(mteb_query_scores(rr, extra_k))
        strings[qid] = relstring(rr)
    if not per_query:
        raise InputError(
            f"no query has both judgments and results: the qrels name {len(qrels)} queries (e.g. "
            f"{next(iter(qrels), '')!r}), the run {len(run)} (e.g. {next(iter(run), '')!r}); check the query ids."
        )
    agg = aggregate(per_query)
    return Evaluation(per_query, agg, strings, run_name, missing, [q for q in run if q not in qrels])


# -- the @k view of MTEB / BEIR -----------------------------------------------------------------------------
def mteb_query_scores(rr: Ranked, ks: Sequence[int]) -> dict[str, float]:
    """ndcg_at_k, map_at_k, recall_at_k, precision_at_k, mrr_at_k, hit_rate_at_k of one query."""
    out: dict[str, float] = {}
    ndcg = _ndcg_cut(rr, ks)
    for k, nd in zip(ks, ndcg, strict=True):
        top = rr.rels[:k]
        hits = [_is_rel(rr, r) for r in top]
        ap, seen = 0.0, 0
        for i, h in enumerate(hits):
            if h:
                seen += 1
                ap += seen / (i + 1)
        first = next((i for i, r in enumerate(top) if r > 0), None)
        out[f"ndcg_at_{k}"] = nd
        out[f"map_at_{k}"] = ap / rr.num_rel if rr.num_rel else 0.0
        out[f"recall_at_{k}"] = seen / rr.num_rel if rr.num_rel else 0.0
        out[f"precision_at_{k}"] = seen / k
        out[f"mrr_at_{k}"] = 1.0 / (first + 1) if first is not None else 0.0
        out[f"hit_rate_at_{k}"] = 1.0 if seen else 0.0
    return out


def mteb_scores(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                ks: Sequence[int] = DEFAULT_K) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean, per query) of MTEB's @k measures over the queries with judgments and results."""
    ks = check_ks(ks)
    per_query = {q: mteb_query_scores(rank_query(qrels[q], run[q]), ks) for q in sorted(qrels) if q in run}
    if not per_query:
        raise InputError("no query has both judgments and results; check the query ids of the run.")
    names = list(next(iter(per_query.values())))
    mean = {n: sum(v[n] for v in per_query.values()) / len(per_query) for n in names}
    return mean, per_query


def check_ks(ks: Sequence[int]) -> list[int]:
    """Validate cutoffs: positive integers, no duplicates; returned in ascending order."""
    out = sorted(set(ks))
    if not out or len(out) != len(ks) or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in out):
        raise InputError(f"cutoffs must be distinct positive integers, got {list(ks)}; e.g. --k 1,3,5,10,100")
    return out


# -- trec_eval's text output --------------------------------------------------------------------------------
def _line(name: str, qid: str, value: float | str) -> str:
    if isinstance(value, str):
        return f"{name:<22}\t{qid}\t{value}\n"
    if name in INTEGER or name == "num_q":
        return f"{name:<22}\t{qid}\t{int(value)}\n"
    return f"{name:<22}\t{qid}\t{value:6.4f}\n"


def format_trec_eval(ev: Evaluation, per_query: bool = False) -> str:
    """The text `trec_eval -a` prints (with `-q`: each query first, in qrels order, then `all`)."""
    out = []
    if per_query:
        for qid, values in ev.per_query.items():
            for name in MEASURES:
                if name in GEOMETRIC:
                    continue
                out.append(_line(name, qid, values[name]))
                if name == "P_1000":
                    out.append(_line("relstring", qid, f"'{ev.relstrings[qid]}'"))
    out.append(_line("runid", "all", ev.run_name))
    out.append(_line("num_q", "all", ev.aggregate["num_q"]))
    out += [_line(name, "all", ev.aggregate[name]) for name in MEASURES]
    return "".join(out)


# -- trec_eval's -m: choosing measures ----------------------------------------------------------------------
# families with a parameter list, and the @k measure of mteb_query_scores that equals them at any cutoff
FAMILIES: dict[str, list[str]] = {
    "P": _names("P", CUTOFFS), "recall": _names("recall", CUTOFFS), "ndcg_cut": _names("ndcg_cut", CUTOFFS),
    "map_cut": _names("map_cut", CUTOFFS), "relative_P": _names("relative_P", CUTOFFS),
    "success": _names("success", SUCCESS_CUTOFFS), "unj": _names("unj", UNJ_CUTOFFS),
    "iprec_at_recall": _names("iprec_at_recall", RECALL_POINTS, "{:.2f}"),
    "Rprec_mult": _names("Rprec_mult", RPREC_MULTS, "{:.2f}"),
}
AT_K = {"P": "precision_at", "recall": "recall_at", "ndcg_cut": "ndcg_at", "map_cut": "map_at",
        "success": "hit_rate_at"}
OFFICIAL = ["num_ret", "num_rel", "num_rel_ret", "map", "gm_map", "Rprec", "bpref", "recip_rank",
            *FAMILIES["iprec_at_recall"], *FAMILIES["P"]]


@dataclass(frozen=True)
class MeasureChoice:
    """The measures `-m` asked for: (printed name, key in an Evaluation's values) in trec_eval's order,
    and the extra cutoffs to compute (a family asked at a cutoff outside trec_eval's defaults)."""

    names: list[tuple[str, str]]
    extra_k: list[int]


def choose_measures(specs: Sequence[str]) -> MeasureChoice:
    """Parse trec_eval -m specs: `all_trec`, `official`, a measure (`map`), a family (`ndcg_cut`: its default
    cutoffs) or a family with parameters (`ndcg_cut.10` or `P.5,15,25`: those cutoffs)."""
    chosen: list[tuple[str, str]] = []
    extra: set[int] = set()
    for spec in specs:
        base, _, params = spec.partition(".")
        if spec in ("all_trec", "all"):
            chosen += [(m, m) for m in MEASURES]
        elif spec == "official":
            chosen += [(m, m) for m in OFFICIAL]
        elif not params and base in FAMILIES:
            chosen += [(m, m) for m in FAMILIES[base]]
        elif not params and base in MEASURES:
            chosen.append((base, base))
        elif params and base in AT_K:
            try:
                ks = [int(p) for p in params.split(",") if p.strip()]
            except ValueError:
                ks = []
            if not ks or any(k < 1 for k in ks):
                raise InputError(f"-m {spec}: {base} takes positive integer cutoffs, e.g. -m {base}.10 or {base}.5,10.")
            for k in ks:
                name = f"{base}_{k}"
                if name in MEASURES:
                    chosen.append((name, name))
                else:
                    chosen.append((name, f"{AT_K[base]}_{k}"))
                    extra.add(k)
        else:
            families = ", ".join(f"{f}[.k,...]" if f in AT_K else f for f in FAMILIES)
            raise InputError(f"-m {spec!r} is not a trec_eval measure we compute; use all_trec, official, a measure "
                             f"name such as map or ndcg, or a family: {families}.")
    unique = list(dict(chosen).items())  # first occurrence of each name, in the order given
    return MeasureChoice(sorted(unique, key=_trec_order), sorted(extra))


def _trec_order(choice: tuple[str, str]) -> tuple[int, float]:
    """trec_eval prints measures in MEASURES order; a family's cutoffs by value (custom ones included)."""
    name = choice[0]
    if name in MEASURES:
        family = next((f for f, members in FAMILIES.items() if name in members), None)
        if family is None:
            return MEASURES.index(name), 0.0
    else:
        family = name.rsplit("_", 1)[0]
    return MEASURES.index(FAMILIES[family][0]), float(name.rsplit("_", 1)[1])


def format_measures(ev: Evaluation, choice: MeasureChoice, per_query: bool = False) -> str:
    """trec_eval's text output of the chosen measures only (`trec_eval -m ...`)."""
    out = []
    if per_query:
        for qid, values in ev.per_query.items():
            out += [_line(name, qid, values[key]) for name, key in choice.names if name not in GEOMETRIC]
    out.append(_line("runid", "all", ev.run_name))
    out.append(_line("num_q", "all", ev.aggregate["num_q"]))
    out += [_line(name, "all", ev.aggregate[key]) for name, key in choice.names]
    return "".join(out)
