"""Synthetic training data: the Qwen3 Embedding report's persona-based, two-stage query generation.

`generate_queries` runs the job (persona retrieval, configuration call, query call, checks, resumable
output, response cache); `filter_pairs` keeps the pairs whose query-passage cosine exceeds a threshold.
Generators: `OpenAIGenerator` (any OpenAI-compatible chat-completions endpoint) and `LocalGenerator`
(a causal LM through transformers), both behind the `Generator` protocol. See docs/synth.md.
Names are imported on first use, so that `qwen-embed --help` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .filter import filter_pairs
    from .generators import (
        Completion,
        Generator,
        GeneratorError,
        GeneratorSettings,
        GeneratorStats,
        LocalGenerator,
        OpenAIGenerator,
        make_generator,
    )
    from .job import LazyEmbedder, default_cache_path, generate_queries
    from .prompts import DIFFICULTIES, DROP_REASONS, QUESTION_TYPES, Prompts, load_prompts
    from .settings import DEFAULT_MIN_COS, SynthSettings
    from .sources import Passage, PersonaIndex, read_passages, read_personas

_LAZY = {
    "DEFAULT_MIN_COS": "settings", "filter_pairs": "filter",
    "Completion": "generators", "Generator": "generators", "GeneratorError": "generators",
    "GeneratorSettings": "generators", "GeneratorStats": "generators", "LocalGenerator": "generators",
    "OpenAIGenerator": "generators", "make_generator": "generators",
    "LazyEmbedder": "job", "default_cache_path": "job", "generate_queries": "job",
    "DIFFICULTIES": "prompts", "DROP_REASONS": "prompts", "QUESTION_TYPES": "prompts", "Prompts": "prompts",
    "load_prompts": "prompts", "SynthSettings": "settings",
    "Passage": "sources", "PersonaIndex": "sources", "read_passages": "sources", "read_personas": "sources",
}
__all__ = [
    "DEFAULT_MIN_COS",
    "DIFFICULTIES",
    "DROP_REASONS",
    "QUESTION_TYPES",
    "Completion",
    "Generator",
    "GeneratorError",
    "GeneratorSettings",
    "GeneratorStats",
    "LazyEmbedder",
    "LocalGenerator",
    "OpenAIGenerator",
    "Passage",
    "PersonaIndex",
    "Prompts",
    "SynthSettings",
    "default_cache_path",
    "filter_pairs",
    "generate_queries",
    "load_prompts",
    "make_generator",
    "read_passages",
    "read_personas",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines `name` on first use."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
