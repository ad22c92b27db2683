"""The templates and the reply checks: each drop reason, and the per-passage requirement."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import pytest

from qwen_embed.errors import InputError
from qwen_embed.synth import DIFFICULTIES, QUESTION_TYPES, SynthSettings, load_prompts
from qwen_embed.synth.prompts import Config, Dropped, check_config, check_query, copies_passage

CANDIDATES = ["A nurse on a night shift", "A marine biologist", "A retired teacher", "A farmer", "A lawyer"]


def reason(fn, *args) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(Dropped) as e:
        fn(*args)
    return e.value.reason


def test_packaged_templates_render_the_reports_fields() -> None:
    p = load_prompts()
    config = p.render_config("Corals bleach in warm water.", CANDIDATES, "English")
    for word in ("Character", "Question_Type", "Difficulty", *QUESTION_TYPES, *DIFFICULTIES,
                 "Corals bleach in warm water.", "1. A nurse on a night shift", "5. A lawyer"):
        assert word in config
    query = p.render_query("Corals bleach.", Config("A farmer", "yes_or_no", "phd"), length=12, language="German",
                           passage_language="English")
    for word in ("A farmer", "Corals bleach.", "Type: yes_or_no", "Difficulty: phd", "about 12 words",
                 "written in German"):
        assert word in query
    assert set(p.instructions) == set(QUESTION_TYPES)


def test_config_checks() -> None:
    ok = {"Character": "a marine biologist.", "Question_Type": "summary", "Difficulty": "phd"}
    assert check_config(json.dumps(ok), CANDIDATES) == Config("A marine biologist", "summary", "phd")
    fenced = "<think>\nhmm {x}\n</think>\n```json\n" + json.dumps(ok) + "\n```"
    assert check_config(fenced, CANDIDATES).question_type == "summary"
    assert check_config("Here you go: " + json.dumps(ok) + " Done.", CANDIDATES).difficulty == "phd"
    assert reason(check_config, "Character: nurse", CANDIDATES) == "not_json"
    assert reason(check_config, "[1, 2]", CANDIDATES) == "not_json"
    assert reason(check_config, json.dumps({**ok, "Question_Type": "opinion"}), CANDIDATES) == "bad_option"
    assert reason(check_config, json.dumps({**ok, "Difficulty": "kindergarten"}), CANDIDATES) == "bad_option"
    assert reason(check_config, json.dumps({**ok, "Character": "A pilot"}), CANDIDATES) == "bad_option"
    assert reason(check_config, json.dumps({"Character": "A farmer"}), CANDIDATES) == "bad_option"


def test_query_checks() -> None:
    passage = "Warm water makes corals expel the algae living in their tissues, and the reef turns white."
    assert check_query('{"Query": "why do  reefs turn white"}', passage, 6) == "why do reefs turn white"
    assert check_query('{"query": "coral algae"}', passage, 6) == "coral algae"  # short: a keyword query
    assert reason(check_query, '{"Query": ""}', passage, 6) == "empty_query"
    assert reason(check_query, '{"Answer": "x"}', passage, 6) == "empty_query"
    assert reason(check_query, '{"Query": 3}', passage, 6) == "empty_query"
    assert reason(check_query, "no json at all", passage, 6) == "not_json"
    copied = '{"Query": "Corals expel the ALGAE living in their tissues?"}'
    assert reason(check_query, copied, passage, 6) == "copies_passage"
    assert check_query(copied, passage, 9)  # shorter than the copy limit: kept
    assert copies_passage("Warm water", "warm water.", 6)  # the whole passage, however short
    assert not copies_passage("corals expel algae living in tissues", passage, 3)  # not contiguous


def test_requirement_is_seeded_per_passage() -> None:
    s = SynthSettings(languages=("English", "German", "French"), min_words=3, max_words=30, seed=7)
    picks = [s.requirement(f"p{i}") for i in range(200)]
    assert picks == [s.requirement(f"p{i}") for i in range(200)]
    assert {lang for _, lang in picks} == {"English", "German", "French"}
    assert min(n for n, _ in picks) >= 3 and max(n for n, _ in picks) <= 30 and len({n for n, _ in picks}) > 10
    assert picks != [SynthSettings(languages=s.languages, min_words=3, max_words=30, seed=8).requirement(f"p{i}")
                     for i in range(200)]
    with pytest.raises(InputError, match="min_words=9, max_words=3"):
        SynthSettings(min_words=9, max_words=3).check()


def test_user_templates(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    shutil.copytree(Path(str(resources.files("qwen_embed.synth") / "prompts")), folder)
    query = folder / "query.txt"
    query.write_text(query.read_text().replace("**Requirement**", "**Requirement** (be brief)"))
    assert "(be brief)" in load_prompts(folder).query
    query.write_text(query.read_text() + "\n${mood}\n")
    with pytest.raises(InputError, match="mood"):
        load_prompts(folder)
    shutil.copy(Path(str(resources.files("qwen_embed.synth") / "prompts" / "query.txt")), query)
    config = folder / "config.txt"
    config.write_text(config.read_text().replace("- yes_or_no:", "- yes_no:"))
    with pytest.raises(InputError, match="yes_or_no"):
        load_prompts(folder)
    with pytest.raises(InputError, match=r"lacks config\.txt"):
        load_prompts(tmp_path)


@pytest.mark.parametrize(("name", "placeholder"), [("config.txt", "characters"), ("query.txt", "character"),
                                                   ("query.txt", "question_type"), ("query.txt", "difficulty"),
                                                   ("query.txt", "length"), ("query.txt", "language")])
def test_user_template_without_a_required_placeholder_is_refused(name: str, placeholder: str,
                                                                 tmp_path: Path) -> None:
    """A template that leaves out the candidates, or a requirement the row records (its question type picks
    the row's instruction; its language and length go into meta), would write rows that lie: refused."""
    folder = tmp_path / "prompts"
    shutil.copytree(Path(str(resources.files("qwen_embed.synth") / "prompts")), folder)
    template = folder / name
    text = template.read_text()
    assert "${" + placeholder + "}" in text
    template.write_text(text.replace("${" + placeholder + "}", "(see above)"))
    with pytest.raises(InputError, match=rf"{name}: .*missing \['{placeholder}'\]"):
        load_prompts(folder)


def test_user_template_may_leave_out_the_passage_language(tmp_path: Path) -> None:
    folder = tmp_path / "prompts"
    shutil.copytree(Path(str(resources.files("qwen_embed.synth") / "prompts")), folder)
    for name in ("config.txt", "query.txt"):
        (folder / name).write_text((folder / name).read_text().replace("${passage_language}", "English"))
    p = load_prompts(folder)
    assert "${passage_language}" not in p.config + p.query
