"""Settings of the synthetic-query job: one frozen table that the CLI flags and docs/synth.md follow.

Kept apart from the job so that building the command line imports nothing heavy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..errors import InputError

DEFAULT_MIN_COS = 0.7  # the report keeps synthetic pairs whose cosine is greater than 0.7


@dataclass(frozen=True)
class SynthSettings:
    """What the job asks for (one table: the CLI flags and docs/synth.md follow it)."""

    languages: tuple[str, ...] = field(default=("English",), metadata={
        "help": "query languages, one sampled per passage (comma-separated on the command line)"})
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
        """Validate ranges; errors say the value, the limit and the fix."""
        if not self.languages or not all(isinstance(x, str) and x.strip() for x in self.languages):
            raise InputError(f"languages={self.languages!r} must list at least one language name.")
        if not 1 <= self.min_words <= self.max_words:
            raise InputError(f"min_words={self.min_words}, max_words={self.max_words}: need 1 <= min <= max.")
        for name in ("top_personas", "chunk", "max_passage_chars", "copy_min_words"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}={getattr(self, name)} must be >= 1.")
        return self

    def requirement(self, passage_id: str) -> tuple[int, str]:
        """The (length in words, language) asked for a passage: a pure function of (seed, id)."""
        rng = random.Random(f"{self.seed}:{passage_id}")
        return rng.randint(self.min_words, self.max_words), rng.choice(self.languages)
