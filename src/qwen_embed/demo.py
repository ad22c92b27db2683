"""`make demo` (`python -m qwen_embed.demo`): the main job, end to end.

1. Embed a few queries and documents, print their cosine similarities, and rerank the documents for
   each query (the core: Embedder + Reranker).
2. Index the sample corpus shipped with the package (qwen_embed/data/sample_corpus.jsonl, 42 short
   documents on varied topics) into a LanceDB folder and run a few searches, retrieving candidates with
   the embedder and reranking them with the reranker (the retrieval pipeline).

It uses the real Qwen/Qwen3-Embedding-0.6B and Qwen/Qwen3-Reranker-0.6B when the hub or the local cache
has them. Where they cannot be reached it says so and runs the same job on the demo models shipped in
the package (qwen_embed/data/demo-models/: a 7M-parameter embedder and a 9M-parameter reranker of the
Qwen3 shape, trained from random weights by examples/recipe_demo.yaml; their README says how and what
they score): the code path is the same and the rankings are those of a toy model. `--tiny` uses tiny
random-weight checkpoints made on the spot instead (meaningless rankings).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .embedder import Embedder
from .errors import ModelNotFoundError, QwenEmbedError, one_line
from .reranker import Reranker
from .settings import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL

if TYPE_CHECKING:
    from .retrieval import Index

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and is "
    "responsible for the movement of planets around the sun.",
    "Water boils at 100 degrees Celsius at sea level.",
]
SEARCHES: list[tuple[str, str | None]] = [
    ("why do we have tides", None),
    ("how does a vaccine protect me", None),
    ("what makes bread light and airy", "topic = 'cooking'"),
]
CANDIDATES = 20  # retrieved by the embedder per search, then reranked
MAX_LENGTH = 512  # tokens per input: the demo's texts are short (the demo models take 8,192)
TINY_LABEL = "TINY RANDOM-WEIGHT MODEL: every score and ranking this demo prints is meaningless"
DEMO_LABEL = ("DEMO MODEL: a small (7M/9M-parameter) demo model trained by qwen-embed's recipe; for real use, "
              "the Qwen3 models")


def sample_corpus() -> Path:
    """The sample corpus shipped with the package."""
    return Path(str(resources.files("qwen_embed") / "data" / "sample_corpus.jsonl"))


def demo_model(kind: str) -> Path | None:
    """The shipped demo model folder of `kind` ("embedding" or "reranker"), None when it is absent."""
    path = Path(str(resources.files("qwen_embed") / "data" / "demo-models" / kind))
    return path if (path / "config.json").is_file() else None


@contextlib.contextmanager
def load_models(embedding: str, reranker: str, device: str | None, tiny: bool) -> Iterator[tuple[Embedder, Reranker,
                                                                                                  list[str]]]:
    """The real models where reachable, otherwise the shipped demo models (tiny random ones with `tiny`, or
    when the package lacks them). The notes say what replaced what; each starts with the label to show."""
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="qwen-embed-demo-") as tmp:
        def fallback(kind: str, name: str, why: str) -> Path:
            shipped = None if tiny else demo_model(kind)
            if shipped is not None:
                notes.append(f"{name} is not available ({why}); using the shipped demo {kind} model instead "
                             f"({shipped}).")
                return shipped
            from .tiny import make_checkpoint

            notes.append(f"{name} is not available ({why}); using a tiny random-weight {kind} checkpoint instead.")
            return make_checkpoint(Path(tmp) / f"tiny-{kind}", kind)  # type: ignore[arg-type]

        emb_path: str | Path = embedding
        rr_path: str | Path = reranker
        if tiny:
            emb_path = fallback("embedding", embedding, "--tiny was given")
            rr_path = fallback("reranker", reranker, "--tiny was given")
        try:
            emb = Embedder.from_pretrained(emb_path, device=device, max_length=MAX_LENGTH)
        except ModelNotFoundError as e:
            emb = Embedder.from_pretrained(fallback("embedding", embedding, str(e).split(". ")[0]), device=device,
                                           max_length=MAX_LENGTH)
        try:
            rr = Reranker.from_pretrained(rr_path, device=device, max_length=MAX_LENGTH)
        except ModelNotFoundError as e:
            rr = Reranker.from_pretrained(fallback("reranker", reranker, str(e).split(". ")[0]), device=device,
                                          max_length=MAX_LENGTH)
        yield emb, rr, notes


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def show_core(emb: Embedder, rr: Reranker) -> None:
    """Part 1: similarity table of queries x documents, then each query's reranked documents."""
    q = emb.encode_queries(QUERIES)
    d = emb.encode_documents(DOCUMENTS)
    sims = q @ d.T  # [queries, documents] cosine similarities (unit vectors)
    print(f"\n== 1. Embed and rerank ({emb.name}, {q.shape[1]} dims; {rr.name}) ==")
    for j, doc in enumerate(DOCUMENTS):
        print(f"  D{j + 1}: {_short(doc, 90)}")
    print("\n  cosine similarity          " + "".join(f"{'D' + str(j + 1):>9}" for j in range(len(DOCUMENTS))))
    for i, query in enumerate(QUERIES):
        print(f"  {_short(query, 27):<27}" + "".join(f"{s:9.4f}" for s in sims[i]))
    print("\n  rerank: P(yes)             " + "".join(f"{'D' + str(j + 1):>9}" for j in range(len(DOCUMENTS))))
    for query in QUERIES:
        scores = rr.score(query, DOCUMENTS)
        best = int(np.argmax(scores))
        print(f"  {_short(query, 27):<27}" + "".join(_probability(s) for s in scores) + f"   best: D{best + 1}")


def _probability(p: float) -> str:
    """A probability in 9 columns: 4 decimals, or 2 significant digits below 0.001 (a demo model trained
    with the listwise loss ranks well but gives P(yes) of about 1e-4, which 4 decimals would print as 0)."""
    return f"{p:9.4f}" if p >= 0.001 else f"{p:9.1e}"


def index_sample_corpus(emb: Embedder, db: Path) -> tuple[Index, int, str]:
    """Index the sample corpus into a LanceDB folder at `db` -> the index, its size, a one-line summary."""
    from .retrieval import Index, read_sources

    docs = read_sources([sample_corpus()]).documents
    index = Index.open(db, model=emb)
    t0 = time.perf_counter()
    report = index.add(docs, progress=False)
    return index, len(docs), f"{report.summary()} ({time.perf_counter() - t0:.1f} s)"


def show_retrieval(emb: Embedder, rr: Reranker, db: Path) -> None:
    """Part 2: index the sample corpus into a LanceDB folder and run searches with reranking."""
    from .retrieval.format import format_hits

    index, count, summary = index_sample_corpus(emb, db)
    print(f"\n== 2. Index and search ({count} sample documents -> LanceDB at {db}) ==")
    print(f"  {summary}")
    for query, where in SEARCHES:
        t0 = time.perf_counter()
        hits = index.search(query, k=3, reranker=rr, candidates=CANDIDATES, where=where)
        filt = f"  [where {where}]" if where else ""
        ms = 1000 * (time.perf_counter() - t0)
        print(f"\n  search: {query!r}{filt}  ({CANDIDATES} candidates reranked, {ms:.0f} ms)")
        print("  " + format_hits(hits).replace("\n", "\n  "))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m qwen_embed.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_EMBEDDING_MODEL,
                   help=f"embedding model (default {DEFAULT_EMBEDDING_MODEL})")
    p.add_argument("--rerank-model", default=DEFAULT_RERANKER_MODEL,
                   help=f"reranker (default {DEFAULT_RERANKER_MODEL})")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--db", default=None, help="keep the LanceDB folder here (default: a temporary folder)")
    p.add_argument("--tiny", action="store_true",
                   help="use tiny random-weight checkpoints (meaningless rankings) instead of the real or demo models")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        with load_models(args.model, args.rerank_model, args.device, args.tiny) as (emb, rr, notes):
            for note in notes:
                print(f"NOTE: {note}")
            label = (TINY_LABEL if any("tiny random-weight" in n for n in notes) else DEMO_LABEL) if notes else None
            if label:
                print(f"\n*** {label} ***")
            show_core(emb, rr)
            with contextlib.ExitStack() as stack:
                db = Path(args.db) if args.db else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "db"
                show_retrieval(emb, rr, db)
            if label:
                print(f"\n*** {label} ***")
    except QwenEmbedError as e:
        print(f"demo: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    print(f"\ndone in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
