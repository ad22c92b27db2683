"""Tests of `qwen_embed.synth.settings.SynthSettings`: the job's frozen settings, their checks, and the
per-passage requirement.

Reference: docs/synth.md ("Settings" table; "The prompts": the length is a whole number of words in
min..max and the language one of the languages, drawn from `(seed, passage id)` so that a re-run asks
exactly the same whatever the chunking or the order) and the house rules in /work/shared/DESIGN.md: a
user error is one line giving the value, the limit and the fix; an unknown field is an error; a wrong type
(a bool for a count, a float, a string) is refused at the check, not met later as a crash.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from qwen_embed.errors import InputError
from qwen_embed.synth.settings import DEFAULT_MIN_COS, SynthSettings


def test_defaults_are_valid_and_check_returns_the_settings() -> None:
    s = SynthSettings()
    assert s.check() is s
    assert (s.languages, s.min_words, s.max_words, s.top_personas, s.chunk) == (("English",), 5, 25, 5, 64)
    assert DEFAULT_MIN_COS == 0.7  # the report's threshold


def test_settings_are_frozen_and_an_unknown_field_is_an_error() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        SynthSettings().chunk = 3  # type: ignore[misc]
    with pytest.raises(TypeError, match="languagez"):
        SynthSettings(languagez=("German",))  # type: ignore[call-arg]


def test_every_setting_has_its_help_text() -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(SynthSettings))


@pytest.mark.parametrize(("kw", "says"), [
    ({"languages": ()}, "languages=()"),
    ({"languages": ("",)}, "languages=('',)"),
    ({"languages": ("English", "  ")}, "languages=('English', '  ')"),
    ({"languages": ("English", None)}, "languages=('English', None)"),
    ({"min_words": 0}, "min_words=0"),
    ({"min_words": -3, "max_words": -1}, "min_words=-3"),
    ({"min_words": 9, "max_words": 8}, "max_words=8"),
    ({"top_personas": 0}, "top_personas=0"),
    ({"chunk": -1}, "chunk=-1"),
    ({"max_passage_chars": 0}, "max_passage_chars=0"),
    ({"copy_min_words": 0}, "copy_min_words=0"),
])
def test_an_out_of_range_setting_is_one_line_with_its_value(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(InputError) as err:
        SynthSettings(**kw).check()
    assert "\n" not in str(err.value) and says in str(err.value)


@pytest.mark.parametrize(("kw", "message"), [
    ({"min_words": True}, "min_words=True must be a whole number >= 1 (default 5)."),
    ({"min_words": 2.5}, "min_words=2.5 must be a whole number >= 1 (default 5)."),
    ({"max_words": 7.5}, "max_words=7.5 must be a whole number >= 1 (default 25)."),
    ({"top_personas": True}, "top_personas=True must be a whole number >= 1 (default 5)."),
    ({"chunk": 2.5}, "chunk=2.5 must be a whole number >= 1 (default 64)."),
    ({"max_passage_chars": float("nan")}, "max_passage_chars=nan must be a whole number >= 1 (default 4000)."),
    ({"copy_min_words": "6"}, "copy_min_words='6' must be a whole number >= 1 (default 6)."),
    ({"seed": 1.5}, "seed=1.5 must be a whole number (default 0)."),
    ({"seed": False}, "seed=False must be a whole number (default 0)."),
    ({"task": ""}, "task='' must be a non-empty string (default 'synthetic')."),
    ({"task": 3}, "task=3 must be a non-empty string (default 'synthetic')."),
    ({"passage_language": " "}, "passage_language=' ' must be a non-empty string (default 'English')."),
    ({"prompts": ""}, "prompts='' must be a non-empty string, or unset (default None)."),
    ({"languages": ("English", 3)}, "languages=('English', 3) must list at least one language name, each a "
                                    "non-empty string, e.g. ('English', 'German')."),
    ({"languages": 3}, "languages=3 must list at least one language name, each a non-empty string, e.g. "
                       "('English', 'German')."),
])
def test_a_setting_of_the_wrong_type_is_refused_in_one_line(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as err:
        SynthSettings(**kw).check()
    assert str(err.value) == message
    assert err.value.param == next(iter(kw))


def test_languages_given_as_one_string_is_refused() -> None:
    with pytest.raises(InputError) as err:
        SynthSettings(languages="English").check()  # type: ignore[arg-type]
    assert str(err.value) == ("languages='English' is one string, not a list of languages; pass a tuple such as "
                              "languages=('English',) (on the command line: --languages English,German).")


@pytest.mark.parametrize("languages", [("English", "German", "English"), ("English", " english")])
def test_a_language_listed_twice_is_refused(languages: tuple[str, ...]) -> None:
    with pytest.raises(InputError, match="twice") as err:
        SynthSettings(languages=languages).check()
    assert "\n" not in str(err.value) and f"languages={languages!r}" in str(err.value)
    assert "list each language once" in str(err.value)


def test_negative_seeds_and_a_list_of_languages_are_valid() -> None:
    s = SynthSettings(languages=["English", "German"], seed=-3).check()  # type: ignore[arg-type]
    assert {s.requirement(f"p{i}")[1] for i in range(40)} == {"English", "German"}


def test_the_requirement_is_a_pure_function_of_seed_and_passage_id() -> None:
    ids = [f"p{i}" for i in range(60)] + ["日本語-ü", "", " "]
    a = SynthSettings(languages=("English", "German", "Chinese"), seed=7)
    b = SynthSettings(languages=("English", "German", "Chinese"), seed=7, chunk=3, top_personas=2)
    forward = {i: a.requirement(i) for i in ids}
    backward = {i: b.requirement(i) for i in reversed(ids)}
    assert forward == backward  # another instance, other chunking, another order: the same asks
    assert all(a.requirement(i) == forward[i] for i in ids)  # and asked again
    other = SynthSettings(languages=("English", "German", "Chinese"), seed=8)
    assert any(other.requirement(i) != forward[i] for i in ids)  # the seed matters


def test_the_requirement_covers_the_whole_closed_range_and_every_language() -> None:
    s = SynthSettings(languages=("English", "German"), min_words=2, max_words=4)
    asks = [s.requirement(f"passage-{i}") for i in range(300)]
    assert {n for n, _ in asks} == {2, 3, 4}  # min and max included, whole numbers only
    assert all(isinstance(n, int) and not isinstance(n, bool) for n, _ in asks)
    assert {lang for _, lang in asks} == {"English", "German"}


def test_one_length_and_one_language_are_always_asked() -> None:
    s = SynthSettings(languages=("Français",), min_words=7, max_words=7).check()
    assert {s.requirement(str(i)) for i in range(50)} == {(7, "Français")}
