"""The reranker's prompt templates: the strings a (query, document) pair is wrapped in (DESIGN.md).

Input = PREFIX + head(instruction, query) + document + tail. Torch-free, so that a process that only
checks a template name (the `serve --workers` supervisor) or builds inputs does not import torch;
`reranker.py` re-exports every name here.

- "card": the model card / transformers form (body parts joined by one newline).
- "official-eval": the form of the official evaluation that produced the published scores: body parts
  joined by a blank line, rendered as the chat's user turn (ending `<|im_end|>\\n`), then the suffix.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputError

SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
PREFIX = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class RerankTemplate:
    """prefix + head.format(instruction, query) + document + tail, tokenized piecewise as the reference."""

    name: str
    head: str  # body up to the document, with {instruction} and {query}
    tail: str  # what follows the document (suffix and, for the eval form, the end of the user turn)
    prefix: str = PREFIX

    def body(self, instruction: str, query: str, document: str) -> str:
        return self.head.format(instruction=instruction, query=query) + document

    def render(self, instruction: str, query: str, document: str) -> str:
        """The whole input as one string (for checks against the reference)."""
        return self.prefix + self.body(instruction, query, document) + self.tail


TEMPLATES: dict[str, RerankTemplate] = {
    "card": RerankTemplate("card", "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: ", SUFFIX),
    "official-eval": RerankTemplate(
        "official-eval", "<Instruct>: {instruction}\n\n<Query>: {query}\n\n<Document>: ", "<|im_end|>\n" + SUFFIX
    ),
}


def get_template(name: str) -> RerankTemplate:
    """The template called `name` (InputError naming the choices when there is none)."""
    if name not in TEMPLATES:
        raise InputError(f"unknown reranker template {name!r}; choose one of: {', '.join(TEMPLATES)}.")
    return TEMPLATES[name]
