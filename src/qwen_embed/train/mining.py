"""Hard-negative mining: embed a corpus, take each query's top-k, drop positives and likely false negatives.

Follows the positive-aware filtering of NV-Retriever (Moreira et al., 2024, "TopK-MarginPos"): a
candidate whose similarity to the query exceeds s(query, positive) - margin is more likely an
unlabelled positive than a negative, so it is dropped; of the rest of the top-k, n are sampled (seeded
per row, so a rerun writes the same file). The corpus is the given one plus every positive (so that
positives are recognised and scored), or, without one, the distinct positives and negatives of the rows.

Resumable: the corpus embeddings are cached beside the output (`OUT.corpus.npy`, keyed by a
fingerprint of model, corpus and dim), rows are written chunk by chunk to `OUT.partial` and the count
done to `OUT.progress.json`; a rerun continues after the last finished chunk and the final file appears
by rename only when every row is done. One run appends to `OUT.partial` at a time (`files.OutputLock`): a
second run on the same output is refused in one line while the first runs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..embedder import DEFAULT_INSTRUCTION, Embedder
from ..errors import InputError, is_whole
from ..files import OutputLock, atomic_file, fingerprint, fingerprint_rows, write_json_atomic
from ..tokenizer import document_text
from .data import Example, iter_examples


@dataclass
class MiningSettings:
    top_k: int = 50  # candidates per query taken from the ranking
    num_negatives: int = 7  # negatives sampled per row from the filtered candidates
    margin: float = 0.05  # drop candidates with s(q, d) > s(q, p+) - margin
    seed: int = 0
    chunk: int = 1024  # queries per resumable chunk
    dim: int | None = None  # Matryoshka dim of the search (None: full)
    default_instruction: str | None = DEFAULT_INSTRUCTION

    def check(self) -> None:
        """Refuse settings that cannot mine, in one line naming the setting (and its `qwen-embed mine` flag),
        its value and its range; before any model loads."""
        for name, flag in (("top_k", "--top-k"), ("num_negatives", "--negatives"), ("chunk", "--chunk")):
            value = getattr(self, name)
            if not is_whole(value, 1):
                raise InputError(f"{name}={value!r} ({flag}) must be a whole number >= 1 (default "
                                 f"{getattr(MiningSettings, name)}).")
        m = self.margin
        if isinstance(m, bool) or not isinstance(m, int | float) or not (math.isfinite(m) and -2 <= m < 2):
            raise InputError(f"margin={m!r} (--margin) must be a finite number in [-2, 2): similarities are cosines "
                             f"in [-1, 1], so 2 or more drops every candidate and -2 keeps all (default "
                             f"{MiningSettings.margin}).")


def read_corpus(path: str | Path) -> list[str]:
    """Text lines, or JSONL with a `text` field (and optional `title`, prepended)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"corpus {p} does not exist.")
    out = []
    with p.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{p}:{n}: not valid JSON ({e.msg}).") from None
                text = document_text(str(obj.get("title") or ""), str(obj.get("text") or ""))
            else:
                text = line.rstrip("\n")
            if text.strip():
                out.append(text)
    if not out:
        raise InputError(f"corpus {p} holds no text.")
    return out


def build_corpus(examples: list[Example], extra: list[str] | None) -> tuple[list[str], dict[str, int]]:
    texts: list[str] = []
    ids: dict[str, int] = {}
    pools = ([extra] if extra is not None else []) + [ex.positives for ex in examples]
    if extra is None:
        pools += [ex.negatives for ex in examples]
    for pool in pools:
        for t in pool:
            if t not in ids:
                ids[t] = len(texts)
                texts.append(t)
    return texts, ids


def corpus_embeddings(embedder: Embedder, texts: list[str], cache: Path, key: str, dim: int | None,
                      progress: bool) -> np.ndarray:
    """[C, dim] normalised document embeddings, from the cache when its key matches."""
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return np.load(cache)
    emb = embedder.encode_documents(texts, dim=dim, progress=progress)
    with atomic_file(cache, "wb") as f:
        np.save(f, emb)
    write_json_atomic(meta, {"key": key})
    return emb


def select_negatives(scores: np.ndarray, positives: set[int], settings: MiningSettings,
                     rng: random.Random) -> list[int]:
    """scores [C] of one query -> corpus ids of the sampled negatives (see the module docstring)."""
    pos_score = min(float(scores[i]) for i in positives)
    limit = pos_score - settings.margin
    k = min(settings.top_k + len(positives), scores.shape[0])
    top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    top = top[np.argsort(-scores[top], kind="stable")]
    ranked = [int(i) for i in top if int(i) not in positives][: settings.top_k]  # the top-k of the others
    candidates = [i for i in ranked if scores[i] <= limit]
    if len(candidates) <= settings.num_negatives:
        return candidates
    return sorted(rng.sample(candidates, settings.num_negatives), key=lambda i: -scores[i])


def mine(embedder: Embedder, rows_path: str | Path, out_path: str | Path, *, corpus_path: str | Path | None = None,
         settings: MiningSettings | None = None, progress: bool = False) -> dict[str, Any]:
    """Write the rows of `rows_path` with mined `negatives` to `out_path` (resumable); returns counts."""
    s = settings or MiningSettings()
    s.check()
    out = Path(out_path)
    if not out.parent.is_dir():
        raise InputError(f"the folder of output {out} does not exist; create {out.parent} first.")
    examples = list(iter_examples([rows_path]))
    if not examples:
        raise InputError(f"{rows_path} holds no rows.")
    extra = read_corpus(corpus_path) if corpus_path is not None else None
    texts, ids = build_corpus(examples, extra)
    key = fingerprint(str(embedder.name), embedder.hidden_size, s.dim, len(texts), fingerprint_rows(texts))
    corpus = corpus_embeddings(embedder, texts, out.with_name(out.name + ".corpus.npy"), key, s.dim, progress)
    partial, state_file = out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress.json")
    job = fingerprint(key, s, os.fspath(rows_path))
    partial.open("ab").close()  # the file the lock holds (an earlier run's is kept: it is resumed below)
    with OutputLock(partial, what=f"mining output {out} (its partial file)"):  # one run appends at a time
        done, size = 0, 0
        if state_file.is_file() and partial.is_file():
            state = json.loads(state_file.read_text())
            if state.get("job") == job:
                done, size = int(state["done"]), int(state["bytes"])
        with partial.open("a+b") as f:
            f.truncate(size)  # drop a chunk that was being written when the last run stopped
        dropped = 0
        bar = tqdm(total=len(examples), initial=done, disable=not progress, unit="query", desc="mining")
        for start in range(done, len(examples), s.chunk):
            chunk = examples[start : start + s.chunk]
            q = _embed_queries(embedder, chunk, s)
            scores = q @ corpus.T  # [n, C]
            lines = []
            for j, ex in enumerate(chunk):
                pos = {ids[t] for t in ex.positives}
                rng = random.Random(f"{s.seed}:{start + j}")
                neg_ids = select_negatives(scores[j], pos, s, rng)
                dropped += int(len(neg_ids) < s.num_negatives)
                row: dict[str, Any] = {"query": ex.query, "positives" if len(ex.positives) > 1 else "positive":
                                       ex.positives if len(ex.positives) > 1 else ex.positives[0],
                                       "negatives": [texts[i] for i in neg_ids]}
                if ex.instruction:
                    row["instruction"] = ex.instruction
                if ex.task != "default":
                    row["task"] = ex.task
                lines.append(json.dumps(row, ensure_ascii=False) + "\n")
            with partial.open("ab") as f:
                f.write("".join(lines).encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            write_json_atomic(state_file, {"job": job, "done": start + len(chunk), "bytes": size})
            bar.update(len(chunk))
        bar.close()
        os.replace(partial, out)
        for p in (state_file, out.with_name(out.name + ".corpus.npy"), out.with_name(out.name + ".corpus.json")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return {"rows": len(examples), "corpus": len(texts), "short_rows": dropped}


def _embed_queries(embedder: Embedder, chunk: list[Example], s: MiningSettings) -> np.ndarray:
    """Query embeddings [n, dim], each with its row's instruction (or the default)."""
    out: np.ndarray | None = None
    groups: dict[str | None, list[int]] = {}
    for i, ex in enumerate(chunk):
        groups.setdefault(ex.instruction or s.default_instruction, []).append(i)
    for instruction, idx in groups.items():
        vecs = embedder.encode([chunk[i].query for i in idx], instruction=instruction, dim=s.dim, progress=False)
        if out is None:
            out = np.empty((len(chunk), vecs.shape[1]), dtype=np.float32)
        out[idx] = vecs
    assert out is not None
    return out
