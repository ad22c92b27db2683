"""`qwen-embed train ...`, `qwen-embed mine`, `qwen-embed merge` and `qwen-embed merge-lora`.

Heavy imports (torch training code, peft, matplotlib) happen inside the handlers, so that
`qwen-embed --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..settings import DEFAULT_EMBEDDING_MODEL, ModelSettings


def _say(command: str, message: str) -> None:
    print(f"qwen-embed {command}: {message}", file=sys.stderr)


def cmd_train_embed(args: argparse.Namespace) -> int:
    return _train(args, "embed")


def cmd_train_rerank(args: argparse.Namespace) -> int:
    return _train(args, "rerank")


def _train(args: argparse.Namespace, kind: str) -> int:
    """`train embed|rerank`: the run folder is checked (new, resumed, finished, refused) before any model loads."""
    from .config import load_config
    from .loop import train
    from .rundir import check_run_dir

    command = f"train {kind}"
    cfg = load_config(args.config, args.set, kind=kind)
    existed = Path(cfg.train.output_dir).exists()
    state = check_run_dir(cfg, overwrite=args.overwrite)
    message = state.message(cfg.train.max_steps)
    if message:
        _say(command, message)
    if state.kind == "finished":
        return 0
    try:
        summary = train(cfg, kind=kind)
    except BaseException:
        if state.kind == "new":  # a run that failed before writing anything leaves nothing behind
            from .rundir import discard_empty_run

            discard_empty_run(Path(cfg.train.output_dir), created=not existed)
        raise
    how = f"resumed at step {state.step}, " if state.kind == "resume" else "a new run, "
    _say(command, f"trained to step {summary['step']} ({how}train.max_steps={cfg.train.max_steps}) -> "
         f"{cfg.train.output_dir}")
    return 0


def cmd_train_settings(args: argparse.Namespace) -> int:
    from .config import describe

    print(describe())
    return 0


def cmd_train_plot(args: argparse.Namespace) -> int:
    from ..files import check_output_file
    from .plot import plot_learning_curve

    check_output_file(args.output, overwrite=args.overwrite)
    out = plot_learning_curve(args.log, args.output, title=args.title)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_stdlib_pairs(args: argparse.Namespace) -> int:
    from ..files import check_output_dir
    from .stdlib_pairs import train_tokenizer, write_pairs

    if not (math.isfinite(args.held_out) and 0 <= args.held_out < 1):
        raise InputError(f"--held-out {args.held_out} must be a finite fraction in [0, 1) (default 0.1).")
    check_output_dir(args.output, overwrite=args.overwrite)

    train, held, n_train, n_held = write_pairs(args.output, held_out=args.held_out,
                                               strip_docstring=not args.keep_docstring)
    print(f"wrote {n_train} training rows to {train} and {n_held} held-out rows to {held}", file=sys.stderr)
    if args.tokenizer_vocab:
        tok = train_tokenizer(train, train.parent / "tokenizer.json", args.tokenizer_vocab)
        print(f"wrote a {args.tokenizer_vocab}-token BPE trained on them to {tok} (for make-tiny --tokenizer)",
              file=sys.stderr)
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from ..files import check_output_file
    from .mining import MiningSettings, mine

    settings = MiningSettings(top_k=args.top_k, num_negatives=args.negatives, margin=args.margin, seed=args.seed,
                              chunk=args.chunk, dim=args.dim, default_instruction=args.instruction)
    settings.check()
    check_output_file(args.output, overwrite=args.overwrite)  # before the model loads
    for path, what in ((args.input, "--input"), (args.corpus, "--corpus")):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{what} {path} does not exist or is not a file.")
    emb = ModelSettings.from_args(args).load_embedder()
    stats: dict[str, Any] = mine(emb, args.input, args.output, corpus_path=args.corpus, settings=settings,
                                 progress=sys.stderr.isatty())
    print(json.dumps(stats), file=sys.stderr)
    _say("mine", f"wrote {stats['rows']} rows to {args.output}, negatives drawn from {stats['corpus']} texts")
    if stats.get("short_rows"):
        _say("mine", f"short_rows={stats['short_rows']}: that many rows got fewer than --negatives {args.negatives} "
             f"negatives, because too few of their top-{args.top_k} candidates scored below s(query, positive) - "
             f"margin {args.margin}; raise --top-k, lower --margin, or give a larger --corpus.")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from .lora import base_mismatch, merge_checkpoint

    warning = base_mismatch(args.base, args.adapter)
    if warning:
        _say("merge-lora", f"warning: {warning}")

    out = merge_checkpoint(args.base, args.adapter, args.output, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote the merged checkpoint to {out}", file=sys.stderr)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from .merge import merge_checkpoints, parse_weights

    report = merge_checkpoints(args.models, args.output, method=args.method, base=args.base,
                               weights=parse_weights(args.weights), t=args.t, overwrite=args.overwrite,
                               max_shard_size=args.max_shard_size)
    print(report.table())
    print(f"wrote the merged checkpoint and merge_report.json to {args.output}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add `train`, `mine`, `merge` and `merge-lora` to the qwen-embed command."""
    p = sub.add_parser("train", help="train embedding and reranker models (contrastive / yes-no SFT, LoRA, "
                       "GradCache, data parallel)",
                       description="Training commands. Start with `qwen-embed train embed --config FILE.yaml`; "
                       "`qwen-embed train settings` lists every setting with its default.")
    tsub = p.add_subparsers(dest="train_command", metavar="TRAIN_COMMAND", required=True)

    e = tsub.add_parser("embed", help="train an embedding model from a YAML config",
                        description="Contrastive training (improved InfoNCE) of a Qwen3 embedding model. Resumes "
                        "from the newest checkpoint in train.output_dir. Multi-process: torchrun "
                        "--nproc-per-node N -m qwen_embed train embed --config FILE.yaml")
    e.add_argument("--config", required=True,
                   help="YAML file: sections model, data, loss, optim, train, lora, eval, merge")
    e.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting (repeatable), e.g. --set train.max_steps=100")
    e.add_argument("--overwrite", action="store_true", help="start a new run in a train.output_dir that holds "
                   "another run or other files (removes only a run's own files there)")
    e.set_defaults(func=cmd_train_embed)

    r = tsub.add_parser("rerank", help="train a Qwen3 reranker (yes/no SFT) from a YAML config",
                        description="Supervised fine-tuning of a Qwen3 reranker on yes/no labels (losses sft, bce, "
                        "listwise; section rerank). Starts from a Qwen3ForCausalLM (a Qwen3-Reranker or a base / "
                        "instruct model) or a converted Qwen3ForSequenceClassification and writes the same layout. "
                        "Data: the embedding training rows or pointwise {query, document, label} rows. Resumes "
                        "from the newest checkpoint in train.output_dir. Multi-process: torchrun "
                        "--nproc-per-node N -m qwen_embed train rerank --config FILE.yaml")
    r.add_argument("--config", required=True, help="YAML file: sections model, data, optim, train, lora, eval, "
                   "rerank")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting (repeatable), e.g. --set rerank.loss=bce")
    r.add_argument("--overwrite", action="store_true", help="start a new run in a train.output_dir that holds "
                   "another run or other files (removes only a run's own files there)")
    r.set_defaults(func=cmd_train_rerank)

    s = tsub.add_parser("settings", help="print every training setting with its default (Markdown)")
    s.set_defaults(func=cmd_train_settings)

    pl = tsub.add_parser("plot", help="learning-curve PNG from a run's train_log.jsonl")
    pl.add_argument("log", help="OUTPUT_DIR/train_log.jsonl")
    pl.add_argument("-o", "--output", default="learning_curve.png", help="PNG file (default learning_curve.png)")
    pl.add_argument("--title", default=None, help="figure title (default: the run folder's name)")
    pl.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    pl.set_defaults(func=cmd_train_plot)

    sp = tsub.add_parser("stdlib-pairs", help="write real training pairs from the Python standard library",
                         description="(docstring first line, function source) pairs of stdlib functions as "
                         "train.jsonl and heldout.jsonl (deterministic for a Python version).")
    sp.add_argument("output", help="new folder to write train.jsonl and heldout.jsonl into")
    sp.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder (replaces only "
                    "train.jsonl, heldout.jsonl and tokenizer.json)")
    sp.add_argument("--held-out", type=float, default=0.1, help="fraction held out (default 0.1)")
    sp.add_argument("--keep-docstring", action="store_true", help="keep the docstring inside the source")
    sp.add_argument("--tokenizer-vocab", type=int, default=0,
                    help="also train a byte-level BPE of this size on the training rows -> OUTPUT/tokenizer.json "
                    "(for a model trained from scratch: qwen-embed make-tiny --tokenizer it); default 0: none")
    sp.set_defaults(func=cmd_stdlib_pairs)

    m = sub.add_parser("mine", help="mine hard negatives for training rows (resumable)",
                       description="Embed the corpus, take each query's top-k, drop its positives and any "
                       "candidate scoring above s(q, positive) - margin, sample n; writes training rows.")
    m.add_argument("--input", required=True, help="training rows JSONL {query, positive | positives, ...}")
    m.add_argument("-o", "--output", required=True, help="JSONL to write (rows with `negatives`); an existing file "
                   "is refused unless --overwrite")
    m.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    m.add_argument("--corpus", default=None, help="corpus: text lines or JSONL {text, title?} (default: the "
                   "rows' own positives and negatives)")
    m.add_argument("--top-k", type=int, default=50, help="candidates per query (default 50)")
    m.add_argument("--negatives", type=int, default=7, help="negatives sampled per row (default 7)")
    m.add_argument("--margin", type=float, default=0.05,
                   help="drop candidates with similarity > s(q, positive) - margin; in [-2, 2) (default 0.05)")
    m.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    m.add_argument("--chunk", type=int, default=1024, help="queries per resumable chunk (default 1024)")
    m.add_argument("--dim", type=int, default=None, help="Matryoshka dim of the search (default: full)")
    m.add_argument("--instruction", default=None,
                   help="query instruction for rows without one (default: the web-search instruction)")
    ModelSettings.add_arguments(m, DEFAULT_EMBEDDING_MODEL)
    m.set_defaults(func=cmd_mine)

    mg = sub.add_parser("merge", help="merge fine-tuned checkpoints: linear, slerp, multislerp, task-slerp",
                        description="Merge checkpoints of one Qwen3 trunk tensor by tensor (stage 3 of the Qwen3 "
                        "Embedding recipe), streaming one tensor per input. Embedding, causal-LM and seq-cls "
                        "layouts mix; the output keeps the first model's layout, config and tokenizer, and "
                        "gets merge_report.json (angle between the inputs and linear fallbacks per group).")
    mg.add_argument("models", nargs="+", metavar="MODEL", help="checkpoint folders or hub ids (2 or more)")
    mg.add_argument("-o", "--output", required=True, help="new checkpoint folder (an existing non-empty folder is "
                    "refused unless --overwrite)")
    mg.add_argument("--method", default="slerp", choices=["linear", "slerp", "multislerp", "task-slerp"],
                    help="linear: weighted average; slerp: 2 models, as mergekit's slerp; multislerp: N models "
                    "with weights (optional --base); task-slerp: base + slerp of the 2 task vectors (mergekit's "
                    "nuslerp with a base). Default slerp")
    mg.add_argument("--base", default=None, help="the checkpoint the models were fine-tuned from (task-slerp: "
                    "required; multislerp: optional)")
    mg.add_argument("--weights", default=None, metavar="W1,W2,...", help="one weight per model, normalised to "
                    "sum 1 (linear, multislerp; task-slerp: t = w2 / (w1 + w2)); default equal")
    mg.add_argument("--t", type=float, default=None, help="slerp / task-slerp position in [0, 1]: 0 gives the "
                    "first model, 1 the second (default 0.5)")
    mg.add_argument("--max-shard-size", default="5GB", help="largest weight file, e.g. 5GB or 500MB; more "
                    "tensors go to further shards with an index (default 5GB)")
    mg.add_argument("--overwrite", action="store_true", help="write into an existing folder, replacing only the "
                    "files of the merged checkpoint")
    mg.set_defaults(func=cmd_merge)

    g = sub.add_parser("merge-lora", help="merge a PEFT LoRA adapter into its base: a plain checkpoint",
                       description="Write base + adapter as one checkpoint in the base's layout (Qwen3Model "
                       "for embedders, Qwen3ForCausalLM / Qwen3ForSequenceClassification for rerankers) that "
                       "Embedder / Reranker and transformers load.")
    g.add_argument("--base", required=True, help="base checkpoint (hub id or folder) the adapter was trained on")
    g.add_argument("--adapter", required=True, help="PEFT adapter folder (adapter_config.json + "
                   "adapter_model.safetensors)")
    g.add_argument("-o", "--output", required=True, help="new checkpoint folder (an existing non-empty folder is "
                   "refused unless --overwrite)")
    g.add_argument("--overwrite", action="store_true", help="write into an existing folder, replacing only the "
                   "files of the merged checkpoint (config.json, model.safetensors, tokenizer files)")
    g.add_argument("--dtype", default=None, help="saved dtype: float32, bfloat16 or float16 (default: the base's)")
    g.set_defaults(func=cmd_merge_lora)
