"""Server settings: one frozen dataclass, filled from flags, then QWEN_EMBED_* variables, then defaults.

Every field has a flag (`--max-queue`) and an environment variable (`QWEN_EMBED_MAX_QUEUE`); a flag
given on the command line wins over the variable, the variable over the default. `SETTINGS` lists
each one with its type, default and help, so that the CLI, the docs and the tests read one table.
Environment variables are read when the settings are resolved (`resolve`), never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Literal

from ..errors import InputError
from ..settings import DEFAULT_MAX_LENGTH, HELP, ModelSettings

ENV_PREFIX = "QWEN_EMBED_"


@dataclass(frozen=True)
class ServerSettings:
    """Everything `qwen-embed serve` can be told. None means "derive it" (see the help of each)."""

    embedding_model: str | None = None
    reranker_model: str | None = None
    embedding_name: str | None = None
    reranker_name: str | None = None
    device: str | None = None
    devices: str | None = None
    workers: int = 1
    dtype: str | None = None
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH, or the model's limit where lower
    reranker_template: str = "card"
    ranges: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    public_paths: tuple[str, ...] = ("/health",)
    cors_origins: tuple[str, ...] = ()
    max_batch_tokens: int | None = None
    max_batch_requests: int = 256
    max_wait_ms: float = 5.0
    max_queue: int = 512
    max_queue_tokens: int = 1_048_576
    max_inputs: int = 2048
    max_payload_bytes: int = 16 * 1024 * 1024
    max_request_tokens: int = 262_144
    max_connections: int = 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    tokenization_workers: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    graceful_timeout: int = 30
    keep_alive: int = 75
    inflight_batches: int = 1
    warmup: bool = True
    compile: bool | None = None
    threads: int | None = None
    deterministic: bool = False
    log_level: str = "info"

    def model_settings(self, kind: Literal["embedding", "reranker"]) -> ModelSettings:
        """How to load the embedding model or the reranker: the shared `qwen_embed.settings.ModelSettings`
        (device, dtype, max length, compile are common to both; --max-batch-tokens is the forward budget)."""
        return ModelSettings(model=self.embedding_model if kind == "embedding" else self.reranker_model,
                             device=self.device, dtype=self.dtype, max_length=self.max_length,
                             batch_tokens=self.max_batch_tokens, compile=self.compile)

    def with_overrides(self, **kw: Any) -> ServerSettings:
        return replace(self, **kw)

    def check(self) -> ServerSettings:
        """Validate ranges; errors say the value, the limit and the fix."""
        if not self.embedding_model and not self.reranker_model:
            raise InputError("nothing to serve: pass --embedding-model and/or --reranker-model "
                             "(or QWEN_EMBED_EMBEDDING_MODEL / QWEN_EMBED_RERANKER_MODEL).")
        positive = ["max_batch_requests", "max_queue", "max_queue_tokens", "max_inputs", "max_payload_bytes",
                    "tokenization_workers", "max_length", "max_request_tokens", "max_connections"]
        for name in positive:
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(f"{name.replace('_', '-')}={v} must be at least 1.")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads={self.threads} must be at least 1.")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise InputError(f"max-batch-tokens={self.max_batch_tokens} must be at least 1.")
        if not 0 <= self.max_wait_ms <= 10_000:
            raise InputError(f"max-wait-ms={self.max_wait_ms} is out of range: use 0..10000 (milliseconds).")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port={self.port} is out of range: use 0..65535.")
        if not 1 <= self.workers <= 64:
            raise InputError(f"workers={self.workers} is out of range: use 1..64 HTTP worker processes.")
        if not 1 <= self.inflight_batches <= 8:
            raise InputError(f"inflight-batches={self.inflight_batches} is out of range: use 1..8.")
        if self.keep_alive < 1:
            raise InputError(f"keep-alive={self.keep_alive} must be at least 1 second.")
        if self.graceful_timeout < 1:
            raise InputError(f"graceful-timeout={self.graceful_timeout} must be at least 1 second.")
        for name in ("header_timeout", "body_timeout"):
            v = getattr(self, name)
            if not 0 < v <= 3600:
                raise InputError(f"{name.replace('_', '-')}={v} is out of range: use more than 0, up to 3600 seconds.")
        if self.devices is not None and self.device is not None:
            raise InputError(f"device={self.device} and devices={self.devices} both given; --devices places the "
                             "model processes, --device the in-process model: pass one.")
        if self.ranges is not None and not os.path.isfile(self.ranges):
            raise InputError(f"ranges={self.ranges} is not a file; write one with `qwen-embed embed ... --precision "
                             "int8 --save-ranges FILE` (calibration ranges of the served model's vectors).")
        if self.api_key is not None and not self.api_key:
            raise InputError("api-key is empty; give a non-empty key or leave it unset to disable auth.")
        return self


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true/false)")


def _paths(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@dataclass(frozen=True)
class Setting:
    """One row of the settings table: field name, parser of its text form, help."""

    name: str
    parse: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: list[Setting] = [
    Setting("embedding_model", str, "embedding checkpoint: hub id or local folder"),
    Setting("reranker_model", str, "reranker checkpoint: hub id or local folder"),
    Setting("embedding_name", str, "name clients pass as `model` for embeddings (default: --embedding-model)"),
    Setting("reranker_name", str, "name clients pass as `model` for rerank (default: --reranker-model)"),
    Setting("device", str, HELP["device"]),
    Setting("devices", str, "run each model in a process of its own per device, fed by this HTTP process: "
            "cuda:0,cuda:1, cpu,cpu, or auto (every CUDA device, else one cpu); default: the model in this "
            "process (--device)"),
    Setting("workers", int, "HTTP worker processes sharing the port (parsing, auth, tokenization, responses); "
            "above 1, the model(s) run in model processes (one per device of --devices, or of --device; default "
            "auto) that batch the requests of all workers; 1: one process, as without this flag"),
    Setting("dtype", str, HELP["dtype"]),
    Setting("max_length", int, f"tokens per input, end token included; longer inputs are truncated (default "
            f"{DEFAULT_MAX_LENGTH}, or the model's limit where lower)"),
    Setting("reranker_template", str, "reranker prompt form: card or official-eval"),
    Setting("ranges", str, "int8 / uint8 calibration ranges for /v2/embed's embedding_types (the JSON of `qwen-embed "
            "embed --save-ranges`, or a .npy of shape [2, dim]); without it int8 / uint8 requests are refused (400)"),
    Setting("host", str, "address to listen on"),
    Setting("port", int, "TCP port (0 picks a free one)"),
    Setting("api_key", str, "require `Authorization: Bearer KEY` (default: no auth)"),
    Setting("public_paths", _paths, "comma-separated paths served without the API key"),
    Setting("cors_origins", _paths, "comma-separated origins a browser may call from (CORS; * for any; "
            "default: none)"),
    Setting("max_batch_tokens", int, "token budget of one forward pass (default: 8192 on cpu, 65536 on cuda)"),
    Setting("max_batch_requests", int, "requests merged into one forward pass at most"),
    Setting("max_wait_ms", float, "how long the first request of a batch waits for others to join (ms)"),
    Setting("inflight_batches", int, "batches handed to the model worker at once (2 keeps the GPU busy for large "
            "requests; 1 merges small requests into larger batches)"),
    Setting("max_queue", int, "requests queued or running per model; beyond it answer 429"),
    Setting("max_queue_tokens", int, "tokens queued or running per model; beyond it answer 429"),
    Setting("max_inputs", int, "inputs (or rerank documents) per request; beyond it answer 413"),
    Setting("max_payload_bytes", int, "request body size limit in bytes; beyond it answer 413"),
    Setting("max_request_tokens", int, "tokens per request after truncation (token ids sent count too); "
            "beyond it answer 413"),
    Setting("max_connections", int, "open connections at most; a connection beyond it is answered 503 and "
            "closed at once (keeps the server under its file-descriptor limit)"),
    Setting("header_timeout", float, "seconds a client has to send a request's headers; then the connection "
            "is closed"),
    Setting("body_timeout", float, "seconds a request body may stall between two reads (and its grace before "
            "it must keep up 500 bytes/s); then the connection is closed"),
    Setting("tokenization_workers", int, "threads that tokenize and format responses (default: min(4, cores))"),
    Setting("graceful_timeout", int, "seconds to finish accepted requests after SIGTERM"),
    Setting("keep_alive", int, "seconds an idle keep-alive connection stays open (clients reuse pooled ones)"),
    Setting("warmup", _bool, "run one forward pass per model before /health reports ready"),
    Setting("compile", _bool, "torch.compile the layers on CUDA (default: on with CUDA; compiles at warm-up)"),
    Setting("threads", int, "torch CPU threads (default: the cores available, divided among the models served)"),
    Setting("deterministic", _bool, "batch-invariant kernels: a text's vector (a pair's score) is bitwise the same "
            "whatever requests it is batched with (slower; see docs/deterministic.md)"),
    Setting("log_level", str, "uvicorn log level: critical, error, warning, info, debug"),
]


def default_of(name: str) -> Any:
    """The built-in default of a setting (for help texts and docs)."""
    f = next(f for f in fields(ServerSettings) if f.name == name)
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def resolve(flags: Mapping[str, Any], env: Mapping[str, str] | None = None) -> ServerSettings:
    """Flags (None = not given) over QWEN_EMBED_* variables over defaults, then validated."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for s in SETTINGS:
        given = flags.get(s.name)
        if given is not None:
            values[s.name] = given
        elif s.env in env and env[s.env] != "":
            try:
                values[s.name] = s.parse(env[s.env])
            except ValueError as e:
                raise InputError(f"{s.env}={env[s.env]!r} is not valid ({e}); unset it or fix its value.") from None
    return ServerSettings(**values).check()
