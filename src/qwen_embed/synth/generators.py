"""Generators: prompts in, completions out, from an OpenAI-compatible endpoint or a local causal LM.

The seam is the small `Generator` protocol: `complete(prompts, on_done)` returns one `Completion` per
prompt, in order, and calls `on_done(index, completion)` as each one arrives (the job's response cache
writes it there, so a kill loses nothing that was paid for). Each prompt is sent as one user message.

- `OpenAIGenerator` talks to any chat-completions server (vLLM, SGLang, llama.cpp, a provider) through
  the `openai` client, with its own retry loop (the client's is switched off so that retries are
  counted): at most `concurrency` requests in flight, a `timeout` per request, retries with
  exponential backoff and jitter on 429, 408, 409, 5xx, timeouts, dropped connections and unreadable
  replies (a 200 that is not a chat completion whose first choice holds a text or a null content, e.g. a
  proxy's HTML page, a broken JSON body, an error body without `choices`; a `Retry-After` header is
  honoured up to `max_backoff`), and a `max_requests` budget over all requests sent. Other 4xx
  refuse that prompt only (e.g. one too long for the server). The first prompt a generator sees is
  sent alone, so that a wrong URL, key or model name costs one request and one clear error instead
  of a storm; 401, 403 and 404 end the job at once, as do ABORT_AFTER
  failures in a row. Before that, `preflight` asks `GET /models` once, so that an unreachable server
  or a wrong key is reported before the job embeds the personas. The API key comes from the
  environment variable `api_key_env`; `extra_body` may add fields to the request but not replace the
  ones the generator sends (`RESERVED_BODY_KEYS`).
- `LocalGenerator` runs a Qwen3 causal LM checkpoint with transformers' `generate` (chat template,
  thinking off, left-padded batches) for small offline runs.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from ..errors import InputError, QwenEmbedError, is_whole
from .settings import check_number, check_text, check_whole

GAVE_UP = "gave up after"
UNREADABLE = "unreadable reply"
# request fields the generator sends itself: extra_body must not override them silently (the client merges
# extra_body last), with the way to set each one
RESERVED_BODY_KEYS = {
    "model": "pass it with --model",
    "messages": "the prompt is the one user message; edit the prompts with --prompts",
    "temperature": "pass it with --temperature",
    "max_tokens": "pass it with --max-tokens",
    "stream": "streamed replies are not read; leave it out",
}
ABORT_AFTER = 16  # failed prompts in a row (after retries) that end the job: the endpoint looks down


class GeneratorError(QwenEmbedError):
    """The generator cannot go on: unreachable, refused credentials, unknown model, or failing throughout."""


@dataclass(frozen=True)
class GeneratorSettings:
    """How prompts are sent and sampled (one table: the CLI flags and docs/synth.md follow it)."""

    concurrency: int = field(default=16, metadata={"help": "requests in flight (local: prompts per batch)"})
    timeout: float = field(default=120.0, metadata={"help": "seconds to wait for one reply before retrying"})
    max_retries: int = field(default=5, metadata={"help": "retries of one prompt on 429/408/409/5xx/timeouts/"
                                                          "dropped connections/unreadable replies"})
    backoff: float = field(default=1.0, metadata={"help": "first retry delay in seconds, doubled each retry "
                                                          "(with jitter)"})
    max_backoff: float = field(default=60.0, metadata={"help": "longest retry delay in seconds"})
    max_requests: int | None = field(default=None, metadata={"help": "budget: requests sent by this run, "
                                                                      "retries included (default: no limit)"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature"})
    max_tokens: int = field(default=512, metadata={"help": "completion tokens per reply"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "environment variable holding the "
                                                                         "API key (unset: 'EMPTY', as vLLM takes)"})
    extra_body: str | None = field(default=None, metadata={"help": "JSON object merged into each request body, "
                                                                   "e.g. '{\"chat_template_kwargs\": "
                                                                   "{\"enable_thinking\": false}}' for Qwen3 on "
                                                                   "vLLM (not model, messages, temperature, "
                                                                   "max_tokens or stream)"})

    def check(self) -> GeneratorSettings:
        """Validate types and ranges; errors say the value, the limit and the fix."""
        check_whole(self, "concurrency", 1)
        check_number(self, "timeout", 0, above=True, unit=" seconds")
        check_whole(self, "max_retries", 0)
        check_number(self, "backoff", 0, unit=" seconds")
        check_number(self, "max_backoff", 0, unit=" seconds")
        if self.max_requests is not None:
            check_whole(self, "max_requests", 1, "leave it unset for no limit")
        check_number(self, "temperature", 0, 2)
        check_whole(self, "max_tokens", 1)
        check_text(self, "api_key_env")
        self.extra()
        return self

    def extra(self) -> dict[str, Any]:
        """The parsed extra_body (an empty dict when unset)."""
        import json

        if self.extra_body is None or self.extra_body == "":
            return {}
        if not isinstance(self.extra_body, str):
            raise InputError(f"extra_body={self.extra_body!r:.80} must be a JSON object written as a string, e.g. "
                             f"'{{\"top_k\": 20}}'.", param="extra_body")

        def no_constant(name: str) -> Any:
            raise InputError(f"extra_body {self.extra_body!r:.80} holds {name}, which is not JSON; write a finite "
                             f"number or null.", param="extra_body")

        try:
            value = json.loads(self.extra_body, parse_constant=no_constant)
        except ValueError as e:
            if isinstance(e, InputError):
                raise
            raise InputError(f"extra_body {self.extra_body!r:.80} is not JSON ({e}); pass a JSON object.",
                             param="extra_body") from None
        if not isinstance(value, dict):
            raise InputError(f"extra_body {self.extra_body!r:.80} must be a JSON object.", param="extra_body")
        for key, fix in RESERVED_BODY_KEYS.items():
            if key in value:
                raise InputError(f"extra_body sets {key!r}, which the generator sends itself; {fix}.",
                                 param="extra_body")
        return value


@dataclass
class Completion:
    """One reply: its text, or `text=None` and the `error` when the prompt got no answer (`refused`:
    the endpoint rejected this prompt for good, e.g. as too long; asking again would not help)."""

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached: bool = False
    refused: bool = False


@dataclass
class GeneratorStats:
    """Counts of one run: requests sent (retries included), prompts answered, retries, prompts given up
    after retries (`failed`) or refused by the endpoint (`refused`), tokens."""

    requests: int = 0
    calls: int = 0
    retries: int = 0
    failed: int = 0
    refused: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    budget_spent: bool = False


OnDone = Callable[[int, Completion], None]


class Generator(Protocol):
    """Anything that turns prompts into completions."""

    stats: GeneratorStats

    def identity(self) -> dict[str, Any]:
        """What determines a reply besides the prompt (model, sampling): the cache key's namespace."""
        ...

    def preflight(self) -> None:
        """Fail now, before the job's expensive setup, if the generator cannot work (GeneratorError)."""
        ...

    def complete(self, prompts: Sequence[str], on_done: OnDone | None = None) -> list[Completion]:
        """One completion per prompt, in order; `on_done(i, c)` as each arrives."""
        ...

    def close(self) -> None:
        """Release connections, threads or the model."""
        ...


# -- OpenAI-compatible endpoint --------------------------------------------------------------------
class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server (see the module docstring for the policy)."""

    def __init__(self, base_url: str, model: str, settings: GeneratorSettings | None = None) -> None:
        import openai

        self.settings = (settings or GeneratorSettings()).check()
        self.base_url, self.model = base_url.rstrip("/"), model
        self.stats = GeneratorStats()
        self._extra = self.settings.extra()
        key = os.environ.get(self.settings.api_key_env) or "EMPTY"
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                                     timeout=self.settings.timeout)
        self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="qwen-embed-synth")
        self._lock = threading.Lock()
        self._abort: GeneratorError | None = None
        self._answered = False
        self._in_a_row = 0

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"backend": "openai", "model": self.model, "temperature": s.temperature, "max_tokens": s.max_tokens,
                "extra_body": self._extra}

    def preflight(self) -> None:
        """One `GET /models` (with the retry policy; not counted in `stats`): an unreachable server or
        refused credentials end the job before the personas are embedded. A server without that route,
        or one that fails it with a 5xx, passes: the first prompt, sent alone, is the next check."""
        import openai

        s, error = self.settings, ""
        for attempt in range(s.max_retries + 1):
            if attempt:
                time.sleep(self._delay(attempt - 1, None))
            try:
                self._client.models.list()
                return
            except openai.APIConnectionError as e:
                error = f"{type(e).__name__}: {e}"
            except openai.APIStatusError as e:
                if e.status_code in (401, 403):
                    raise GeneratorError(f"{self.base_url} answered HTTP {e.status_code}: {_message(e)}; check the "
                                         f"API key in ${s.api_key_env} and the --generator URL.") from None
                if e.status_code not in (408, 429):
                    return
                error = f"HTTP {e.status_code}: {_message(e)}"
            except openai.APIError:
                return
        raise GeneratorError(f"no answer from {self.base_url} ({error} {GAVE_UP} {s.max_retries + 1} attempts); "
                             f"check that the server runs and that --generator is its base URL (e.g. "
                             f"http://HOST:8000/v1).")

    def complete(self, prompts: Sequence[str], on_done: OnDone | None = None) -> list[Completion]:
        out: list[Completion | None] = [None] * len(prompts)

        def run(i: int) -> None:
            c = self._send(prompts[i])
            out[i] = c
            if on_done is not None and c.text is not None:
                on_done(i, c)

        todo = list(range(len(prompts)))
        if todo and not self._answered:  # a probe: a wrong URL, key or model costs one request
            run(todo.pop(0))
            first = out[0]
            assert first is not None
            if self._abort is None and first.text is None and not first.refused and not self.stats.budget_spent:
                self._abort = GeneratorError(f"no answer from {self.base_url} ({first.error}); check that the "
                                             f"server runs and that --generator is its base URL (e.g. "
                                             f"http://HOST:8000/v1).")
        if self._abort is None:
            list(self._pool.map(run, todo))
        if self._abort is not None:
            raise self._abort
        return [c if c is not None else Completion(None, error="not sent") for c in out]

    def _send(self, prompt: str) -> Completion:
        import openai

        s = self.settings
        error = "not sent"
        for attempt in range(s.max_retries + 1):
            with self._lock:
                if self._abort is not None:
                    return Completion(None, error="aborted")
                if s.max_requests is not None and self.stats.requests >= s.max_requests:
                    self.stats.budget_spent = True
                    return Completion(None, error=f"request budget of {s.max_requests} spent")
                self.stats.requests += 1
                if attempt:
                    self.stats.retries += 1
            retry_after = None
            try:
                resp = self._client.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": prompt}], temperature=s.temperature,
                    max_tokens=s.max_tokens, extra_body=self._extra or None)
            except openai.APIConnectionError as e:  # timeouts included
                error = f"{type(e).__name__}: {e}"
            except openai.APIStatusError as e:
                code = e.status_code
                error = f"HTTP {code}: {_message(e)}"
                if code in (401, 403, 404):
                    self._fail_job(GeneratorError(
                        f"{self.base_url} answered {error} for model {self.model!r}; check the API key in "
                        f"${s.api_key_env}, the --model name and the --generator URL."))
                    return Completion(None, error=error)
                if code not in (408, 409, 429) and code < 500:
                    return self._failed(error, refused=True)  # this prompt is refused (e.g. too long): final
                retry_after = _retry_after(e)
            except openai.APIError as e:  # a reply the client cannot read
                error = f"{UNREADABLE}: {type(e).__name__}: {e}"
            except ValueError as e:  # a 200 body that is not JSON (json.JSONDecodeError) or not the model's shape
                error = f"{UNREADABLE}: {type(e).__name__}: {str(e)[:200]}"
            else:
                text = _reply_text(resp)
                if not isinstance(text, _Unreadable):
                    return self._answer(resp, text)
                error = f"{UNREADABLE}: {text.why}"
            if attempt < s.max_retries:
                time.sleep(self._delay(attempt, retry_after))
        return self._failed(f"{error} ({GAVE_UP} {s.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        delay = s.backoff * 2 ** attempt * (0.5 + random.random() / 2)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, s.max_backoff)

    def _answer(self, resp: Any, text: str) -> Completion:
        usage = getattr(resp, "usage", None)
        c = Completion(text, token_count(getattr(usage, "prompt_tokens", 0)),
                       token_count(getattr(usage, "completion_tokens", 0)))
        with self._lock:
            self._answered = True
            self._in_a_row = 0
            self.stats.calls += 1
            self.stats.prompt_tokens += c.prompt_tokens
            self.stats.completion_tokens += c.completion_tokens
        return c

    def _failed(self, error: str, *, refused: bool = False) -> Completion:
        with self._lock:
            self.stats.refused += refused
            self.stats.failed += not refused
            self._in_a_row += 1
            if self._in_a_row >= ABORT_AFTER and self._abort is None:
                self._abort = GeneratorError(f"{ABORT_AFTER} prompts in a row got no answer from {self.base_url} "
                                             f"(last: {error}); the endpoint looks down. Re-run the same "
                                             f"command to resume.")
        return Completion(None, error=error, refused=refused)

    def _fail_job(self, err: GeneratorError) -> None:
        with self._lock:
            if self._abort is None:
                self._abort = err

    def close(self) -> None:
        """Stop: prompts not yet sent are cancelled, requests in flight are left to end on their own."""
        self._fail_job(GeneratorError("the generator was closed"))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


@dataclass(frozen=True)
class _Unreadable:
    why: str


def _reply_text(resp: Any) -> str | _Unreadable:
    """The text of a chat completion's first choice (a null content is an empty answer), or why the reply
    is not a readable chat completion (an HTML page the client returns as a str, an error body without
    choices, no choice at all, a content that is not a string): such a reply is retried."""
    from openai.types.chat import ChatCompletion

    if not isinstance(resp, ChatCompletion):
        return _Unreadable(f"not a chat completion but {type(resp).__name__} {str(resp)[:120]!r}")
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        extra = getattr(resp, "model_extra", None) or {}
        said = f": {_message(SimpleNamespace(body=extra))}" if extra.get("error") else ""
        return _Unreadable(f"no choices in the reply{said}")
    message = getattr(choices[0], "message", None)
    if message is None:
        return _Unreadable("the first choice has no message")
    content = getattr(message, "content", None)
    if content is None:
        return ""
    if not isinstance(content, str):
        return _Unreadable(f"the first choice has no message text ({type(content).__name__})")
    return content


def token_count(value: Any) -> int:
    """A token count as reported (by an endpoint, or read from the cache): a whole number >= 0, else 0."""
    return value if is_whole(value, 0) else 0


def _message(e: Any) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return str(msg)[:200]
    return str(getattr(e, "message", e))[:200]


def _retry_after(e: Any) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


# -- local causal LM -------------------------------------------------------------------------------
class LocalGenerator:
    """A local Qwen3 causal LM checkpoint through transformers' `generate` (small offline runs).

    The model is loaded on the first `complete`, so that the job checks its inputs first."""

    def __init__(self, path: str | os.PathLike[str], settings: GeneratorSettings | None = None, *,
                 device: str | None = None, dtype: str | None = None, seed: int = 0) -> None:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise InputError(f"the local generator needs transformers ({e}); pip install 'qwen-embed[synth]'.") \
                from None
        self.settings = (settings or GeneratorSettings()).check()
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise InputError(f"local generator {self.path} is not a checkpoint folder (no config.json); pass "
                             f"--generator local:FOLDER of a Qwen3 causal LM.")
        self.stats = GeneratorStats()
        self.seed, self._device, self._dtype = seed, device, dtype
        self.model: Any = None
        self.tokenizer: Any = None

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = torch.device(self._device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = getattr(torch, self._dtype) if self._dtype else (torch.bfloat16 if device.type == "cuda"
                                                                 else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        self.model = model.to(device).eval()
        self.device = device

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"backend": "local", "model": str(self.path.resolve()), "temperature": s.temperature,
                "max_tokens": s.max_tokens, "seed": self.seed}

    def preflight(self) -> None:
        """Load the model now (a broken checkpoint fails before the job's setup)."""
        if self.model is None:
            self._load()

    def _chat(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  enable_thinking=False)
        return str(text)

    def complete(self, prompts: Sequence[str], on_done: OnDone | None = None) -> list[Completion]:
        import torch

        if self.model is None:
            self._load()
        s = self.settings
        out: list[Completion] = []
        for start in range(0, len(prompts), s.concurrency):
            batch = [self._chat(p) for p in prompts[start:start + s.concurrency]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            torch.manual_seed(self.seed + start)
            with torch.inference_mode():
                gen = self.model.generate(**enc, max_new_tokens=s.max_tokens, do_sample=s.temperature > 0,
                                          temperature=s.temperature or None, top_p=None, top_k=None,
                                          pad_token_id=self.tokenizer.pad_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]  # [b, new tokens]
            stop = {t for t in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if t is not None}
            for j, row in enumerate(new.tolist()):
                n = next((k for k, t in enumerate(row) if t in stop), len(row))
                c = Completion(str(self.tokenizer.decode(row[:n], skip_special_tokens=True)),
                               int(enc["attention_mask"][j].sum()), n)
                self.stats.requests += 1
                self.stats.calls += 1
                self.stats.prompt_tokens += c.prompt_tokens
                self.stats.completion_tokens += c.completion_tokens
                if on_done is not None:
                    on_done(start + j, c)
                out.append(c)
        return out

    def close(self) -> None:
        """Release the model."""
        self.model = self.tokenizer = None


def make_generator(spec: str, model: str | None, settings: GeneratorSettings | None = None, *,
                   device: str | None = None, dtype: str | None = None, seed: int = 0) -> Generator:
    """`http(s)://HOST/v1` (the scheme in any case) -> OpenAIGenerator (needs `model`); `local:PATH` ->
    LocalGenerator."""
    if spec.startswith("local:"):
        return LocalGenerator(spec.removeprefix("local:"), settings, device=device, dtype=dtype, seed=seed)
    if spec.lower().startswith(("http://", "https://")):
        if not model:
            raise InputError(f"--generator {spec} is an endpoint: pass --model NAME (the model it serves).")
        return OpenAIGenerator(spec, model, settings)
    raise InputError(f"--generator {spec!r} is neither an http(s):// base URL of an OpenAI-compatible server "
                     f"(e.g. http://localhost:8000/v1) nor local:PATH of a causal LM checkpoint.")
