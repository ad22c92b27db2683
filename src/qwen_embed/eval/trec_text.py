"""trec_eval's text output: `format_trec_eval` prints what `trec_eval -a [-q]` prints, byte for byte;
`choose_measures` / `format_measures` do what its `-m` option does."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import InputError
from .metrics import (
    CUTOFFS,
    GEOMETRIC,
    INTEGER,
    MEASURES,
    RECALL_POINTS,
    RPREC_MULTS,
    SUCCESS_CUTOFFS,
    UNJ_CUTOFFS,
    Evaluation,
    _names,
)


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
# trec_eval's measures that are not numbers of the Evaluation: the run's name and the number of queries
# (printed for `all` only) and each query's relstring (printed per query only)
META = ("runid", "num_q", "relstring")
OFFICIAL = ["runid", "num_q", "num_ret", "num_rel", "num_rel_ret", "map", "gm_map", "Rprec", "bpref", "recip_rank",
            *FAMILIES["iprec_at_recall"], *FAMILIES["P"]]


@dataclass(frozen=True)
class MeasureChoice:
    """The measures `-m` asked for: (printed name, key in an Evaluation's values) in trec_eval's order,
    `runid`, `num_q` and `relstring` (META) among them when asked, and the extra cutoffs to compute (a
    family asked at a cutoff outside trec_eval's defaults)."""

    names: list[tuple[str, str]]
    extra_k: list[int]

    @property
    def values(self) -> list[tuple[str, str]]:
        """The chosen numeric measures: `names` without META."""
        return [(name, key) for name, key in self.names if name not in META]


def choose_measures(specs: Sequence[str]) -> MeasureChoice:
    """Parse trec_eval -m specs: `all_trec`, `official`, a measure (`map`), a family (`ndcg_cut`: its default
    cutoffs) or a family with parameters (`ndcg_cut.10` or `P.5,15,25`: those cutoffs)."""
    chosen: list[tuple[str, str]] = []
    extra: set[int] = set()
    for spec in specs:
        base, _, params = spec.partition(".")
        if spec in ("all_trec", "all"):
            chosen += [(m, m) for m in (*META, *MEASURES)]
        elif spec == "official":
            chosen += [(m, m) for m in OFFICIAL]
        elif not params and base in FAMILIES:
            chosen += [(m, m) for m in FAMILIES[base]]
        elif not params and (base in MEASURES or base in META):
            chosen.append((base, base))
        elif params and base in AT_K:
            parts = [p.strip() for p in params.split(",") if p.strip()]
            ks = [int(p) for p in parts] if all(p.isascii() and p.isdigit() for p in parts) else []
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
    """trec_eval prints measures in MEASURES order; a family's cutoffs by value (custom ones included);
    runid and num_q first, relstring after the P family."""
    name = choice[0]
    if name in META:
        return (-2, 0.0) if name == "runid" else (-1, 0.0) if name == "num_q" else (
            MEASURES.index(FAMILIES["P"][0]), math.inf)
    if name in MEASURES:
        family = next((f for f, members in FAMILIES.items() if name in members), None)
        if family is None:
            return MEASURES.index(name), 0.0
    else:
        family = name.rsplit("_", 1)[0]
    return MEASURES.index(FAMILIES[family][0]), float(name.rsplit("_", 1)[1])


def format_measures(ev: Evaluation, choice: MeasureChoice, per_query: bool = False) -> str:
    """trec_eval's text output of the chosen measures only (`trec_eval -m ... [-q]`): per query, each
    query's lines without runid, num_q and the gm_* measures; then the `all` lines without relstring."""
    out = []
    if per_query:
        for qid, values in ev.per_query.items():
            for name, key in choice.names:
                if name == "relstring":
                    out.append(_line(name, qid, f"'{ev.relstrings[qid]}'"))
                elif name not in GEOMETRIC and name not in META:
                    out.append(_line(name, qid, values[key]))
    for name, key in choice.names:
        if name == "runid":
            out.append(_line(name, "all", ev.run_name))
        elif name != "relstring":
            out.append(_line(name, "all", ev.aggregate[key]))
    return "".join(out)
