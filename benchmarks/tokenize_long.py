"""Encoding one long text (a book to be chunked for an index): `QwenTokenizer.encode`, which cuts a text of
more than 64K characters at line starts and encodes the pieces in one parallel batch, beside the reference,
`tokenizers` encoding the whole string, on the same text with the real Qwen tokenizer; then the same text as
one embedder input truncated to --max-length tokens (`encode_for_embedding` reads only the pieces the
truncation keeps), and as the document of one reranker input of --max-length tokens (`RerankInputs.build`,
the same). Checks that the ids are equal and prints the ratios.

    python benchmarks/tokenize_long.py                       # ../shared/data's tokenizer and SciFact corpus
    python benchmarks/tokenize_long.py --tokenizer /path/to/tokenizer.json --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from tokenizers import Tokenizer  # noqa: E402

from qwen_embed.reranker import DEFAULT_INSTRUCTION, TEMPLATES, RerankInputs  # noqa: E402
from qwen_embed.tokenizer import QwenTokenizer  # noqa: E402

SHARED = REPO.parent / "shared" / "data"


def texts(corpus: Path) -> dict[str, str]:
    """The inputs: 10 MB of short lines, and the SciFact corpus joined into one text (when present)."""
    out = {"10 MB of 64-character lines": ("=" * 63 + "\n") * (10_000_000 // 64)}
    if corpus.is_file():
        with corpus.open() as f:
            out[f"SciFact corpus as one text ({corpus.stat().st_size >> 20} MB file)"] = "\n".join(
                json.loads(line)["text"] for line in f)
    return out


QUERY = "what does this text say?"


def reranker_reference(ref: Tokenizer, document: str, max_length: int) -> list[int]:
    """The reference reranker input ("card" template): prefix + the whole body (instruction, query, document)
    encoded, then cut to fit max_length + tail."""
    tmpl = TEMPLATES["card"]
    prefix, tail = (ref.encode(s, add_special_tokens=False).ids for s in (tmpl.prefix, tmpl.tail))
    body = ref.encode(tmpl.body(DEFAULT_INSTRUCTION, QUERY, document), add_special_tokens=False).ids
    return prefix + body[: max_length - len(prefix) - len(tail)] + tail


def best(fn: object, repeat: int) -> tuple[float, list[int]]:
    times, ids = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        ids = fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times), ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "qwen" / "tokenizer.json"))
    ap.add_argument("--corpus", default=str(SHARED / "beir" / "scifact" / "corpus.jsonl"))
    ap.add_argument("--repeat", type=int, default=2, help="runs of each side; the best is kept (default 2)")
    ap.add_argument("--max-length", type=int, default=8192, help="the embedder's truncation (default 8192)")
    args = ap.parse_args()
    ref = Tokenizer.from_file(args.tokenizer)
    ours = QwenTokenizer(Tokenizer.from_file(args.tokenizer))
    rows = []
    for name, text in texts(Path(args.corpus)).items():
        t_ref, want = best(lambda t=text: ref.encode(t, add_special_tokens=False).ids, args.repeat)
        t_ours, got = best(lambda t=text: ours.encode([t])[0], args.repeat)
        assert got == want, f"{name}: the ids differ"
        rows.append({"text": name, "chars": len(text), "tokens": len(want), "tokenizers_whole_s": round(t_ref, 3),
                     "qwen_embed_s": round(t_ours, 3), "speedup": round(t_ref / t_ours, 2)})
        print(f"{name}: {len(text):,} characters, {len(want):,} tokens; tokenizers whole {t_ref:.2f} s, "
              f"qwen-embed {t_ours:.2f} s: {t_ref / t_ours:.2f}x, ids equal")
        # as an embedder input cut to --max-length tokens: the reference encodes it all, then truncates
        def truncated(t: str = text, n: int = args.max_length) -> list[int]:
            ids = ref.encode(t, add_special_tokens=True).ids
            ids = ids[:-1] if ours.appends_eos else ids
            return [*ids[: n - 1], ours.eos_id]

        t_ref, want = best(truncated, args.repeat)
        n = args.max_length
        t_ours, got = best(lambda t=text: ours.encode_for_embedding([t], args.max_length)[0], args.repeat)
        assert got == want, f"{name}: the truncated ids differ"
        rows.append({"text": name, "max_length": n, "tokenizers_whole_s": round(t_ref, 4),
                     "qwen_embed_s": round(t_ours, 4), "speedup": round(t_ref / t_ours, 1)})
        print(f"  as one embedder input of {n} tokens: tokenizers (whole, then truncated) {t_ref:.3f} s, "
              f"qwen-embed {t_ours:.3f} s: {t_ref / t_ours:.0f}x, ids equal")
        # as the document of one reranker input of --max-length tokens
        inputs = RerankInputs(ours, "card", n)
        t_ref, want = best(lambda t=text: reranker_reference(ref, t, args.max_length), args.repeat)
        t_ours, got = best(lambda t=text, r=inputs: r.build(QUERY, [t])[0], args.repeat)
        assert got == want, f"{name}: the reranker ids differ"
        rows.append({"text": name, "reranker_max_length": n, "tokenizers_whole_s": round(t_ref, 4),
                     "qwen_embed_s": round(t_ours, 4), "speedup": round(t_ref / t_ours, 1)})
        print(f"  as the document of one reranker input of {n} tokens: tokenizers (whole, then cut) {t_ref:.3f} s, "
              f"qwen-embed {t_ours:.3f} s: {t_ref / t_ours:.0f}x, ids equal")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
