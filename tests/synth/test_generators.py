"""Tests of `qwen_embed.synth.generators`: GeneratorSettings, OpenAIGenerator's request/retry policy,
LocalGenerator and make_generator.

Reference: the OpenAI chat-completions wire format (POST {base}/chat/completions with `model`, `messages`
= one user message, `temperature`, `max_tokens` and the extra body merged in; `Authorization: Bearer KEY`;
the reply's `choices[0].message.content` and `usage`; GET {base}/models) and the policy written in the
module docstring and docs/synth.md ("Endpoint errors", "Budget"): 429/408/409/5xx/timeouts/dropped
connections/unreadable replies are retried with doubling jittered backoff, a Retry-After honoured up to
max_backoff; other 4xx refuse that prompt only; 401/403/404 end the job at once; the first prompt is sent
alone; ABORT_AFTER failures in a row end the job; `max_requests` caps requests, retries included; one-line
errors naming the value and the fix.

The endpoint is scripted below the `openai` client, at its httpx transport (`httpx.MockTransport`: no
socket, no sleeping; the generator's `time.sleep` is recorded instead), and once through a real socket with
tests/synth/fake_llm.py.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from qwen_embed.errors import InputError
from qwen_embed.synth import generators
from qwen_embed.synth.generators import (
    ABORT_AFTER,
    Completion,
    GeneratorError,
    GeneratorSettings,
    LocalGenerator,
    OpenAIGenerator,
    make_generator,
)

from .fake_llm import FakeLLM

URL = "http://llm.test/v1"
MODEL = "Qwen/Qwen3-32B"
FAST = GeneratorSettings(concurrency=4, timeout=5.0, max_retries=2, backoff=0.0, max_backoff=0.0, temperature=0.3,
                         max_tokens=64, api_key_env="SYNTH_TEST_KEY")

Reply = int | str | httpx.Response  # a status code, "drop", "timeout", or a reply text ("ok:TEXT")


def chat_completion(text: str | None, prompt: str, *, usage: bool = True) -> dict[str, Any]:
    """A chat.completion object as the OpenAI API returns it; usage counts words (a known reference)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
    if usage:
        p, c = len(prompt.split()), len((text or "").split())
        body["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return body


class Endpoint:
    """A scripted OpenAI-compatible endpoint: `script[prompt]` lists the reply of each attempt (the last one
    repeats); a prompt not in the script is answered `reply to PROMPT`."""

    def __init__(self) -> None:
        self.script: dict[str, list[Reply]] = {}
        self.models: list[Reply] = [200]
        self.requests: list[httpx.Request] = []
        self.bodies: list[dict[str, Any]] = []
        self.attempts: Counter[str] = Counter()
        self.events: list[tuple[str, str]] = []
        self.clients: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def sent(self, prompt: str | None = None) -> int:
        return sum(1 for b in self.bodies if prompt is None or b["messages"][0]["content"] == prompt)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
        if request.method == "GET":
            with self.lock:
                n = sum(1 for r in self.requests if r.method == "GET")
            reply = self.models[min(n, len(self.models)) - 1]
            return self._reply(reply, request, lambda: {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        body = json.loads(request.content)
        prompt = body["messages"][0]["content"]
        with self.lock:
            self.bodies.append(body)
            self.attempts[prompt] += 1
            attempt = self.attempts[prompt]
            self.events.append(("start", prompt))
        replies = self.script.get(prompt, [f"ok:reply to {prompt}"])
        try:
            return self._reply(replies[min(attempt, len(replies)) - 1], request,
                               lambda: chat_completion(f"reply to {prompt}", prompt), prompt)
        finally:
            with self.lock:
                self.events.append(("end", prompt))

    @staticmethod
    def _reply(reply: Reply, request: httpx.Request, ok: Any, prompt: str = "") -> httpx.Response:
        if isinstance(reply, httpx.Response):
            return reply
        if reply == "drop":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        if reply == "refused":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if reply == "timeout":
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(reply, str) and reply.startswith("ok:"):
            return httpx.Response(200, json=chat_completion(reply[3:], prompt))
        if reply == 200:
            return httpx.Response(200, json=ok())
        assert isinstance(reply, int), reply
        return httpx.Response(reply, json={"error": {"message": f"scripted {reply}", "type": "test"}})


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """Every openai.OpenAI the generator makes talks to one scripted Endpoint; retry delays are recorded."""
    import openai

    ep = Endpoint()
    real = openai.OpenAI

    def client(**kw: Any) -> Any:
        ep.clients.append(kw)
        return real(**kw, http_client=httpx.Client(transport=httpx.MockTransport(ep.handle)))

    monkeypatch.setattr(openai, "OpenAI", client)
    monkeypatch.setenv("SYNTH_TEST_KEY", "sk-test")
    return ep


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The delays the generator asked to sleep (it does not sleep)."""
    got: list[float] = []
    monkeypatch.setattr(generators, "time", SimpleNamespace(sleep=got.append))
    return got


@pytest.fixture
def make(endpoint: Endpoint, sleeps: list[float]) -> Iterator[Any]:
    made: list[OpenAIGenerator] = []

    def new(settings: GeneratorSettings = FAST, **kw: Any) -> OpenAIGenerator:
        gen = OpenAIGenerator(URL, MODEL, GeneratorSettings(**{**settings.__dict__, **kw}))
        made.append(gen)
        return gen

    yield new
    for gen in made:
        gen.close()


# -- GeneratorSettings ---------------------------------------------------------------------------------
def test_default_settings_are_valid_and_frozen() -> None:
    s = GeneratorSettings()
    assert s.check() is s and s.extra() == {}
    with pytest.raises(AttributeError):
        s.timeout = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="retries"):
        GeneratorSettings(retries=3)  # type: ignore[call-arg]


@pytest.mark.parametrize(("kw", "says"), [
    ({"concurrency": 0}, "concurrency=0"),
    ({"timeout": 0}, "timeout=0"),
    ({"timeout": -1.0}, "timeout=-1.0"),
    ({"max_retries": -1}, "max_retries=-1"),
    ({"backoff": -0.1}, "backoff=-0.1"),
    ({"max_backoff": -1.0}, "max_backoff=-1.0"),
    ({"max_requests": 0}, "max_requests=0"),
    ({"max_tokens": 0}, "max_tokens=0"),
    ({"temperature": -0.01}, "temperature=-0.01"),
    ({"temperature": 2.5}, "temperature=2.5"),
    ({"temperature": float("nan")}, "temperature=nan"),
    ({"extra_body": "{not json"}, "is not JSON"),
    ({"extra_body": "[1, 2]"}, "must be a JSON object"),
    ({"extra_body": "null"}, "must be a JSON object"),
    ({"extra_body": '"text"'}, "must be a JSON object"),
])
def test_an_out_of_range_setting_is_one_line_with_its_value(kw: dict[str, Any], says: str) -> None:
    with pytest.raises(InputError) as err:
        GeneratorSettings(**kw).check()
    assert "\n" not in str(err.value) and says in str(err.value)


@pytest.mark.parametrize(("kw", "message"), [
    ({"timeout": float("nan")}, "timeout=nan must be a finite number > 0 seconds (default 120.0)."),
    ({"timeout": float("inf")}, "timeout=inf must be a finite number > 0 seconds (default 120.0)."),
    ({"timeout": "5"}, "timeout='5' must be a finite number > 0 seconds (default 120.0)."),
    ({"timeout": True}, "timeout=True must be a finite number > 0 seconds (default 120.0)."),
    ({"backoff": float("nan")}, "backoff=nan must be a finite number >= 0 seconds (default 1.0)."),
    ({"max_backoff": float("nan")}, "max_backoff=nan must be a finite number >= 0 seconds (default 60.0)."),
    ({"concurrency": True}, "concurrency=True must be a whole number >= 1 (default 16)."),
    ({"max_requests": True}, "max_requests=True must be a whole number >= 1 (leave it unset for no limit)."),
    ({"max_requests": 2.0}, "max_requests=2.0 must be a whole number >= 1 (leave it unset for no limit)."),
    ({"max_retries": 1.5}, "max_retries=1.5 must be a whole number >= 0 (default 5)."),
    ({"max_tokens": 1.5}, "max_tokens=1.5 must be a whole number >= 1 (default 512)."),
    ({"temperature": "0.7"}, "temperature='0.7' must be a finite number in 0..2 (default 0.7)."),
    ({"api_key_env": ""}, "api_key_env='' must be a non-empty string (default 'OPENAI_API_KEY')."),
    ({"extra_body": {"top_k": 20}}, "extra_body={'top_k': 20} must be a JSON object written as a string, e.g. "
                                    "'{\"top_k\": 20}'."),
    ({"extra_body": '{"top_k": NaN}'}, "extra_body '{\"top_k\": NaN}' holds NaN, which is not JSON; write a finite "
                                       "number or null."),
    ({"extra_body": '{"a": [Infinity]}'}, "extra_body '{\"a\": [Infinity]}' holds Infinity, which is not JSON; "
                                          "write a finite number or null."),
    ({"extra_body": '{"model": "other"}'}, "extra_body sets 'model', which the generator sends itself; pass it "
                                           "with --model."),
    ({"extra_body": '{"messages": []}'}, "extra_body sets 'messages', which the generator sends itself; the "
                                         "prompt is the one user message; edit the prompts with --prompts."),
    ({"extra_body": '{"temperature": 0}'}, "extra_body sets 'temperature', which the generator sends itself; "
                                           "pass it with --temperature."),
    ({"extra_body": '{"max_tokens": 9}'}, "extra_body sets 'max_tokens', which the generator sends itself; pass "
                                          "it with --max-tokens."),
    ({"extra_body": '{"stream": true}'}, "extra_body sets 'stream', which the generator sends itself; streamed "
                                         "replies are not read; leave it out."),
    ({"extra_body": "{}]"}, "extra_body '{}]' is not JSON (Extra data: line 1 column 3 (char 2)); pass a JSON "
                            "object."),
])
def test_a_setting_of_the_wrong_type_is_refused_in_one_line(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as err:
        GeneratorSettings(**kw).check()
    assert str(err.value) == message
    assert err.value.param == next(iter(kw))


def test_whole_numbers_are_valid_for_the_seconds_settings() -> None:
    assert GeneratorSettings(timeout=5, backoff=0, max_backoff=1, temperature=1).check().timeout == 5


@pytest.mark.parametrize(("extra_body", "parsed"), [(None, {}), ("", {}), ("{}", {}),
                                                     ('{"top_k": 20, "chat_template_kwargs": {"x": false}}',
                                                      {"top_k": 20, "chat_template_kwargs": {"x": False}})])
def test_extra_body_parses_to_a_dict(extra_body: str | None, parsed: dict[str, Any]) -> None:
    assert GeneratorSettings(extra_body=extra_body).check().extra() == parsed


# -- make_generator ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("spec", "model", "says"), [
    ("http://localhost:8000/v1", None, "pass --model NAME"),
    ("https://api.example.com/v1", "", "pass --model NAME"),
    ("localhost:8000/v1", "m", "neither an http(s):// base URL"),
    ("ftp://host/v1", "m", "neither an http(s):// base URL"),
    ("", "m", "neither an http(s):// base URL"),
])
def test_a_bad_generator_spec_is_one_line_with_the_fix(spec: str, model: str | None, says: str) -> None:
    with pytest.raises(InputError, match=re.escape(says)) as err:
        make_generator(spec, model)
    assert "\n" not in str(err.value) and spec in str(err.value)


def test_make_generator_picks_the_backend(endpoint: Endpoint, tmp_path: Path) -> None:
    gen = make_generator(URL + "/", MODEL, FAST)
    assert isinstance(gen, OpenAIGenerator) and gen.base_url == URL
    gen.close()
    for spec in ("HTTP://llm.test/v1", "Https://llm.test/v1"):  # a URL scheme is case-insensitive (RFC 3986)
        gen = make_generator(spec, MODEL, FAST)
        assert isinstance(gen, OpenAIGenerator) and gen.complete(["p"])[0].text == "reply to p"
        gen.close()
    assert [str(r.url) for r in endpoint.requests] == [f"{scheme}://llm.test/v1/chat/completions"
                                                       for scheme in ("http", "https")]
    with pytest.raises(InputError, match=r"no config\.json") as err:
        make_generator(f"local:{tmp_path}", None)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value) and "--generator local:" in str(err.value)


# -- OpenAIGenerator: the request and the reply ---------------------------------------------------------------
def test_each_prompt_is_one_user_message_in_the_chat_completions_shape(make: Any, endpoint: Endpoint) -> None:
    extra = '{"chat_template_kwargs": {"enable_thinking": false}, "top_k": 20}'
    gen = make(extra_body=extra)
    prompts = ["first prompt", "second 日本語 prompt", "third"]
    done: list[tuple[int, str | None]] = []
    out = gen.complete(prompts, on_done=lambda i, c: done.append((i, c.text)))
    assert [c.text for c in out] == [f"reply to {p}" for p in prompts]
    assert [(c.prompt_tokens, c.completion_tokens) for c in out] == [(2, 4), (3, 5), (1, 3)]
    assert sorted(done) == [(i, f"reply to {p}") for i, p in enumerate(prompts)]
    assert {(r.method, str(r.url)) for r in endpoint.requests} == {("POST", URL + "/chat/completions")}
    assert {r.headers["authorization"] for r in endpoint.requests} == {"Bearer sk-test"}
    expected = [{"model": MODEL, "messages": [{"role": "user", "content": p}], "temperature": 0.3,
                 "max_tokens": 64, "chat_template_kwargs": {"enable_thinking": False}, "top_k": 20} for p in prompts]
    assert sorted(endpoint.bodies, key=lambda b: prompts.index(b["messages"][0]["content"])) == expected
    s = gen.stats
    assert (s.requests, s.calls, s.retries, s.failed, s.refused, s.prompt_tokens, s.completion_tokens,
            s.budget_spent) == (3, 3, 0, 0, 0, 6, 12, False)
    assert gen.identity() == {"backend": "openai", "model": MODEL, "temperature": 0.3, "max_tokens": 64,
                              "extra_body": {"chat_template_kwargs": {"enable_thinking": False}, "top_k": 20}}
    assert endpoint.clients[0]["max_retries"] == 0 and endpoint.clients[0]["timeout"] == 5.0


@pytest.mark.parametrize("value", [None, ""])
def test_without_a_key_the_client_sends_empty(make: Any, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch,
                                              value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SYNTH_TEST_KEY")
    else:
        monkeypatch.setenv("SYNTH_TEST_KEY", value)
    make().complete(["p"])
    assert endpoint.requests[0].headers["authorization"] == "Bearer EMPTY"


def test_a_null_content_is_an_empty_answer_and_missing_usage_counts_zero(make: Any, endpoint: Endpoint) -> None:
    endpoint.script["p"] = [httpx.Response(200, json=chat_completion(None, "p", usage=False))]
    [c] = make().complete(["p"])
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.error) == ("", 0, 0, None)


def test_no_prompts_send_nothing(make: Any, endpoint: Endpoint) -> None:
    assert make().complete([]) == [] and endpoint.requests == []


def test_the_first_prompt_is_sent_alone(make: Any, endpoint: Endpoint) -> None:
    prompts = [f"p{i}" for i in range(6)]
    make().complete(prompts)
    assert endpoint.events[:2] == [("start", "p0"), ("end", "p0")]
    assert endpoint.sent() == 6


# -- OpenAIGenerator: retries, refusals, fatal answers ---------------------------------------------------------
@pytest.mark.parametrize("failure", [408, 409, 429, 500, 502, 503, 504, "drop", "refused", "timeout"])
def test_a_passing_failure_is_retried(make: Any, endpoint: Endpoint, failure: Reply) -> None:
    endpoint.script["x"] = [failure, "ok:fine"]
    gen = make()
    done: list[int] = []
    out = gen.complete(["ok", "x"], on_done=lambda i, c: done.append(i))
    assert [c.text for c in out] == ["reply to ok", "fine"] and sorted(done) == [0, 1]
    assert (gen.stats.requests, gen.stats.retries, gen.stats.calls, gen.stats.failed) == (3, 1, 2, 0)


@pytest.mark.parametrize(("failure", "says"), [(503, "HTTP 503: scripted 503"), ("timeout", "APITimeoutError"),
                                               ("drop", "APIConnectionError")])
def test_a_prompt_is_given_up_after_max_retries(make: Any, endpoint: Endpoint, failure: Reply, says: str) -> None:
    endpoint.script["x"] = [failure]
    gen = make()
    done: list[int] = []
    out = gen.complete(["ok", "x"], on_done=lambda i, c: done.append(i))
    assert out[1].text is None and not out[1].refused and done == [0]
    assert says in str(out[1].error) and "gave up after 3 attempts" in str(out[1].error)
    assert endpoint.sent("x") == 3
    assert (gen.stats.requests, gen.stats.retries, gen.stats.failed, gen.stats.refused) == (4, 2, 1, 0)


@pytest.mark.parametrize("code", [400, 413, 422])
@pytest.mark.parametrize("first", [True, False])
def test_another_4xx_refuses_that_prompt_only(make: Any, endpoint: Endpoint, code: int, first: bool) -> None:
    endpoint.script["x"] = [code, "ok:never"]
    prompts = ["x", "ok", "ok2"] if first else ["ok", "x", "ok2"]
    gen = make()
    out = gen.complete(prompts)
    bad = out[prompts.index("x")]
    assert bad.text is None and bad.refused and bad.error == f"HTTP {code}: scripted {code}"
    assert [c.text for c in out if c is not bad] == ["reply to ok", "reply to ok2"]
    assert endpoint.sent("x") == 1 and (gen.stats.refused, gen.stats.failed, gen.stats.retries) == (1, 0, 0)


@pytest.mark.parametrize("code", [401, 403, 404])
@pytest.mark.parametrize("first", [True, False])
def test_401_403_404_end_the_job_at_once(make: Any, endpoint: Endpoint, code: int, first: bool) -> None:
    endpoint.script["x"] = [code]
    prompts = (["x"] if first else ["ok", "x"]) + [f"later{i}" for i in range(5)]
    with pytest.raises(GeneratorError) as err:
        make(concurrency=1).complete(prompts)
    msg = str(err.value)
    assert "\n" not in msg and f"HTTP {code}" in msg and "$SYNTH_TEST_KEY" in msg and repr(MODEL) in msg
    assert URL in msg and "--generator" in msg
    assert endpoint.sent("x") == 1 and endpoint.sent() == (1 if first else 2)  # no retry, nothing after it


def test_a_first_prompt_without_answer_ends_the_job_before_the_others(make: Any, endpoint: Endpoint) -> None:
    endpoint.script["dead"] = [500]
    with pytest.raises(GeneratorError) as err:
        make().complete(["dead", "a", "b"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no answer from {URL} (HTTP 500") and "--generator" in msg
    assert endpoint.sent() == 3 and endpoint.sent("dead") == 3


def test_failures_in_a_row_end_the_job(make: Any, endpoint: Endpoint) -> None:
    dead = [f"dead{i}" for i in range(ABORT_AFTER + 10)]
    for p in dead:
        endpoint.script[p] = [500]
    with pytest.raises(GeneratorError, match=f"^{ABORT_AFTER} prompts in a row got no answer") as err:
        make(concurrency=1, max_retries=0).complete(["ok", *dead])
    assert "\n" not in str(err.value) and "Re-run the same command to resume" in str(err.value)
    assert endpoint.sent() == 1 + ABORT_AFTER


def test_an_answer_between_failures_resets_the_count(make: Any, endpoint: Endpoint) -> None:
    prompts = ["ok"]
    for block in range(3):
        for i in range(ABORT_AFTER - 1):
            endpoint.script[f"dead{block}-{i}"] = [500]
            prompts.append(f"dead{block}-{i}")
        prompts.append(f"alive{block}")
    gen = make(concurrency=1, max_retries=0)
    out = gen.complete(prompts)
    assert sum(c.text is None for c in out) == 3 * (ABORT_AFTER - 1) and gen.stats.failed == 3 * (ABORT_AFTER - 1)


@pytest.mark.parametrize("budget", [1, 3, 5])
def test_the_request_budget_counts_every_request(make: Any, endpoint: Endpoint, budget: int) -> None:
    endpoint.script["p0"] = [500, "ok:after a retry"]
    gen = make(max_requests=budget)
    out = gen.complete([f"p{i}" for i in range(6)])
    assert endpoint.sent() == budget == gen.stats.requests
    assert gen.stats.budget_spent
    answered = [c for c in out if c.text is not None]
    assert len(answered) == budget - 1
    assert all(c.error == f"request budget of {budget} spent" for c in out if c.text is None and c is not out[0])


def test_retry_after_is_honoured_up_to_max_backoff(make: Any, endpoint: Endpoint, sleeps: list[float]) -> None:
    endpoint.script["x"] = [httpx.Response(429, headers={"Retry-After": "3"}, json={"error": {"message": "slow"}}),
                            httpx.Response(503, headers={"Retry-After": "30"}, json={"error": {"message": "busy"}}),
                            httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, json={}),
                            "ok:done"]
    out = make(max_retries=3, backoff=0.0, max_backoff=10.0).complete(["x"])
    assert out[0].text == "done" and sleeps == [3.0, 10.0, 0.0]


def test_backoff_doubles_with_jitter_up_to_max_backoff(make: Any, endpoint: Endpoint, sleeps: list[float]) -> None:
    endpoint.script["x"] = [500, 500, 500, 500, "ok:done"]
    assert make(max_retries=4, backoff=1.0, max_backoff=5.0).complete(["x"])[0].text == "done"
    assert len(sleeps) == 4
    for attempt, (low, high) in enumerate([(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (4.0, 5.0)]):
        assert low <= sleeps[attempt] <= high, (attempt, sleeps)


UNREADABLE = {
    "html page": httpx.Response(200, text="<html><body>502 Bad Gateway</body></html>",
                                headers={"content-type": "text/html"}),
    "broken json": httpx.Response(200, text='{"id": "x", "choi', headers={"content-type": "application/json"}),
    "no choices": httpx.Response(200, json={"error": {"message": "upstream overloaded"}}),
    "empty choices": httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": MODEL,
                                               "choices": []}),
    "content not a string": httpx.Response(200, json={**chat_completion("x", "x"), "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": ["a", "list"]}}]}),
    "no message": httpx.Response(200, json={**chat_completion("x", "x"), "choices": [
        {"index": 0, "finish_reason": "stop"}]}),
}


@pytest.mark.parametrize("kind", list(UNREADABLE))
def test_an_unreadable_reply_is_retried(make: Any, endpoint: Endpoint, kind: str) -> None:
    endpoint.script["x"] = [UNREADABLE[kind], "ok:readable"]
    gen = make()
    done: list[int] = []
    out = gen.complete(["ok", "x"], on_done=lambda i, c: done.append(i))
    assert out[1].text == "readable" and gen.stats.retries == 1 and sorted(done) == [0, 1]
    assert (gen.stats.requests, gen.stats.calls, gen.stats.failed) == (3, 2, 0)


@pytest.mark.parametrize(("kind", "says"), [
    ("html page", "unreadable reply: not a chat completion but str '<html><body>502 Bad Gateway"),
    ("broken json", "unreadable reply: JSONDecodeError"),
    ("no choices", "unreadable reply: no choices in the reply: upstream overloaded"),
    ("empty choices", "unreadable reply: no choices in the reply"),
    ("content not a string", "unreadable reply: the first choice has no message text (list)"),
    ("no message", "unreadable reply: the first choice has no message"),
])
def test_an_always_unreadable_reply_is_given_up_and_not_passed_on(make: Any, endpoint: Endpoint, kind: str,
                                                                   says: str) -> None:
    endpoint.script["x"] = [UNREADABLE[kind]]
    gen = make()
    done: list[int] = []
    out = gen.complete(["ok", "x"], on_done=lambda i, c: done.append(i))
    assert out[1].text is None and not out[1].refused and done == [0]  # never handed to the cache
    assert str(out[1].error).startswith(says) and str(out[1].error).endswith("(gave up after 3 attempts)")
    assert "\n" not in str(out[1].error)
    assert endpoint.sent("x") == 3 and (gen.stats.calls, gen.stats.failed, gen.stats.retries) == (1, 1, 2)


def test_an_unreadable_first_reply_ends_the_job_in_one_line(make: Any, endpoint: Endpoint) -> None:
    endpoint.script["x"] = [UNREADABLE["html page"]]
    with pytest.raises(GeneratorError) as err:
        make().complete(["x", "a"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no answer from {URL} (unreadable reply") and "--generator" in msg


# -- OpenAIGenerator: preflight and close --------------------------------------------------------------------
def test_preflight_asks_models_once_and_is_not_counted(make: Any, endpoint: Endpoint) -> None:
    gen = make()
    gen.preflight()
    [r] = endpoint.requests
    assert (r.method, str(r.url), r.headers["authorization"]) == ("GET", URL + "/models", "Bearer sk-test")
    assert gen.stats.requests == 0


@pytest.mark.parametrize("code", [401, 403])
def test_preflight_refused_credentials_end_the_job_in_one_line(make: Any, endpoint: Endpoint, code: int) -> None:
    endpoint.models = [code]
    with pytest.raises(GeneratorError) as err:
        make().preflight()
    msg = str(err.value)
    assert "\n" not in msg and f"HTTP {code}" in msg and "$SYNTH_TEST_KEY" in msg and "--generator" in msg
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("code", [404, 400, 500, 503])
def test_preflight_passes_a_server_without_the_route(make: Any, endpoint: Endpoint, code: int) -> None:
    endpoint.models = [code]
    make().preflight()
    assert len(endpoint.requests) == 1


@pytest.mark.parametrize("failure", ["refused", "drop", "timeout", 429, 408])
def test_preflight_retries_then_reports_no_answer(make: Any, endpoint: Endpoint, failure: Reply,
                                                  sleeps: list[float]) -> None:
    endpoint.models = [failure]
    with pytest.raises(GeneratorError) as err:
        make().preflight()
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"no answer from {URL}") and "gave up after 3 attempts" in msg
    assert len(endpoint.requests) == 3 and len(sleeps) == 2
    endpoint.requests.clear()
    endpoint.models = [failure, 200]
    make().preflight()
    assert len(endpoint.requests) == 2


def test_a_closed_generator_sends_nothing(make: Any, endpoint: Endpoint) -> None:
    gen = make()
    gen.close()
    with pytest.raises(GeneratorError, match="closed"):
        gen.complete(["p"])
    assert endpoint.requests == []


# -- over a real socket: the scripted server of the other synth tests ------------------------------------------
def test_a_rate_limited_prompt_through_the_scripted_server(fake_llm: FakeLLM) -> None:
    prompt = ("select the appropriate option from three fields\n**Character**:\n1. a nurse\n2. a baker\n"
              "[case:ratelimit#1]")
    gen = OpenAIGenerator(fake_llm.url, "fake-model", GeneratorSettings(**{**FAST.__dict__, "api_key_env": "NONE_SET"}))
    try:
        [c] = gen.complete([prompt])
    finally:
        gen.close()
    assert c.text is not None and json.loads(c.text) == {"Character": "a nurse", "Question_Type": "acquire_knowledge",
                                                         "Difficulty": "university"}
    assert fake_llm.prompts("config") == [prompt] * 3  # two 429s, then the answer
    assert (gen.stats.requests, gen.stats.retries, gen.stats.calls) == (3, 2, 1)
    assert c.prompt_tokens == len(prompt.split()) and c.completion_tokens == len(c.text.split())


# -- LocalGenerator -----------------------------------------------------------------------------------------
def test_local_generator_checks_the_folder_and_loads_lazily(tiny_reranker_path: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a checkpoint folder") as err:
        LocalGenerator(tmp_path)
    assert "\n" not in str(err.value)
    gen = LocalGenerator(tiny_reranker_path, GeneratorSettings(temperature=0.0, max_tokens=8), seed=3)
    assert gen.model is None  # loaded on the first complete, after the job checked its inputs
    assert gen.identity() == {"backend": "local", "model": str(tiny_reranker_path.resolve()), "temperature": 0.0,
                              "max_tokens": 8, "seed": 3}


@pytest.mark.slow
def test_local_generator_answers_in_order_and_batches_like_alone(tiny_reranker_path: Path) -> None:
    from transformers import AutoTokenizer

    prompts = ["hi", "a much longer prompt with many more words than the first one", "日本語のプロンプト"]
    gen = LocalGenerator(tiny_reranker_path, GeneratorSettings(temperature=0.0, max_tokens=5, concurrency=2),
                         device="cpu")
    done: list[int] = []
    out = gen.complete(prompts, on_done=lambda i, c: done.append(i))
    tok = AutoTokenizer.from_pretrained(tiny_reranker_path)
    lengths = [len(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                           add_generation_prompt=True, enable_thinking=False, return_dict=False))
               for p in prompts]
    assert done == [0, 1, 2] and [c.prompt_tokens for c in out] == lengths  # left padding not counted
    assert all(isinstance(c.text, str) and 0 <= c.completion_tokens <= 5 for c in out)
    assert [gen.complete([p])[0] for p in prompts] == out  # greedy: a batch answers as each prompt alone
    assert (gen.stats.requests, gen.stats.calls) == (6, 6)
    gen.close()
    assert gen.model is None


def test_completion_defaults() -> None:
    c = Completion("t")
    assert (c.prompt_tokens, c.completion_tokens, c.error, c.cached, c.refused) == (0, 0, None, False, False)
