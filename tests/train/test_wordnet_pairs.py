"""WordNet pairs: the wndb line format parsed by hand-checked example, the three pair kinds, determinism, errors.

The fixture is real lines of WordNet 3.0 (tide, its hypernym, a satellite adjective line of data.adj)
and two hyponyms of the hypernym made for the test, written with the licence header's leading-spaces form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.train.wordnet_pairs import STOP_WORDS, parse_line, plural, read_synsets, wordnet_pairs

NOUNS = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "07402519 11 n 01 tide 0 003 @ 07296190 n 0000 + 02815241 a 0101 %p 07404114 n 0000 | the periodic rise and "
    "fall of the sea level under the gravitational pull of the moon; \"the tide was coming in\"  \n"
    "07296190 11 n 01 periodic_event 0 001 ~ 07402519 n 0000 | an event that recurs at intervals  \n"
    "07296999 11 n 01 heartbeat 0 001 @ 07296190 n 0000 | the rhythmic contraction and expansion of the arteries  \n"
    "07297000 11 n 01 season 0 001 @ 07296190 n 0000 | one of the natural periods into which the year is divided  \n"
)
ADJS = ("00015247 00 s 02 galore(ip) 0 in_large_quantities 0 001 & 00013887 a 0000 | in abundance; "
        "\"there were snacks galore at the party\"  \n")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "data.noun").write_text(NOUNS)
    (tmp_path / "data.adj").write_text(ADJS)
    return tmp_path


def test_parse_line_reads_words_gloss_examples_and_hypernyms() -> None:
    s = parse_line(NOUNS.splitlines()[1], "x")
    assert s is not None
    assert (s.pos, s.offset, s.words) == ("n", "07402519", ("tide",))
    assert s.definition == "the periodic rise and fall of the sea level under the gravitational pull of the moon"
    assert s.examples == ("the tide was coming in",)
    assert s.hypernyms == ("n07296190",)  # the "@" pointer; "+" and "%p" are not hypernyms
    adj = parse_line(ADJS, "x")
    assert adj is not None and adj.pos == "a" and adj.words == ("galore", "in large quantities")
    assert parse_line(NOUNS.splitlines()[0], "x") is None  # licence header


def test_pairs_of_each_kind(folder: Path) -> None:
    rows = wordnet_pairs(folder)
    by_id = {r["id"]: r for r in rows}
    definition = "the periodic rise and fall of the sea level under the gravitational pull of the moon"
    term = by_id["wordnet:n07402519:term"]
    assert "tide" in term["query"]
    assert definition in term["positive"].lower() and term["positive"].endswith("The tide was coming in.")
    usage = by_id["wordnet:n07402519:usage"]
    assert usage["query"] == "the tide was coming in"
    assert definition in usage["positive"].lower() and "tide" in usage["positive"].lower()
    assert not usage["positive"].startswith("tide:")  # prose, not a "word: definition" form
    assert by_id["wordnet:n07402519:kind-of"] == {
        "query": definition, "id": "wordnet:n07402519:kind-of",
        "positive": "A tide is a kind of periodic event, an event that recurs at intervals."}
    assert "wordnet:n07296190:kind-of" not in by_id  # no hypernym
    topic = by_id["wordnet:n07296190:topic"]  # the hypernym has three hyponyms: a paragraph of four entries
    paragraph = topic["query"] + " " + topic["positive"]
    for text in ("an event that recurs at intervals", definition, "rhythmic contraction", "natural periods"):
        assert text in paragraph.lower()
    assert topic["query"] not in topic["positive"]
    assert not any("a00015247" in i for i in by_id)  # "in abundance": definitions under three words are left out
    assert wordnet_pairs(folder) == rows  # deterministic
    assert {r["id"].rsplit(":", 1)[1] for r in wordnet_pairs(folder, kinds=("usage",))} == {"usage"}


def test_plural() -> None:
    assert [plural(w) for w in ("tide", "city", "box", "day", "church")] == ["tides", "cities", "boxes", "days",
                                                                             "churches"]


def test_errors_name_the_problem(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(InputError, match=r"holds none of WordNet's data\.noun"):
        read_synsets(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.verb").write_text("not a wordnet line\n")
    with pytest.raises(InputError, match=r"data.verb:1: not a WordNet data line"):
        read_synsets(tmp_path / "bad")
    with pytest.raises(InputError, match="'synonym' is not one of term, usage, kind-of, topic, keywords"):
        wordnet_pairs(folder, kinds=("synonym",))


def test_keyword_queries_are_content_words_of_their_document(folder: Path) -> None:
    rows = wordnet_pairs(folder, kinds=("keywords",))
    assert rows
    for r in rows:
        doc_words = set(re.findall(r"[a-z-]+", r["positive"].lower()))
        content = [w for w in r["query"].split() if w not in {"why", "how", "what", "is", "tell", "me", "about"}]
        assert 2 <= len(content) <= 3 and set(content) <= doc_words - STOP_WORDS, r
