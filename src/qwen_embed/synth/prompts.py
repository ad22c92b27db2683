"""The two prompts of the report's synthetic-data system, and the checks on what the LLM answers.

Follows the "multi-task adaptable prompt system" of the Qwen3 Embedding report (appendix A.1): for
each passage a **configuration** prompt shows the passage and the five personas retrieved for it and
asks for `{"Character", "Question_Type", "Difficulty"}` as JSON; a **query** prompt then asks, from that
character's perspective, for a query of that type and difficulty, about `length` words long, in
`language`, as `{"Query": ...}`. The templates are plain text files (`prompts/config.txt`,
`prompts/query.txt`, with `${name}` placeholders) and the instruction of each question type is
`prompts/instructions.json`; `load_prompts(folder)` reads a folder of the same three files, so
users can read and change them.

A reply is kept only when it passes every check; otherwise it is dropped under one reason:
`not_json` (no JSON object in the reply), `bad_option` (Character not one of the candidates,
Question_Type or Difficulty outside its list, or missing), `empty_query`, `copies_passage` (the query
is a run of at least `copy_min_words` words found verbatim in the passage); the job adds `refused`
(the endpoint rejected the prompt itself, a 4xx such as 400 or 413). A `<think>...</think>`
block and a Markdown code fence around the JSON are tolerated.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import InputError

QUESTION_TYPES = ("keywords", "acquire_knowledge", "summary", "yes_or_no", "background")
DIFFICULTIES = ("high_school", "university", "phd")
DROP_REASONS = ("not_json", "bad_option", "empty_query", "copies_passage", "refused")
TEMPLATE_FILES = ("config.txt", "query.txt", "instructions.json")
CONFIG_FIELDS = {"passage", "characters", "passage_language"}
QUERY_FIELDS = {"character", "passage", "passage_language", "question_type", "difficulty", "length", "language"}
# placeholders a template may leave out: the passage language is a hint to the LLM. Every other one is
# what the reply is checked against (the candidates) or what the row records (persona, question type and
# its instruction, difficulty, length, language): a template without it would write rows that lie.
OPTIONAL_FIELDS = {"passage_language"}


@dataclass(frozen=True)
class Prompts:
    """The configuration and query templates and the instruction of each question type."""

    config: str
    query: str
    instructions: dict[str, str]
    source: str

    def render_config(self, passage: str, characters: list[str], passage_language: str) -> str:
        """The configuration prompt: the passage and the candidate characters, numbered from 1."""
        listed = "\n".join(f"{i}. {c}" for i, c in enumerate(characters, 1))
        return string.Template(self.config).substitute(passage=passage, characters=listed,
                                                       passage_language=passage_language)

    def render_query(self, passage: str, config: Config, *, length: int, language: str,
                     passage_language: str) -> str:
        """The query prompt for a checked configuration and the sampled length and language."""
        return string.Template(self.query).substitute(
            character=config.character, passage=passage, passage_language=passage_language,
            question_type=config.question_type, difficulty=config.difficulty, length=length, language=language)


def _placeholders(template: str) -> set[str]:
    return {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(template)
            if m.group("named") or m.group("braced")}


def load_prompts(folder: str | Path | None = None) -> Prompts:
    """The packaged templates, or those of `folder` (config.txt, query.txt, instructions.json).

    Refuses a template with an unknown placeholder or without one of the required ones (all but
    `passage_language`: the candidates, and everything a row records), a configuration template that
    does not name every option, and an instruction table without exactly one instruction per question type.
    """
    if folder is None:
        base: Any = resources.files("qwen_embed.synth") / "prompts"
        source = "the packaged prompts"
    else:
        base = Path(folder)
        source = str(folder)
        missing = [n for n in TEMPLATE_FILES if not (base / n).is_file()]
        if missing:
            raise InputError(f"prompt folder {folder} lacks {', '.join(missing)}; copy the packaged ones "
                             f"(qwen_embed/synth/prompts) and edit them.")
    config = (base / "config.txt").read_text(encoding="utf-8-sig")
    query = (base / "query.txt").read_text(encoding="utf-8-sig")
    for name, text, fields in (("config.txt", config, CONFIG_FIELDS), ("query.txt", query, QUERY_FIELDS)):
        found = _placeholders(text)
        unknown, missing = sorted(found - fields), sorted(fields - OPTIONAL_FIELDS - found)
        if unknown or missing:
            raise InputError(f"{source}/{name}: placeholders {sorted(found)}"
                             + (f"; unknown {unknown}" if unknown else "")
                             + (f"; missing {missing}" if missing else "")
                             + f"; use {sorted(fields - OPTIONAL_FIELDS)} (optional: {sorted(OPTIONAL_FIELDS)}).")
    absent = [o for o in (*QUESTION_TYPES, *DIFFICULTIES) if o not in config]
    if absent:
        raise InputError(f"{source}/config.txt does not mention the options {absent}; the LLM must see every "
                         f"option it may choose.")
    try:
        instructions = json.loads((base / "instructions.json").read_text(encoding="utf-8"))
    except ValueError as e:
        raise InputError(f"{source}/instructions.json is not JSON ({e}).") from None
    if (not isinstance(instructions, dict) or set(instructions) != set(QUESTION_TYPES)
            or not all(isinstance(v, str) and v.strip() for v in instructions.values())):
        raise InputError(f"{source}/instructions.json must map each of {list(QUESTION_TYPES)} to a non-empty "
                         f"instruction string.")
    return Prompts(config, query, instructions, source)


# -- checking replies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """A checked configuration reply."""

    character: str
    question_type: str
    difficulty: str


class Dropped(Exception):
    """A reply that fails a check; `reason` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in DROP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")


def parse_json_object(reply: str) -> dict[str, Any]:
    """The JSON object of a reply (after a think block and code fences), else Dropped('not_json')."""
    text = _FENCE.sub("", _THINK.sub("", reply).strip()).strip()
    candidates = [text]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start:end + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    raise Dropped("not_json", repr(reply[:80]))


def _norm(s: str) -> str:
    return " ".join(s.split()).strip(" .;,\"'").casefold()


def _field(obj: dict[str, Any], name: str) -> Any:
    for key, value in obj.items():
        if isinstance(key, str) and key.replace(" ", "_").casefold() == name.casefold():
            return value
    return None


def check_config(reply: str, characters: list[str]) -> Config:
    """Parse and check a configuration reply against the candidates and the option lists."""
    obj = parse_json_object(reply)
    character, qtype, difficulty = (_field(obj, k) for k in ("Character", "Question_Type", "Difficulty"))
    by_norm = {_norm(c): c for c in characters}
    if not isinstance(character, str) or _norm(character) not in by_norm:
        raise Dropped("bad_option", f"Character {character!r:.60} is not one of the candidates")
    if not isinstance(qtype, str) or qtype.strip() not in QUESTION_TYPES:
        raise Dropped("bad_option", f"Question_Type {qtype!r:.40} is not one of {QUESTION_TYPES}")
    if not isinstance(difficulty, str) or difficulty.strip() not in DIFFICULTIES:
        raise Dropped("bad_option", f"Difficulty {difficulty!r:.40} is not one of {DIFFICULTIES}")
    return Config(by_norm[_norm(character)], qtype.strip(), difficulty.strip())


_WORD = re.compile(r"\w+")


def copies_passage(query: str, passage: str, min_words: int) -> bool:
    """Whether the query is the passage, or has at least `min_words` words and appears word for word
    inside it (case, punctuation and spacing ignored)."""
    q = _WORD.findall(query.casefold())
    p = _WORD.findall(passage.casefold())
    if q == p:
        return bool(q)
    return len(q) >= min_words and f" {' '.join(q)} " in f" {' '.join(p)} "


def check_query(reply: str, passage: str, copy_min_words: int) -> str:
    """Parse and check a query reply; returns the query text."""
    query = _field(parse_json_object(reply), "Query")
    if not isinstance(query, str) or not query.strip():
        raise Dropped("empty_query", f"Query {query!r:.40}")
    query = " ".join(query.split())
    if copies_passage(query, passage, copy_min_words):
        raise Dropped("copies_passage", repr(query[:60]))
    return query
