"""`qwen-embed eval metrics|retrieval|rerank`: the evaluation commands.

`register` only builds the parsers; models, torch and matplotlib are imported inside the handlers so that
`qwen-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL, ModelSettings

DEFAULT_OUTPUT = "eval-results"


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} takes comma-separated integers, e.g. 1,3,5,10; got {text!r}.") from None


def resolve_instruction(instruction: str | None, task: str | None, dataset_name: str) -> tuple[str, str]:
    """(instruction, where it came from): --instruction, else --task, else the dataset's name when the
    instruction table knows it, else the model card's web-search default."""
    from ..embedder import DEFAULT_INSTRUCTION
    from .instructions import is_known, lookup

    if instruction is not None:
        if not instruction.strip():
            raise InputError("--instruction is empty; give a task description or leave it out.")
        return instruction, "--instruction"
    if task is not None:
        return lookup(task), f"--task {task}" + ("" if is_known(task) else " (not in the table: official default)")
    if is_known(dataset_name):
        return lookup(dataset_name), f"table entry of {dataset_name!r}"
    return DEFAULT_INSTRUCTION, "default web-search instruction"


def _in_output_dir(args: argparse.Namespace, model: str, run: Callable[[Path], int]) -> int:
    """`run(folder)` in the output folder, checked (and created) before the dataset is read or a model loaded;
    when `run` fails, the folders made for it are removed again while still empty."""
    from .outputs import prepare_output_dir, remove_if_empty

    default = Path(DEFAULT_OUTPUT) / Path(args.dataset).resolve().name / Path(model.rstrip("/")).name
    made: list[Path] = []
    out = prepare_output_dir(args.output_dir, default, overwrite=args.overwrite, made=made)
    try:
        return run(out)
    except BaseException:
        remove_if_empty(made)
        raise


def _finish(out: Path, command: str, paths: list[Path]) -> None:
    from .outputs import CACHE, record_outputs

    cache = out / CACHE
    removed = record_outputs(out, command, [*paths, *([cache] if cache.exists() else [])])
    if removed:
        _say("removed files of an earlier run that this one did not write: " + ", ".join(p.name for p in removed))


def _say(msg: str) -> None:
    print(f"qwen-embed eval: {msg}", file=sys.stderr)


# -- metrics -------------------------------------------------------------------------------------------
def cmd_metrics(args: argparse.Namespace) -> int:
    from .beir import read_qrels_file
    from .metrics import evaluate
    from .trec import read_run_file
    from .trec_text import choose_measures, format_measures, format_trec_eval

    choice = choose_measures(args.measure) if args.measure else None
    qrels = read_qrels_file(args.qrels)  # TREC or BEIR, told by the content (MS MARCO's qrels.dev.tsv is TREC)
    run = read_run_file(args.run)
    ev = evaluate(qrels, run.scores, relevance_level=args.relevance_level, complete=args.complete,
                  judged_only=args.judged_only, depth=args.depth, run_name=run.name, version=args.trec_eval_version,
                  extra_k=choice.extra_k if choice else ())
    if ev.queries_without_judgments:
        _say(f"{len(ev.queries_without_judgments)} run queries have no judgments and are not evaluated "
             f"(e.g. {ev.queries_without_judgments[0]!r})")
    if args.json:
        obj: dict[str, Any] = dict(ev.aggregate)
        per_query: dict[str, Any] = ev.per_query
        if choice is not None:
            obj = {"num_q": ev.aggregate["num_q"], **{name: ev.aggregate[key] for name, key in choice.values}}
            per_query = {q: {name: v[key] for name, key in choice.values} for q, v in ev.per_query.items()}
        if args.per_query:
            obj = {"all": obj, "per_query": per_query}
        print(json.dumps(obj, indent=1))
    elif choice is not None:
        sys.stdout.write(format_measures(ev, choice, per_query=args.per_query))
    else:
        sys.stdout.write(format_trec_eval(ev, per_query=args.per_query))
    return 0


# -- retrieval -----------------------------------------------------------------------------------------
def cmd_retrieval(args: argparse.Namespace) -> int:
    from .at_k import check_ks
    from .trec import check_run_name

    check_run_name(args.run_name, "--run-name")  # everything the flags decide is checked before any work
    dims = _int_list(args.dim, "--dim") if args.dim else None
    ks = check_ks(_int_list(args.k, "--k"))
    if args.depth < max(ks):
        raise InputError(f"--depth {args.depth} is below the largest cutoff --k {max(ks)}; raise --depth or drop "
                         f"that cutoff.")
    return _in_output_dir(args, args.embedding_model, lambda out: _retrieval(args, out, dims, ks))


def _retrieval(args: argparse.Namespace, out: Path, dims: list[int] | None, ks: list[int]) -> int:
    from .beir import load_beir
    from .outputs import CACHE, claim_output_dir
    from .report import retrieval_markdown, write_retrieval_report
    from .retrieval import check_dims, evaluate_retrieval
    from .trec import write_run

    ds = load_beir(args.dataset, args.split)
    instruction, source = resolve_instruction(args.instruction, args.task, ds.name)
    emb = ModelSettings.from_args(args, flag="--embedding-model").load_embedder(allow_causal_lm=args.allow_causal_lm)
    check_dims(dims, emb.hidden_size)
    _say(f"{ds.name}/{ds.split}: {ds.stats['documents']} documents, {ds.stats['queries']} judged queries "
         f"({ds.stats['queries_without_judgments']} queries without judgments skipped); instruction from {source}")
    claim_output_dir(out, "retrieval")  # before the first file: an interrupted run resumes in this folder
    res = evaluate_retrieval(emb, ds, instruction=instruction, dims=dims, ks=ks, depth=args.depth,
                             cache_dir=None if args.no_cache else out / CACHE, device=args.search_device,
                             progress=None if sys.stderr.isatty() else False, on_stage=_say,
                             ignore_identical_ids=args.ignore_identical_ids)
    paths = []
    for d in res.dims:
        path = out / ("run.trec" if len(res.dims) == 1 else f"run.dim{d.dim}.trec")
        write_run(path, d.run, args.run_name)
        paths.append(path)
    paths += write_retrieval_report(res, out)
    _finish(out, "retrieval", paths)
    print(retrieval_markdown(res))
    _say("wrote " + ", ".join(str(p) for p in paths))
    return 0


# -- rerank --------------------------------------------------------------------------------------------
def cmd_rerank(args: argparse.Namespace) -> int:
    from ..reranker import get_template
    from .at_k import check_ks
    from .trec import check_run_name

    check_run_name(args.run_name, "--run-name")  # everything the flags decide is checked before any work
    get_template(args.template)
    ks = check_ks(_int_list(args.k, "--k"))
    if args.top < 1:
        raise InputError(f"--top must be a positive number of candidates, got {args.top}.")
    if max(ks) > args.top:  # beyond the reranked top the lists are the candidates': report what was reranked
        dropped = [k for k in ks if k > args.top]
        ks = [k for k in ks if k <= args.top]
        if args.top not in ks:
            ks.append(args.top)
        _say(f"--top {args.top}: reporting @{','.join(map(str, ks))} (cutoffs {','.join(map(str, dropped))} lie "
             f"beyond the reranked documents)")
    return _in_output_dir(args, args.reranker_model, lambda out: _rerank(args, out, ks))


def _rerank(args: argparse.Namespace, out: Path, ks: list[int]) -> int:
    from ..files import resumable_files
    from .beir import load_beir
    from .outputs import RERANK_SCORES, claim_output_dir
    from .report import rerank_markdown, write_rerank_report
    from .rerank import check_candidates, evaluate_rerank
    from .trec import read_run, write_run

    ds = load_beir(args.dataset, args.split)
    candidates = read_run(args.candidates)
    check_candidates(ds, candidates)  # before loading the model
    instruction, source = resolve_instruction(args.instruction, args.task, ds.name)
    rr = ModelSettings.from_args(args, flag="--reranker-model").load_reranker(args.template)
    _say(f"instruction from {source}")
    claim_output_dir(out, "rerank")  # before the first file: an interrupted run resumes in this folder
    res = evaluate_rerank(rr, ds, candidates, instruction=instruction, top=args.top, ks=ks,
                          partial=out / RERANK_SCORES, keep_partial=True,
                          progress=None if sys.stderr.isatty() else False, on_stage=_say)
    run_path = out / "rerank.trec"
    write_run(run_path, res.run, args.run_name)
    paths = [run_path, *write_rerank_report(res, out)]
    for name in resumable_files(RERANK_SCORES):  # the scores stay resumable until the results are in place
        (out / name).unlink(missing_ok=True)
    _finish(out, "rerank", paths)
    print(rerank_markdown(res))
    _say("wrote " + ", ".join(str(p) for p in paths))
    return 0


# -- parsers -------------------------------------------------------------------------------------------
def _instruction_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--instruction", default=None, help="query instruction (default: the table entry of the "
                   "dataset's name, else the web-search instruction)")
    g.add_argument("--task", default=None, help="MTEB task name whose instruction to use, e.g. SciFact, TRECCOVID")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default=None, help=f"where to write (default {DEFAULT_OUTPUT}/<dataset>/<model>); "
                   "a folder of an earlier evaluation is resumed, one holding other files is refused")
    p.add_argument("--overwrite", action="store_true", help="write into an --output-dir that holds other files "
                   "(only the evaluation's own files are replaced)")


def register(subparsers: Any) -> None:
    """Add `eval metrics|retrieval|rerank` to the `qwen-embed` parser."""
    ev = subparsers.add_parser("eval", help="evaluate: trec_eval metrics, BEIR retrieval, reranking",
                               description="Evaluation with the MTEB/BEIR protocol and trec_eval's measures.")
    sub = ev.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)

    p = sub.add_parser("metrics", help="every trec_eval measure of a run (trec_eval -a output or JSON)",
                       description="Score a TREC run against qrels with every trec_eval measure.")
    p.add_argument("qrels", help="qrels file, TREC (qid iter docno rel) or BEIR (query-id corpus-id score), told "
                   "apart by its content")
    p.add_argument("run", help="TREC run file (qid Q0 docno rank score run)")
    p.add_argument("--json", action="store_true", help="print one JSON object, measure -> value")
    p.add_argument("-q", "--per-query", action="store_true", help="also print each query (trec_eval -q)")
    p.add_argument("-c", "--complete", action="store_true",
                   help="average over every judged query; unretrieved ones count as empty (trec_eval -c)")
    p.add_argument("-l", "--relevance-level", type=int, default=1, help="lowest relevant judgment (default 1)")
    p.add_argument("-J", "--judged-only", action="store_true", help="drop unjudged retrieved documents (trec_eval -J)")
    p.add_argument("-M", "--depth", type=int, default=None, help="documents per query to look at (default all)")
    p.add_argument("-m", "--measure", action="append", default=[], metavar="MEASURE",
                   help="print only these measures, as trec_eval -m: all_trec, official, a name (map), a family "
                   "(ndcg_cut) or a family at cutoffs (ndcg_cut.10, P.5,10); repeatable")
    p.add_argument("--trec-eval-version", choices=["10", "9"], default="10",
                   help="10 (default) or 9: trec_eval 9 / pytrec_eval place the recall points of "
                   "iprec_at_recall and 11pt_avg differently")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("retrieval", help="embed a BEIR dataset, exact top-k, save the run and the scores",
                       description="MTEB/BEIR retrieval evaluation of an embedding model.")
    p.add_argument("--dataset", required=True, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    ModelSettings.add_arguments(p, DEFAULT_EMBEDDING_MODEL, flag="--embedding-model")
    _instruction_options(p)
    p.add_argument("--dim", default=None, help="Matryoshka dimension(s), comma-separated, e.g. 128,256,1024 "
                   "(default: the full size)")
    p.add_argument("--k", default="1,3,5,10,100", help="cutoffs of the @k measures (default 1,3,5,10,100)")
    p.add_argument("--depth", type=int, default=1000, help="documents kept per query in the run (default 1000)")
    p.add_argument("--search-device", default=None, help="device of the similarity search (default: cuda if present)")
    _output_options(p)
    p.add_argument("--run-name", default="qwen-embed", help="the run name in the TREC file (default qwen-embed)")
    p.add_argument("--allow-causal-lm", action="store_true",
                   help="evaluate the trunk of a reranker / causal-LM checkpoint as an embedder on purpose")
    p.add_argument("--no-cache", action="store_true", help="do not keep corpus embeddings for resuming")
    p.add_argument("--ignore-identical-ids", action=argparse.BooleanOptionalAction, default=None,
                   help="drop retrieved documents whose id is the query's (default: as MTEB, on for ArguAna, "
                   "FiQA2018, FEVER, MSMARCO, Quora)")
    p.set_defaults(func=cmd_retrieval)

    p = sub.add_parser("rerank", help="rerank the top N of a saved run, metrics before and after",
                       description="Rerank the top candidates of a run with a Qwen3 reranker (the published "
                       "protocol: candidates from the embedding model's run).")
    p.add_argument("--dataset", required=True, help="BEIR folder the run was made on")
    p.add_argument("--split", default="test", help="qrels split (default: test)")
    p.add_argument("--candidates", required=True, help="TREC run whose top documents are reranked")
    p.add_argument("--top", type=int, default=100, help="candidates reranked per query (default 100)")
    ModelSettings.add_arguments(p, DEFAULT_RERANKER_MODEL, flag="--reranker-model")
    _instruction_options(p)
    p.add_argument("--template", default="official-eval",
                   help="reranker prompt form: official-eval (default, the published scores') or card")
    p.add_argument("--k", default="1,3,5,10,100", help="cutoffs of the @k measures (default 1,3,5,10,100)")
    _output_options(p)
    p.add_argument("--run-name", default="qwen-embed-rerank", help="the run name in the TREC file")
    p.set_defaults(func=cmd_rerank)


