"""The job against the scripted OpenAI-compatible server, driven through the real `openai` client."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from qwen_embed import Embedder
from qwen_embed.errors import InputError
from qwen_embed.synth import (
    GeneratorError,
    GeneratorSettings,
    LazyEmbedder,
    LocalGenerator,
    OpenAIGenerator,
    SynthSettings,
    generate_queries,
)
from qwen_embed.train.data import BatchStream, iter_examples
from tests.ports import free_port

from .conftest import PERSONAS, write_passages
from .fake_llm import FakeLLM

FAST = GeneratorSettings(concurrency=4, timeout=0.5, max_retries=2, backoff=0.01, max_backoff=0.05, temperature=0.0,
                         max_tokens=64)
CASES = ["valid", "malformed", "badopt", "badchar", "empty", "copy", "slow", "ratelimit", "error", "drop", "dead",
         "think", "valid", "toolong"]
KEPT = ["p0", "p6", "p7", "p8", "p9", "p11", "p12"]  # the valid ones, those valid after a retry, and `think`


def rows_of(path: Path) -> list[dict[str, object]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_scripted_replies_kept_dropped_retried(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    passages = write_passages(tmp_path / "p.jsonl", CASES)
    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    out = tmp_path / "pairs.jsonl"
    t0 = time.monotonic()
    summary = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder,
                               settings=SynthSettings(chunk=5, seed=3))
    gen.close()
    assert time.monotonic() - t0 < 30
    # `dead` answers 500 every time: given up after 1 + max_retries attempts, left for the next run
    dead = [p for p in fake_llm.prompts() if "[case:dead" in p]
    assert len(dead) == 3 and len(set(dead)) == 1
    assert summary["failed"] == 1 and summary["unanswered"] == 1 and not summary["complete"]
    assert not out.exists() and summary["output"] == str(out) + ".partial"
    rows = rows_of(Path(summary["output"]))
    assert [r["id"] for r in rows] == KEPT
    assert summary["dropped"] == {"not_json": 1, "bad_option": 2, "empty_query": 1, "copies_passage": 1,
                                  "refused": 1}  # `toolong`: a 400 is final, not retried, not left for later
    assert len([p for p in fake_llm.prompts() if "[case:toolong" in p]) == 1
    assert summary["kept"] == summary["pairs"] == len(KEPT)
    # retries: slow 1 (timeout), ratelimit 2 (429 twice), error 1 (500), drop 1 (connection closed), dead 2
    assert summary["retries"] == 7
    assert summary["requests"] == len(fake_llm.prompts()) == 30
    # calls = prompts answered: 12 configuration replies + 9 query replies (the passages whose config passed)
    assert summary["calls"] == 21 and len(fake_llm.prompts("query")) == 9
    answered = {}
    for _stage, p in fake_llm.log:
        if "[case:dead" not in p and "[case:toolong" not in p:
            answered[p] = len(p.split())
    assert summary["prompt_tokens"] == sum(answered.values())
    assert summary["cached"] == 0

    row = rows[0]
    assert row["positive"].startswith("Study 0 [case:valid#0]")  # title + text, the whole passage
    assert row["query"] == "which study reports the valid finding number 0"
    meta = row["meta"]
    assert meta["passage_id"] == "p0" and meta["question_type"] == "acquire_knowledge"
    assert meta["difficulty"] == "university" and meta["language"] == "English" and 5 <= meta["length"] <= 25
    personas = [json.loads(ln)["persona"] for ln in PERSONAS.read_text().splitlines()]
    assert meta["persona"] in personas
    assert row["instruction"].startswith("Given a question seeking knowledge") and row["task"] == "synthetic"

    # the re-run asks only the dead passage again: every other reply comes from the cache
    before = len(fake_llm.prompts())
    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    with pytest.raises(GeneratorError, match="no answer"):  # only the dead one is left: the probe gives up
        generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder,
                         settings=SynthSettings(chunk=5, seed=3))
    gen.close()
    again = fake_llm.prompts()[before:]
    assert again and all("[case:dead" in p or "[case:toolong" in p for p in again)


def test_rows_are_training_rows(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 6)
    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    out = tmp_path / "pairs.jsonl"
    summary = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder)
    gen.close()
    assert summary["complete"] and summary["pairs"] == 6 and out.exists()
    assert not out.with_name("pairs.jsonl.partial").exists()
    examples = list(iter_examples([out]))  # the training reader, as `train embed` and `mine` use it
    assert [e.query for e in examples] == [r["query"] for r in rows_of(out)]
    assert all(e.task == "synthetic" and e.instruction and len(e.positives) == 1 for e in examples)
    batch = next(iter(BatchStream([out], batch_size=3, seed=0)))
    assert batch.task == "synthetic" and len(batch.examples) == 3

    from qwen_embed.train.mining import MiningSettings, mine

    mined = tmp_path / "mined.jsonl"
    mine(embedder, out, mined, settings=MiningSettings(top_k=5, num_negatives=2, margin=0.0))
    assert len(list(iter_examples([mined]))) == 6


def test_request_budget_stops_and_resumes(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 8)
    out = tmp_path / "pairs.jsonl"
    budget = GeneratorSettings(**{**FAST.__dict__, "max_requests": 5})
    gen = OpenAIGenerator(fake_llm.url, "fake-model", budget)
    s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder, settings=SynthSettings(chunk=4))
    gen.close()
    assert s["budget_spent"] and s["requests"] == 5 == len(fake_llm.prompts()) and not s["complete"]
    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder, settings=SynthSettings(chunk=4))
    gen.close()
    assert s["complete"] and s["pairs"] == 8 and len(fake_llm.prompts()) == 16  # 8 config + 8 query, none twice
    assert len(set(fake_llm.prompts())) == 16


@pytest.mark.parametrize("models_route", [True, False])
def test_wrong_api_key_is_one_request_and_one_error(models_route: bool, embedder: Embedder, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    server = FakeLLM(api_key="right-key", models_route=models_route)
    try:
        monkeypatch.setenv("SYNTH_TEST_KEY", "wrong-key")
        passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 10)
        gen = OpenAIGenerator(server.url, "fake-model",
                              GeneratorSettings(**{**FAST.__dict__, "api_key_env": "SYNTH_TEST_KEY"}))
        with pytest.raises(GeneratorError, match="401") as err:
            generate_queries(passages, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
        gen.close()
        assert str(err.value).count("HTTP 401") == 1 and "SYNTH_TEST_KEY" in str(err.value)
        # no retry storm: the preflight GET /models refuses the key, or (a server without that route)
        # the first prompt, sent alone, does
        assert server.gets == 1 and len(server.prompts()) == (0 if models_route else 1)
        monkeypatch.setenv("SYNTH_TEST_KEY", "right-key")
        gen = OpenAIGenerator(server.url, "fake-model",
                              GeneratorSettings(**{**FAST.__dict__, "api_key_env": "SYNTH_TEST_KEY"}))
        s = generate_queries(passages, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
        gen.close()
        assert s["complete"] and s["pairs"] == 10
    finally:
        server.close()


def test_unreachable_endpoint_fails_fast(embedder: Embedder, tmp_path: Path) -> None:
    passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 3)
    gen = OpenAIGenerator(f"http://127.0.0.1:{free_port()}/v1", "m", FAST)  # nothing listens: refused
    t0 = time.monotonic()
    with pytest.raises(GeneratorError, match=r"no answer from http://127\.0\.0\.1"):
        generate_queries(passages, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
    assert time.monotonic() - t0 < 8  # three refused connections and two short backoffs, not a hang
    gen.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # nothing created


def test_silent_endpoint_fails_within_the_timeout(embedder: Embedder, tmp_path: Path) -> None:
    with socket.socket() as hole:  # accepts connections (backlog) and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/v1"
        settings = GeneratorSettings(**{**FAST.__dict__, "timeout": 0.3, "max_retries": 1})
        gen = OpenAIGenerator(url, "m", settings)
        passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 3)
        t0 = time.monotonic()
        with pytest.raises(GeneratorError, match="Timeout"):
            generate_queries(passages, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
        assert time.monotonic() - t0 < 2 * 0.3 + 5  # two attempts of 0.3 s, a short backoff, the job's setup
        gen.close()


def test_bad_inputs(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no passages"):
        generate_queries(empty, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
    passages = write_passages(tmp_path / "p.jsonl", ["valid"])
    with pytest.raises(InputError, match=r"personas file .*missing\.jsonl does not exist"):
        generate_queries(passages, tmp_path / "missing.jsonl", tmp_path / "o.jsonl", generator=gen, embedder=embedder)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}\n')
    with pytest.raises(InputError, match="appears twice"):
        generate_queries(dup, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder)
    gen.close()
    assert fake_llm.prompts() == [] and not (tmp_path / "o.jsonl.partial").exists()


def test_local_backend_garbage_is_dropped(tiny_reranker_path: Path, embedder: Embedder, tmp_path: Path) -> None:
    passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 4)
    gen = LocalGenerator(tiny_reranker_path, GeneratorSettings(max_tokens=12, concurrency=4, temperature=0.0),
                         device="cpu")
    out = tmp_path / "pairs.jsonl"
    s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder)
    assert s["complete"] and s["kept"] == 0 and sum(s["dropped"].values()) == 4
    assert s["calls"] == 4 and s["completion_tokens"] > 0 and out.read_text() == ""
    # the garbage replies were cached: a fresh run over the same passages pays nothing
    s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder, overwrite=True)
    assert s["cached"] == 4 and s["calls"] == 0 and s["requests"] == 0 and gen.stats.calls == 4


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    gen = OpenAIGenerator("http://127.0.0.1:9/v1", "m", GeneratorSettings(backoff=1.0, max_backoff=10.0))
    for attempt in range(6):
        d = [gen._delay(attempt, None) for _ in range(50)]
        assert all(min(10.0, 0.5 * 2 ** attempt) <= x <= min(10.0, 2 ** attempt) for x in d)
    assert gen._delay(0, 7.0) == 7.0 and gen._delay(0, 99.0) == 10.0
    gen.close()


def test_endpoint_down_midway_ends_the_job(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    from qwen_embed.synth.generators import ABORT_AFTER

    passages = write_passages(tmp_path / "p.jsonl", ["valid"] + ["dead"] * (ABORT_AFTER + 8))
    gen = OpenAIGenerator(fake_llm.url, "m", GeneratorSettings(**{**FAST.__dict__, "max_retries": 0,
                                                                  "concurrency": 2}))
    with pytest.raises(GeneratorError, match=f"{ABORT_AFTER} prompts in a row"):
        generate_queries(passages, PERSONAS, tmp_path / "o.jsonl", generator=gen, embedder=embedder,
                         settings=SynthSettings(chunk=64))
    gen.close()
    assert len(fake_llm.prompts("config")) <= ABORT_AFTER + 2 + 1  # stops, not one request per passage


@pytest.mark.parametrize("mistake", ["model", "embedding_model"])
def test_failed_first_run_does_not_block_the_fixed_rerun(mistake: str, embedder: Embedder, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails before writing any row (the first prompt refused, the embedding model missing)
    leaves no empty partial file behind, so the same command with the mistake fixed (another --model or
    --embedding-model, hence another fingerprint) runs instead of being refused as "other settings"."""
    server = FakeLLM(api_key="right-key", models_route=False)  # the wrong key fails on the first prompt
    try:
        monkeypatch.setenv("SYNTH_TEST_KEY", "right-key")
        settings = GeneratorSettings(**{**FAST.__dict__, "api_key_env": "SYNTH_TEST_KEY"})
        passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 3)
        out = tmp_path / "o.jsonl"

        def missing() -> Embedder:
            raise InputError("model folder emb-typo does not exist; check the path.")

        if mistake == "model":
            monkeypatch.setenv("SYNTH_TEST_KEY", "wrong-key")
            gen = OpenAIGenerator(server.url, "wrong-model", settings)
            with pytest.raises(GeneratorError, match="401"):
                generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder)
            monkeypatch.setenv("SYNTH_TEST_KEY", "right-key")
        else:
            gen = OpenAIGenerator(server.url, "fake-model", settings)
            with pytest.raises(InputError, match="emb-typo"):
                generate_queries(passages, PERSONAS, out, generator=gen, embedder=LazyEmbedder("emb-typo", missing))
        gen.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl"]  # no partial file, no fingerprint
        gen = OpenAIGenerator(server.url, "fake-model", settings)
        s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder)
        gen.close()
        assert s["complete"] and s["pairs"] == 3
    finally:
        server.close()


def test_failed_resumed_run_keeps_the_earlier_partial(fake_llm: FakeLLM, embedder: Embedder, tmp_path: Path) -> None:
    """A run that fails keeps a partial file it did not create (an earlier run's, even one with no rows)."""
    passages = write_passages(tmp_path / "p.jsonl", ["valid"] * 3)
    out = tmp_path / "o.jsonl"
    gen = OpenAIGenerator(fake_llm.url, "fake-model", GeneratorSettings(**{**FAST.__dict__, "max_requests": 1}))
    s = generate_queries(passages, PERSONAS, out, generator=gen, embedder=embedder)
    gen.close()
    partial = tmp_path / "o.jsonl.partial"
    assert not s["complete"] and partial.read_text() == ""

    def broken() -> Embedder:
        raise InputError("cannot load")

    gen = OpenAIGenerator(fake_llm.url, "fake-model", FAST)
    with pytest.raises(InputError, match="cannot load"):
        generate_queries(passages, PERSONAS, out, generator=gen, embedder=LazyEmbedder(str(embedder.name), broken))
    gen.close()
    assert partial.exists() and (tmp_path / "o.jsonl.partial.meta.json").exists()
