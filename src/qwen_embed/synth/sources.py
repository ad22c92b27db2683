"""Inputs of the synthetic-data job: passages, personas, and the top personas of each passage.

Passages are JSONL `{"id"?, "text", "title"?}` (title + text joined by the one `document_text` rule;
an absent id becomes the passage's 0-based position, as a string) or plain text lines. Personas are
JSONL `{"persona": ...}` (Persona Hub's format) or plain text lines. Persona retrieval follows the
report: the personas are embedded once as documents, each passage as a query under
`PERSONA_INSTRUCTION`, and the `k` best by cosine are the candidates shown to the LLM (ties in file order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..jsonl import iter_jsonl, text_lines
from ..pooling import rank_by_score
from ..tokenizer import document_text

if TYPE_CHECKING:
    from ..embedder import Embedder

PERSONA_INSTRUCTION = "Given a passage, retrieve the personas most likely to read it or ask questions about it"


@dataclass(frozen=True)
class Passage:
    """One passage: its id (the resume key) and its text (title + text)."""

    id: str
    text: str


def _lines(path: str | Path, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file {p} does not exist or is not a file.")
    try:
        return text_lines(p.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise InputError(f"{what} file {p} is not UTF-8 text (byte {e.start}); convert it first.") from None


def _is_jsonl(path: str | Path, lines: list[str]) -> bool:
    first = next((ln for ln in lines if ln.strip()), "")
    return str(path).endswith((".jsonl", ".ndjson")) or first.lstrip().startswith("{")


def read_passages(path: str | Path) -> list[Passage]:
    """The passages of a JSONL or text-lines file; refuses an empty file and repeated ids."""
    lines = _lines(path, "passages")
    out: list[Passage] = []
    if _is_jsonl(path, lines):
        for n, obj in iter_jsonl(lines, str(path)):
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InputError(f"{path}:{n}: a passage needs a string field 'text'.")
            title = obj.get("title")
            text = document_text(title if isinstance(title, str) else None, obj["text"])
            pid = obj.get("id", obj.get("_id"))
            out.append(Passage(str(pid) if pid is not None else str(len(out)), text))
    else:
        out = [Passage(str(i), ln.strip()) for i, ln in enumerate(ln for ln in lines if ln.strip())]
    out = [p for p in out if p.text]
    if not out:
        raise InputError(f"passages file {path} holds no passages; give JSONL {{\"id\", \"text\"}} or text lines.")
    seen: set[str] = set()
    for p in out:
        if p.id in seen:
            raise InputError(f"passages file {path}: id {p.id!r} appears twice; ids are the resume key and must "
                             f"be unique.")
        seen.add(p.id)
    return out


def read_personas(path: str | Path) -> list[str]:
    """Persona descriptions: JSONL `{"persona"}` or text lines; refuses an empty file."""
    lines = _lines(path, "personas")
    if _is_jsonl(path, lines):
        out = []
        for n, obj in iter_jsonl(lines, str(path)):
            if not isinstance(obj, dict) or not isinstance(obj.get("persona"), str):
                raise InputError(f"{path}:{n}: a persona needs a string field 'persona' (Persona Hub's format).")
            out.append(" ".join(obj["persona"].split()))
    else:
        out = [" ".join(ln.split()) for ln in lines]
    out = [p for p in out if p]
    if not out:
        raise InputError(f"personas file {path} holds no personas; give JSONL {{\"persona\"}} or text lines.")
    return out


class PersonaIndex:
    """The personas embedded once (as documents); `top(passages)` -> the k best personas of each."""

    def __init__(self, embedder: Embedder, personas: list[str], *, k: int = 5,
                 instruction: str = PERSONA_INSTRUCTION) -> None:
        if k < 1:
            raise InputError(f"top_personas={k} must be >= 1.")
        self.embedder, self.personas = embedder, personas
        self.k, self.instruction = min(k, len(personas)), instruction
        self.vectors = embedder.encode_documents(personas)  # [P, d]

    def top(self, texts: list[str]) -> list[list[str]]:
        """The k personas of highest cosine for each text, best first."""
        q = self.embedder.encode(texts, instruction=self.instruction)  # [n, d]
        scores = q @ self.vectors.T  # [n, P]
        out = []
        for row in scores:
            if len(row) > 4 * self.k:  # rank only the scores >= the k-th (ties at the cut still by file order)
                cut = np.partition(row, -self.k)[-self.k]
                keep = np.flatnonzero(row >= cut)
            else:
                keep = np.arange(len(row))
            best = [int(keep[i]) for i in rank_by_score(row[keep])[: self.k]]
            out.append([self.personas[i] for i in best])
        return out
