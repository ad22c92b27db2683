"""trec_eval's text output: `format_trec_eval` prints what `trec_eval -a [-q]` prints, byte for byte."""

from __future__ import annotations

from .metrics import GEOMETRIC, INTEGER, MEASURES, Evaluation


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
