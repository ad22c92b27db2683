"""Evaluation: BEIR loader, TREC files, trec_eval-exact metrics, retrieval and rerank evaluation, reports.

    from qwen_embed.eval import load_beir, evaluate
    ds = load_beir("data/scifact", split="test")
    ev = evaluate(ds.qrels, run)            # every trec_eval measure, per query and aggregate

Heavy parts (models, torch, matplotlib, mteb) are imported by the modules that need them, not here.
"""

from .at_k import mteb_scores
from .beir import BeirDataset, load_beir, read_qrels_file
from .metrics import Evaluation, evaluate
from .trec import Qrels, Run, read_qrels, read_run, write_run
from .trec_text import format_trec_eval

__all__ = ["BeirDataset", "Evaluation", "Qrels", "Run", "evaluate", "format_trec_eval", "load_beir",
           "mteb_scores", "read_qrels", "read_qrels_file", "read_run", "write_run"]
