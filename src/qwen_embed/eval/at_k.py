"""The @k view MTEB and BEIR report, from the trec_eval port's per-query rankings (metrics.py).

ndcg_at_k, map_at_k, recall_at_k, precision_at_k, mrr_at_k and hit_rate_at_k: MTEB gets them from
pytrec_eval's ndcg_cut / map_cut / recall / P / success and its own MRR@k (the first document with rel > 0
in the top k). They read the same per-query running sums (`metrics.Prefix`) as trec_eval's measures, so
average precision is computed once. This naming (`ndcg_at_10`) is the one of eval's reports and of the
training log's held-out evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import InputError, is_whole
from .metrics import Prefix, Ranked, _ndcg_cut, rank_query

MTEB_PREFIXES = ("ndcg_at", "map_at", "recall_at", "precision_at", "mrr_at", "hit_rate_at")
DEFAULT_K = (1, 3, 5, 10, 100)


def check_ks(ks: Sequence[int]) -> list[int]:
    """Validate cutoffs: positive integers, no duplicates; returned in ascending order."""
    valid = all(is_whole(k, 1) for k in ks)
    out = sorted(set(ks)) if valid else []
    if not out or len(out) != len(ks):
        raise InputError(f"cutoffs must be distinct positive integers, got {list(ks)}; e.g. --k 1,3,5,10,100")
    return out


def query_scores(rr: Ranked, ks: Sequence[int], prefix: Prefix | None = None) -> dict[str, float]:
    """ndcg_at_k, map_at_k, recall_at_k, precision_at_k, mrr_at_k, hit_rate_at_k of one query.

    prefix: the query's running sums to a depth of at least max(ks) (made here when None)."""
    prefix = prefix or Prefix.of(rr, max(ks))
    out: dict[str, float] = {}
    for k, nd in zip(ks, _ndcg_cut(rr, ks), strict=True):
        seen = prefix.relevant[k]
        first = next((i for i, r in enumerate(rr.rels[:k]) if r > 0), None)
        out[f"ndcg_at_{k}"] = nd
        out[f"map_at_{k}"] = prefix.precision_sum[k] / rr.num_rel if rr.num_rel else 0.0
        out[f"recall_at_{k}"] = seen / rr.num_rel if rr.num_rel else 0.0
        out[f"precision_at_{k}"] = seen / k
        out[f"mrr_at_{k}"] = 1.0 / (first + 1) if first is not None else 0.0
        out[f"hit_rate_at_{k}"] = 1.0 if seen else 0.0
    return out


def mteb_scores(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                ks: Sequence[int] = DEFAULT_K) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean, per query) of MTEB's @k measures over the queries with judgments and results."""
    ks = check_ks(ks)
    per_query = {q: query_scores(rank_query(qrels[q], run[q]), ks) for q in sorted(qrels) if q in run}
    if not per_query:
        raise InputError("no query has both judgments and results; check the query ids of the run.")
    names = list(next(iter(per_query.values())))
    mean = {n: sum(v[n] for v in per_query.values()) / len(per_query) for n in names}
    return mean, per_query
