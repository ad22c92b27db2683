"""qwen_embed.templates: the reranker prompt strings, checked against DESIGN.md's exact text."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from qwen_embed.errors import InputError, QwenEmbedError
from qwen_embed.templates import PREFIX, SUFFIX, SYSTEM_PROMPT, TEMPLATES, RerankTemplate, get_template
from tests.threads import subprocess_env

# Copied by hand from DESIGN.md ("Reranker prompt (model card / transformers form)"), not from the module.
DESIGN_SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
                 'Note that the answer can only be "yes" or "no".')
DESIGN_PREFIX = ('<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the '
                 'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n')
DESIGN_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

# Values with braces, format fields and newlines: a template that formats the wrong part shows.
INSTRUCTION = "Given a {query} about {0}, retrieve passages"
QUERY = "what is {instruction}?\nsecond line }{"
DOCUMENT = "The {document} of {} braces }} and\nnew lines."


def card_reference(instruction: str, query: str, document: str) -> str:
    """The model card's `prefix + format_instruction(...) + suffix`."""
    return DESIGN_PREFIX + f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}" + DESIGN_SUFFIX


def chatml(messages: list[tuple[str, str]]) -> str:
    """Qwen3's chat template without a generation prompt: each turn `<|im_start|>role\\ncontent<|im_end|>\\n`."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)


def official_eval_reference(instruction: str, query: str, document: str) -> str:
    """The official evaluation: system + user turns through the chat template, then the suffix appended."""
    user = f"<Instruct>: {instruction}\n\n<Query>: {query}\n\n<Document>: {document}"
    return chatml([("system", DESIGN_SYSTEM), ("user", user)]) + DESIGN_SUFFIX


def test_prefix_suffix_and_system_prompt_are_design_strings() -> None:
    assert SYSTEM_PROMPT == DESIGN_SYSTEM
    assert PREFIX == DESIGN_PREFIX
    assert SUFFIX == DESIGN_SUFFIX
    assert chatml([("system", DESIGN_SYSTEM)]) + "<|im_start|>user\n" == PREFIX


def test_there_are_exactly_the_two_documented_templates() -> None:
    assert set(TEMPLATES) == {"card", "official-eval"}
    for name, template in TEMPLATES.items():
        assert template.name == name
        assert template.prefix == DESIGN_PREFIX


@pytest.mark.parametrize(("instruction", "query", "document"), [
    (INSTRUCTION, QUERY, DOCUMENT),
    ("Given a web search query, retrieve relevant passages that answer the query",
     "What is the capital of China?", "The capital of China is Beijing."),
    ("", "", ""),
])
def test_card_renders_the_model_card_string(instruction: str, query: str, document: str) -> None:
    card = get_template("card")
    assert card.render(instruction, query, document) == card_reference(instruction, query, document)
    assert card.body(instruction, query, document) == \
        f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"
    assert card.tail == DESIGN_SUFFIX


@pytest.mark.parametrize(("instruction", "query", "document"), [
    (INSTRUCTION, QUERY, DOCUMENT),
    ("Given a scientific claim, retrieve documents that support or refute the claim",
     "0-dimensional biomaterials show inductive properties.", "Biomaterials are ..."),
    ("", "", ""),
])
def test_official_eval_renders_the_chat_template_form(instruction: str, query: str, document: str) -> None:
    ev = get_template("official-eval")
    rendered = ev.render(instruction, query, document)
    assert rendered == official_eval_reference(instruction, query, document)
    assert ev.body(instruction, query, document) == \
        f"<Instruct>: {instruction}\n\n<Query>: {query}\n\n<Document>: {document}"
    # The user turn is closed by the chat template before the suffix (which opens with <|im_end|> again).
    assert rendered.endswith(document + "<|im_end|>\n" + DESIGN_SUFFIX)
    assert ev.tail == "<|im_end|>\n" + DESIGN_SUFFIX


@pytest.mark.parametrize("name", ["card", "official-eval"])
def test_document_is_last_before_the_tail(name: str) -> None:
    """The document is the only part after the head, so truncating it keeps prefix, query and suffix."""
    t = get_template(name)
    head = t.head.format(instruction=INSTRUCTION, query=QUERY)
    assert head.startswith(f"<Instruct>: {INSTRUCTION}") and head.endswith("<Document>: ")
    for doc in (DOCUMENT, DOCUMENT[:7], ""):
        assert t.render(INSTRUCTION, QUERY, doc) == DESIGN_PREFIX + head + doc + t.tail


def test_templates_differ_only_in_separators_and_the_closed_turn() -> None:
    card = get_template("card").render("i", "q", "d")
    ev = get_template("official-eval").render("i", "q", "d")
    assert card != ev
    assert ev == card.replace("\n<Query>", "\n\n<Query>").replace("\n<Document>", "\n\n<Document>") \
        .replace("d" + DESIGN_SUFFIX, "d<|im_end|>\n" + DESIGN_SUFFIX)


def test_get_template_returns_the_registered_object() -> None:
    assert get_template("card") is TEMPLATES["card"]
    assert get_template("official-eval") is TEMPLATES["official-eval"]


@pytest.mark.parametrize("name", ["cards", "", "CARD", "official_eval", "official"])
def test_unknown_template_names_the_choices(name: str) -> None:
    with pytest.raises(InputError) as info:
        get_template(name)
    message = str(info.value)
    assert repr(name) in message
    choices = message.replace(repr(name), "")
    assert "card" in choices and "official-eval" in choices
    assert "\n" not in message
    assert isinstance(info.value, QwenEmbedError) and isinstance(info.value, ValueError)


def test_custom_template_and_frozen() -> None:
    t = RerankTemplate("mine", "Q={query} I={instruction} D=", "<END>")
    assert t.prefix == DESIGN_PREFIX
    assert t.render("ins", "qq", "doc") == DESIGN_PREFIX + "Q=qq I=ins D=doc<END>"
    assert RerankTemplate("p", "{query}|", "", prefix="").render("i", "q", "d") == "q|d"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "other"  # type: ignore[misc]


def test_reranker_re_exports_the_same_objects() -> None:
    from qwen_embed import reranker, templates

    for name in ("PREFIX", "SUFFIX", "SYSTEM_PROMPT", "TEMPLATES", "RerankTemplate", "get_template"):
        assert getattr(reranker, name) is getattr(templates, name), name


def test_module_imports_without_torch() -> None:
    code = ("import sys, qwen_embed.templates as t; t.get_template('card').render('i', 'q', 'd'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         check=True, timeout=60)
    assert out.stdout.strip() == "False"
