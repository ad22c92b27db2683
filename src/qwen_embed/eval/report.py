"""Reports of an evaluation: JSON (aggregate and per-query values), a Markdown summary table, and plots.

Retrieval: `scores.json`, `summary.md`, and `ndcg_vs_dim.png` (nDCG@10 against the Matryoshka dimension)
when several dims were evaluated. Rerank: `rerank_scores.json`, `rerank_summary.md` and
`rerank_delta.png` (per-query change of nDCG@10, sorted). Every file is written atomically. The JSON
holds every trec_eval measure and MTEB's @k measures in the aggregate; per query it keeps MTEB's @k measures
and trec_eval's map, ndcg, recip_rank, Rprec and bpref.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files import atomic_file, write_text_atomic
from .at_k import MTEB_PREFIXES
from .metrics import Evaluation
from .rerank import RerankEvaluation
from .retrieval import RetrievalResult

PER_QUERY_TREC = ("map", "ndcg", "recip_rank", "Rprec", "bpref")


def main_k(ks: Sequence[int]) -> int:
    """The cutoff of the headline nDCG: 10 when evaluated (MTEB's main score), else the largest."""
    return 10 if 10 in ks else max(ks)


def _per_query(ev: Evaluation) -> dict[str, dict[str, float]]:
    return {q: {k: v for k, v in m.items() if k.startswith(MTEB_PREFIXES) or k in PER_QUERY_TREC}
            for q, m in ev.per_query.items()}


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    return {"aggregate": ev.aggregate, "per_query": _per_query(ev),
            "queries_without_results": ev.queries_without_results}


def retrieval_json(res: RetrievalResult) -> dict[str, Any]:
    """The retrieval report as one JSON-ready object."""
    return {"task": "retrieval", "dataset": res.dataset, "split": res.split, "model": res.model,
            "instruction": res.instruction, "ks": res.ks, "depth": res.depth, "stats": res.stats,
            "timings": res.timings, "dims": {str(d.dim): _evaluation_json(d.evaluation) for d in res.dims}}


def rerank_json(res: RerankEvaluation) -> dict[str, Any]:
    """The rerank report as one JSON-ready object."""
    return {"task": "rerank", "dataset": res.dataset, "split": res.split, "model": res.model,
            "instruction": res.instruction, "top": res.top, "ks": res.ks, "stats": res.stats,
            "timings": res.timings, "before": _evaluation_json(res.before), "after": _evaluation_json(res.after)}


def _columns(ks: Sequence[int]) -> list[tuple[str, str]]:
    k = main_k(ks)
    cols = [(f"nDCG@{x}", f"ndcg_at_{x}") for x in ks]
    cols += [(f"MAP@{k}", f"map_at_{k}"), (f"MRR@{k}", f"mrr_at_{k}"), (f"Recall@{max(ks)}", f"recall_at_{max(ks)}")]
    return cols


UNIT = "Scores in % (x100, as MTEB leaderboards print them)."


def _table(rows: Sequence[tuple[str, Mapping[str, float]]], ks: Sequence[int], first: str) -> str:
    cols = _columns(ks)
    out = [f"| {first} | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, agg in rows:
        out.append(f"| {label} | " + " | ".join(f"{100 * agg[key]:.2f}" for _, key in cols) + " |")
    return "\n".join(out)


def retrieval_markdown(res: RetrievalResult) -> str:
    """Summary table (values in %, as MTEB leaderboards print them), one row per dimension."""
    n = int(res.dims[0].evaluation.aggregate["num_q"])
    head = (f"## {res.dataset} ({res.split}) - {res.model}\n\n{n} queries, {res.stats.get('documents')} documents, "
            f"exact search, top {res.depth}. Instruction: `{res.instruction}`\n\n{UNIT}\n\n")
    return head + _table([(str(d.dim), d.evaluation.aggregate) for d in res.dims], res.ks, "dim") + "\n"


def rerank_markdown(res: RerankEvaluation) -> str:
    """Before / after / change table of a rerank."""
    b, a = res.before.aggregate, res.after.aggregate
    delta = {k: a[k] - b[k] for k in a if k in b}
    head = (f"## {res.dataset} ({res.split}) - rerank top {res.top} with {res.model}\n\n"
            f"{res.stats['queries']} queries, {res.stats['pairs']} pairs. Instruction: `{res.instruction}`\n\n"
            f"{UNIT} The change row is in percentage points.\n\n")
    return head + _table([("candidates", b), ("reranked", a), ("change", delta)], res.ks, "run") + "\n"


def _save_json(path: Path, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def _save_text(path: Path, text: str) -> None:
    write_text_atomic(path, text)


def _save_figure(path: Path, fig: Any) -> None:
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")


def plot_ndcg_vs_dim(res: RetrievalResult, path: Path) -> None:
    """nDCG@10 (or the headline k) against the Matryoshka dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = main_k(res.ks)
    dims = [d.dim for d in res.dims]
    vals = [100 * d.evaluation.aggregate[f"ndcg_at_{k}"] for d in res.dims]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(dims, vals, marker="o")
    ax.set_xscale("log", base=2)
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.set_xlabel("embedding dimension (Matryoshka)")
    ax.set_ylabel(f"nDCG@{k} (%)")
    ax.set_title(f"{res.dataset}: {Path(res.model).name}")
    ax.grid(alpha=0.3)
    _save_figure(path, fig)
    plt.close(fig)


def plot_rerank_delta(res: RerankEvaluation, path: Path) -> None:
    """Per-query change of nDCG@10 from reranking, sorted, with the mean change."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = main_k(res.ks)
    name = f"ndcg_at_{k}"
    deltas = sorted(res.after.per_query[q][name] - res.before.per_query[q][name] for q in res.after.per_query)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in deltas]
    ax.bar(range(len(deltas)), deltas, color=colors, width=1.0)
    ax.axhline(sum(deltas) / len(deltas), color="black", lw=1, ls="--", label="mean change")
    ax.set_xlabel(f"queries, sorted ({sum(d > 0 for d in deltas)} up, {sum(d < 0 for d in deltas)} down)")
    ax.set_ylabel(f"change of nDCG@{k}")
    ax.set_title(f"{res.dataset}: rerank top {res.top} with {Path(res.model).name}")
    ax.legend()
    _save_figure(path, fig)
    plt.close(fig)


def write_retrieval_report(res: RetrievalResult, folder: Path) -> list[Path]:
    """scores.json, summary.md and (several dims) ndcg_vs_dim.png in `folder`; returns the paths."""
    paths = [folder / "scores.json", folder / "summary.md"]
    _save_json(paths[0], retrieval_json(res))
    _save_text(paths[1], retrieval_markdown(res))
    if len(res.dims) > 1:
        paths.append(folder / "ndcg_vs_dim.png")
        plot_ndcg_vs_dim(res, paths[-1])
    return paths


def write_rerank_report(res: RerankEvaluation, folder: Path) -> list[Path]:
    """rerank_scores.json, rerank_summary.md and rerank_delta.png in `folder`; returns the paths."""
    paths = [folder / "rerank_scores.json", folder / "rerank_summary.md", folder / "rerank_delta.png"]
    _save_json(paths[0], rerank_json(res))
    _save_text(paths[1], rerank_markdown(res))
    plot_rerank_delta(res, paths[2])
    return paths
