"""The synthetic-query job: passages -> (persona, configuration, query) -> training rows, resumably.

For each chunk of passages: retrieve the top personas of each (`sources.PersonaIndex`), send the
configuration prompts, check the replies, send the query prompts of the passages whose configuration
passed (with a length and a language sampled per passage from `(seed, passage id)`, so a re-run asks
the same), check those replies, and append the kept rows in passage order (`files.ResumableJsonl`,
keyed by the passage id). Every reply goes through the response cache first (`cache.ResponseCache`),
so a re-run after a kill sends only the prompts never answered. A reply that fails a check is dropped
and counted under its reason (`prompts.DROP_REASONS`); a prompt that got no answer (retries spent,
request budget spent) leaves its passage for the next run, and the output is renamed into place only
when no passage is left unanswered.

A row is a training row that `train embed` and `mine` read as it is:
`{"id": passage id, "query", "positive": the passage, "instruction": the question type's instruction,
"task", "meta": {"passage_id", "persona", "question_type", "difficulty", "language", "length"}}`.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..files import ResumableJsonl, check_output_file, file_digest, fingerprint, resumable_files
from .cache import ResponseCache
from .generators import Completion, Generator, GeneratorStats
from .prompts import DROP_REASONS, Config, Dropped, Prompts, check_config, check_query, load_prompts
from .settings import SynthSettings
from .sources import Passage, PersonaIndex, read_passages, read_personas

if TYPE_CHECKING:
    from ..embedder import Embedder


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def default_cache_path(output: str | Path) -> Path:
    """OUTPUT.cache.jsonl beside the output."""
    out = Path(output)
    return out.with_name(out.name + ".cache.jsonl")


@dataclass(frozen=True)
class LazyEmbedder:
    """An embedder loaded on first need: its name (part of the job fingerprint) and a loader."""

    name: str
    load: Callable[[], Embedder]


@dataclass
class Step:
    """One passage on its way through the two calls."""

    passage: Passage
    shown: str
    characters: list[str]
    config: Config | None = None
    length: int = 0
    language: str = ""


class _Run:
    """The state of one run: generator, cache, counters."""

    def __init__(self, generator: Generator, cache: ResponseCache, prompts: Prompts, settings: SynthSettings) -> None:
        self.generator, self.cache, self.prompts, self.settings = generator, cache, prompts, settings
        self.dropped: Counter[str] = Counter({r: 0 for r in DROP_REASONS})
        self.cached = 0
        self.unanswered = 0
        self.kept = 0

    def complete(self, prompts: list[str]) -> list[Completion]:
        """Replies from the cache, the rest from the generator (each cached as it arrives)."""
        out: list[Completion | None] = [self.cache.get(p) for p in prompts]
        self.cached += sum(c is not None for c in out)
        asked = list(dict.fromkeys(p for p, c in zip(prompts, out, strict=True) if c is None))  # each once
        if asked:
            got = self.generator.complete(asked, on_done=lambda j, c: self.cache.put(asked[j], c))
            replies = dict(zip(asked, got, strict=True))
            out = [c if c is not None else replies[p] for p, c in zip(prompts, out, strict=True)]
        return [c if c is not None else Completion(None, error="not sent") for c in out]

    def step(self, chunk: Sequence[Passage], index: PersonaIndex) -> list[dict[str, Any]]:
        """Both calls for a chunk of passages -> the kept rows, in passage order."""
        s, pr = self.settings, self.prompts
        chars = index.top([p.text for p in chunk])
        steps = [Step(p, shorten(p.text, s.max_passage_chars), c) for p, c in zip(chunk, chars, strict=True)]
        replies = self.complete([pr.render_config(t.shown, t.characters, s.passage_language) for t in steps])
        configured = []
        for t, r in zip(steps, replies, strict=True):
            if r.text is None:
                self._no_answer(r)
                continue
            try:
                t.config = check_config(r.text, t.characters)
            except Dropped as d:
                self.dropped[d.reason] += 1
                continue
            t.length, t.language = s.requirement(t.passage.id)
            configured.append(t)
        replies = self.complete([pr.render_query(t.shown, t.config, length=t.length, language=t.language,
                                                 passage_language=s.passage_language)
                                 for t in configured if t.config is not None])
        rows = []
        for t, r in zip(configured, replies, strict=True):
            if r.text is None:
                self._no_answer(r)
                continue
            try:
                query = check_query(r.text, t.passage.text, s.copy_min_words)
            except Dropped as d:
                self.dropped[d.reason] += 1
                continue
            rows.append(self.row(t, query))
        self.kept += len(rows)
        return rows

    def _no_answer(self, r: Completion) -> None:
        if r.refused:
            self.dropped["refused"] += 1  # final: asking again would be refused again
        else:
            self.unanswered += 1  # left for the next run

    def row(self, t: Step, query: str) -> dict[str, Any]:
        assert t.config is not None
        c = t.config
        return {"id": t.passage.id, "query": query, "positive": t.passage.text,
                "instruction": self.prompts.instructions[c.question_type], "task": self.settings.task,
                "meta": {"passage_id": t.passage.id, "persona": c.character, "question_type": c.question_type,
                         "difficulty": c.difficulty, "language": t.language, "length": t.length}}


def generate_queries(passages: str | Path, personas: str | Path, output: str | Path, *, generator: Generator,
                     embedder: Embedder | LazyEmbedder, settings: SynthSettings | None = None,
                     cache: str | Path | None = None, overwrite: bool = False,
                     progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the two-stage generation over `passages`; returns the summary.

    `output` gets the kept training rows; until every passage is answered they sit in
    `OUTPUT.partial`, and the same call resumes. `cache` (default OUTPUT.cache.jsonl) keeps every reply.
    `embedder` retrieves the personas; a `LazyEmbedder` is loaded only after the inputs are checked
    and only when passages are left.
    """
    s = (settings or SynthSettings()).check()
    check_output_file(output, overwrite=overwrite)
    prompts = load_prompts(s.prompts)
    items = read_passages(passages)
    people = read_personas(personas)
    job = fingerprint("synth-queries/1", {k: v for k, v in vars(s).items() if k != "chunk"}, generator.identity(),
                      embedder.name, file_digest(passages), file_digest(personas), prompts.config, prompts.query,
                      prompts.instructions)
    generator.preflight()  # an unusable endpoint fails here, before any file is created or model loaded
    rc = ResponseCache(cache if cache is not None else default_cache_path(output), generator.identity())
    out = Path(output)
    made_partial = not out.with_name(resumable_files(out.name)[1]).exists()  # else an earlier run's: never removed
    try:
        with ResumableJsonl(output, key="id", job=job, overwrite=overwrite) as writer:
            try:
                return _drive(writer, items, people, generator, embedder, rc, prompts, s, progress)
            except BaseException:
                if made_partial and not writer.done:
                    discard_partial(writer)
                raise
    finally:
        rc.close()


def discard_partial(writer: ResumableJsonl) -> None:
    """Remove the empty partial file (and its fingerprint) that this run made before it failed, so that
    a re-run with the mistake fixed (the --model name, the URL, the embedding model) is not refused as
    "a run with other settings". Called while the writer still holds the output's lock."""
    for path in (writer.partial, writer.meta):
        path.unlink(missing_ok=True)


def _drive(writer: ResumableJsonl, items: list[Passage], people: list[str], generator: Generator,
           embedder: Embedder | LazyEmbedder, rc: ResponseCache, prompts: Prompts, s: SynthSettings,
           progress: bool) -> dict[str, Any]:
    """The chunks of the passages not yet in `writer`, then the summary (and the rename when complete)."""
    resumed = len(writer.done)
    pending = [p for p in items if p.id not in writer.done]
    run = _Run(generator, rc, prompts, s)
    before = dataclasses.replace(generator.stats)  # the generator may have served earlier runs
    bar = tqdm(total=len(items), initial=len(items) - len(pending), disable=not progress, unit="passage",
               desc="synth")
    processed = 0
    if pending:
        emb = embedder.load() if isinstance(embedder, LazyEmbedder) else embedder
        index = PersonaIndex(emb, people, k=s.top_personas)
        for start in range(0, len(pending), s.chunk):
            chunk = pending[start:start + s.chunk]
            writer.write_many(run.step(chunk, index))
            processed += len(chunk)
            bar.update(len(chunk))
            bar.set_postfix(kept=resumed + run.kept, dropped=sum(run.dropped.values()), unanswered=run.unanswered)
            if generator.stats.budget_spent:
                break
    bar.close()
    now = generator.stats
    stats = GeneratorStats(**{f.name: getattr(now, f.name) - getattr(before, f.name)
                              for f in dataclasses.fields(GeneratorStats) if f.name != "budget_spent"},
                           budget_spent=now.budget_spent)
    left = len(pending) - processed + run.unanswered  # passages the next run will ask again
    complete = left == 0
    summary: dict[str, Any] = {
        "passages": len(items), "resumed": resumed, "requests": stats.requests, "calls": stats.calls,
        "cached": run.cached, "retries": stats.retries, "failed": stats.failed,
        "prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
        "dropped": dict(run.dropped), "kept": run.kept, "pairs": resumed + run.kept,
        "unanswered": left, "budget_spent": stats.budget_spent, "complete": complete,
        "output": str(writer.path if complete else writer.partial), "cache": str(rc.path),
    }
    if complete:
        writer.finish()
    return summary
