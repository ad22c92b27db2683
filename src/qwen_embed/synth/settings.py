"""Settings of the synthetic-query job: one frozen table that the CLI flags and docs/synth.md follow.

Kept apart from the job so that building the command line imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError, is_whole

DEFAULT_MIN_COS = 0.7  # the report keeps synthetic pairs whose cosine is greater than 0.7


# -- the checks both settings tables use (SynthSettings here, GeneratorSettings in generators.py) ----------
def _default(owner: Any, name: str) -> object:
    return next((f.default for f in dataclasses.fields(owner) if f.name == name), dataclasses.MISSING)


def check_whole(owner: Any, name: str, low: int | None, fix: str | None = None) -> int:
    """The field `name` of a settings dataclass, refused in one line unless an int (not a bool) >= `low`
    (any int when `low` is None); the message ends with `fix`, or else the default."""
    value = getattr(owner, name)
    if not is_whole(value, low):
        limit = "" if low is None else f" >= {low}"
        fix = fix or f"default {_default(owner, name)!r}"
        raise InputError(f"{name}={value!r} must be a whole number{limit} ({fix}).", param=name)
    return value


def check_number(owner: Any, name: str, low: float, high: float | None = None, *, above: bool = False,
                 unit: str = "") -> float:
    """The field `name`, refused in one line unless a finite int or float (not a bool) in range: `> low`
    when `above`, else `>= low`, and `<= high` when given."""
    value = getattr(owner, name)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > low if above else value >= low) and (high is None or value <= high)
    if not ok:
        limit = f"in {low}..{high}" if high is not None else f"{'>' if above else '>='} {low}"
        raise InputError(f"{name}={value!r} must be a finite number {limit}{unit} (default "
                         f"{_default(owner, name)!r}).", param=name)
    return float(value)


def check_text(owner: Any, name: str, *, optional: bool = False) -> str | None:
    """The field `name`, refused in one line unless a non-blank string (or None when `optional`)."""
    value = getattr(owner, name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        unset = ", or unset" if optional else ""
        raise InputError(f"{name}={value!r} must be a non-empty string{unset} (default "
                         f"{_default(owner, name)!r}).", param=name)
    return value


@dataclass(frozen=True)
class SynthSettings:
    """What the job asks for (one table: the CLI flags and docs/synth.md follow it)."""

    languages: tuple[str, ...] = field(default=("English",), metadata={
        "help": "query languages, each listed once, one sampled per passage (comma-separated on the "
                "command line)"})
    min_words: int = field(default=5, metadata={"help": "shortest query length asked for, in words"})
    max_words: int = field(default=25, metadata={"help": "longest query length asked for, in words"})
    passage_language: str = field(default="English", metadata={"help": "language of the passages, told to the LLM"})
    top_personas: int = field(default=5, metadata={"help": "personas retrieved per passage as the candidates"})
    seed: int = field(default=0, metadata={"help": "seed of the per-passage length and language"})
    chunk: int = field(default=64, metadata={"help": "passages per step (both calls, then the rows are appended)"})
    max_passage_chars: int = field(default=4000, metadata={"help": "passage characters shown to the LLM (cut at a "
                                                                   "word boundary); the row keeps the whole passage"})
    copy_min_words: int = field(default=6, metadata={"help": "a query of at least this many words found verbatim "
                                                             "in the passage is dropped as copies_passage"})
    task: str = field(default="synthetic", metadata={"help": "the rows' task (training batches are drawn from one "
                                                             "task)"})
    prompts: str | None = field(default=None, metadata={"help": "folder with config.txt, query.txt and "
                                                                "instructions.json (default: the packaged ones)"})

    def check(self) -> SynthSettings:
        """Validate types and ranges; errors say the value, the limit and the fix."""
        langs = self.languages
        if isinstance(langs, str):
            raise InputError(f"languages={langs!r} is one string, not a list of languages; pass a tuple such as "
                             f"languages=({langs!r},) (on the command line: --languages English,German).",
                             param="languages")
        if not isinstance(langs, tuple | list) or not langs \
                or not all(isinstance(x, str) and x.strip() for x in langs):
            raise InputError(f"languages={langs!r} must list at least one language name, each a non-empty string, "
                             f"e.g. ('English', 'German').", param="languages")
        seen: set[str] = set()
        for x in langs:
            if x.strip().casefold() in seen:
                raise InputError(f"languages={langs!r} lists {x!r} twice (that would double its share of the "
                                 f"queries); list each language once.", param="languages")
            seen.add(x.strip().casefold())
        check_whole(self, "min_words", 1)
        check_whole(self, "max_words", 1)
        if self.min_words > self.max_words:
            raise InputError(f"min_words={self.min_words}, max_words={self.max_words}: need 1 <= min <= max; raise "
                             f"max_words or lower min_words.", param="max_words")
        for name in ("top_personas", "chunk", "max_passage_chars", "copy_min_words"):
            check_whole(self, name, 1)
        check_whole(self, "seed", None)
        check_text(self, "passage_language")
        check_text(self, "task")
        check_text(self, "prompts", optional=True)
        return self

    def requirement(self, passage_id: str) -> tuple[int, str]:
        """The (length in words, language) asked for a passage: a pure function of (seed, id)."""
        rng = random.Random(f"{self.seed}:{passage_id}")
        return rng.randint(self.min_words, self.max_words), rng.choice(self.languages)
