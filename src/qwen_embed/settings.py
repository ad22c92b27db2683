"""Model-loading settings: one frozen type shared by every command, the server and the training config.

`ModelSettings` holds what loading a checkpoint takes (path or hub id, device, dtype, max length, token
budget of a forward pass, torch.compile, CPU threads). Commands declare its flags with one call,
`ModelSettings.add_arguments(parser, default_model)`, read them back with `ModelSettings.from_args(args)`
and load with `load_embedder()` / `load_reranker()`. `HELP` is the one table of their help texts (the
server's settings table and the training config reuse it). `model=None` means "not given": a command
may declare the model optional with no default (`index` and `search` then take the table's).

This module stays light (no torch at import), so `qwen-embed --help` stays fast and a process that only
checks settings (the `serve --workers` supervisor) never imports torch: the defaults (model ids, max
length, token budgets) and the checks of a max length and a dtype name live here; `embedder.py`,
`reranker.py`, `engine.py` and `weights.py` use and re-export them.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError, WeightsError, whole_number

if TYPE_CHECKING:
    from .config import ModelConfig
    from .embedder import Embedder
    from .reranker import Reranker

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_MAX_LENGTH = 8192
MIN_DIM = 32  # the smallest Matryoshka dimension (the models were trained down to it)


def min_dim(hidden_size: int) -> int:
    """The smallest Matryoshka dimension of a model: MIN_DIM, or its full width when that is smaller."""
    return min(MIN_DIM, hidden_size)


def dim_range(hidden_size: int) -> str:
    """The dimensions a model supports, for messages: '32..1024', or '16' for a model narrower than MIN_DIM."""
    low = min_dim(hidden_size)
    return f"{low}..{hidden_size}" if low < hidden_size else str(hidden_size)


def check_dim(dim: int | None, hidden_size: int, param: str = "dim") -> int:
    """Validate a Matryoshka dimension (32 .. hidden size); None means the full size (no torch needed).

    `param` is the caller's name for the argument (the server's `dimensions`); the error carries it."""
    if dim is None:
        return hidden_size
    d = whole_number(dim)  # numpy's integers too (a width taken from an array's shape)
    if d is None:
        raise InputError(f"{param} must be an integer, got {dim!r}", param=param)
    if not min_dim(hidden_size) <= d <= hidden_size:
        raise InputError(
            f"{param}={d} is out of range: this model supports {dim_range(hidden_size)}; "
            f"pass a value in that range or leave it out for the full {hidden_size}.", param=param
        )
    return d


DEFAULT_BATCH_TOKENS = {"cpu": 8192, "cuda": 65536}  # token budget of one forward pass by device type
OTHER_BATCH_TOKENS = 16384  # that of any other device type
# dtype names a user may give -> torch's name of the float type; INT8_NAMES ask for float32 weights with int8
# linear layers (CPU only, int8.py)
FLOAT_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                "float16": "float16", "fp16": "float16", "half": "float16"}
INT8_NAMES = ("int8", "qint8")

HELP = {
    "model": "hub id or local checkpoint folder",
    "device": "cpu, cuda or cuda:N (default: cuda when available)",
    "dtype": "float32, bfloat16, float16, or int8 (cpu only: int8 linear layers, faster, approximate) "
             "(default: bf16 on cuda, fp32 on cpu)",
    "max_length": f"tokens per input, end token included (default {DEFAULT_MAX_LENGTH}, or the model's limit "
                  f"where lower)",
    "batch_tokens": "token budget of one forward pass",
    "compile": "torch.compile the layers on CUDA (default: on with CUDA)",
    "deterministic": "batch-invariant kernels: bitwise the same vector (and score) for a text whatever else is in "
                     "its batch (slower; see docs/deterministic.md)",
    "threads": "torch CPU threads per process (default: the cores this process may use, divided among the worker "
               "processes or models that run at once)",
}


def check_max_length(max_length: int | None, config: ModelConfig, minimum: int = 2) -> int:
    """`max_length` checked against the model's limit; None: DEFAULT_MAX_LENGTH, or the limit where lower."""
    if max_length is None:
        return min(DEFAULT_MAX_LENGTH, config.max_position_embeddings)
    n = whole_number(max_length)
    if n is None:
        raise InputError(f"max_length must be an integer, got {max_length!r}; pass e.g. max_length=512.",
                         param="max_length")
    limit = config.max_position_embeddings
    if not minimum <= n <= limit:
        raise InputError(f"max_length={n} is out of range: use {minimum}..{limit} (the model's limit).",
                         param="max_length")
    return n


def device_type(device: str) -> str:
    """The type of a device as torch spells it ("cuda:1" -> "cuda", "cpu" -> "cpu"), without torch."""
    return device.split(":")[0]


def default_batch_tokens(device_type: str) -> int:
    """The token budget of one forward pass on a device type ("cpu", "cuda", ...)."""
    return DEFAULT_BATCH_TOKENS.get(device_type, OTHER_BATCH_TOKENS)


def check_batch_tokens(batch_tokens: int | None, device_type: str) -> int:
    """The token budget of one forward pass: a positive integer (numpy's too), or None for the device's default."""
    if batch_tokens is None:
        return default_batch_tokens(device_type)
    n = whole_number(batch_tokens, 1)
    if n is None:
        raise InputError(f"batch_tokens={batch_tokens!r} must be a positive integer (tokens per forward pass); pass "
                         f"e.g. batch_tokens={default_batch_tokens(device_type)} (the {device_type} default) or "
                         f"None.", param="batch_tokens")
    return n


def float_dtype_name(dtype: str) -> str:
    """torch's name of a float dtype a user gave ("bf16", "torch.float16" -> "bfloat16", "float16");
    WeightsError for any other."""
    try:
        return FLOAT_DTYPES[str(dtype).lower().removeprefix("torch.")]
    except KeyError:
        raise WeightsError(f"dtype {dtype!r} is not supported; use float32, bfloat16, float16 or int8 (cpu).") from None


def is_int8(dtype: object) -> bool:
    """Whether a user's dtype asks for the int8 path (int8.py)."""
    return isinstance(dtype, str) and dtype.lower() in INT8_NAMES


def check_int8_device(device: object) -> None:
    """int8 runs on the CPU only; say so before any weights are read (`device`: "cuda:0" or a torch.device)."""
    if device_type(str(device)) != "cpu":
        raise InputError(f"dtype int8 runs on the CPU only, not on {device}; use device='cpu' with dtype='int8', "
                         "or dtype='bfloat16' on CUDA.")


def weights_dtype_name(dtype: str | None, device: str) -> str:
    """The dtype the weights are held in on `device` ("cpu", "cuda:1") with the user's `dtype` setting:
    None -> "bfloat16" on CUDA, "float32" elsewhere; int8 (CPU only) -> "float32" (int8 linear layers over
    float32 weights); a float name -> torch's name for it. Errors as loading would give them."""
    if dtype is None:
        return "bfloat16" if device_type(device) == "cuda" else "float32"
    if is_int8(dtype):
        check_int8_device(device)
        return "float32"
    return float_dtype_name(dtype)


@dataclass(frozen=True)
class ModelSettings:
    """How to load one model. None means "not given": the loader's default (or, for `model`, the caller's)."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH, or the model's limit where lower
    batch_tokens: int | None = None
    compile: bool | None = None
    threads: int | None = None
    deterministic: bool = False

    # -- command-line flags ------------------------------------------------------------------------
    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser, default_model: str | None, *, flag: str = "--model",
                      required: bool | None = None, model_help: str | None = None) -> None:
        """Declare `flag` (the model) and --device/--dtype/--max-length/--batch-tokens on `parser`.

        default_model: the model's default; None with `required=False` declares it optional with no default.
        required: whether the model must be given (default: when there is no default).
        """
        parser.add_argument(flag, default=default_model, required=default_model is None if required is None
                            else required, help=model_help or f"{HELP['model']} (default: {default_model})")
        parser.add_argument("--device", default=None, help=HELP["device"])
        parser.add_argument("--dtype", default=None, help=HELP["dtype"])
        parser.add_argument("--max-length", type=int, default=None, help=HELP["max_length"])
        parser.add_argument("--batch-tokens", type=int, default=None, help=HELP["batch_tokens"])
        parser.add_argument("--threads", type=int, default=None, help=HELP["threads"])
        parser.add_argument("--deterministic", action="store_true", help=HELP["deterministic"])

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, flag: str = "--model") -> ModelSettings:
        """The settings parsed by `add_arguments` (with the same `flag`); flags a command lacks stay None."""
        values = vars(args)
        return cls(model=values[flag.lstrip("-").replace("-", "_")], device=values.get("device"),
                   dtype=values.get("dtype"), max_length=values.get("max_length"),
                   batch_tokens=values.get("batch_tokens"), compile=values.get("compile"),
                   threads=values.get("threads"), deterministic=bool(values.get("deterministic")))

    # -- loading -----------------------------------------------------------------------------------
    def with_model(self, model: str | None) -> ModelSettings:
        """The same settings for another model (e.g. the reranker beside an embedder)."""
        return dataclasses.replace(self, model=model)

    def with_device(self, device: str | None) -> ModelSettings:
        """The same settings on another device (one worker per device)."""
        return dataclasses.replace(self, device=device)

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `Embedder.from_pretrained` / `Reranker.from_pretrained` (all but the model)."""
        return {"device": self.device, "dtype": self.dtype, "max_length": self.max_length,
                "batch_tokens": self.batch_tokens, "compile": self.compile, "threads": self.threads,
                "deterministic": self.deterministic}

    def _model(self) -> str:
        if self.model is None:
            raise InputError("no model given; pass a hub id or local checkpoint folder (e.g. --model "
                             f"{DEFAULT_EMBEDDING_MODEL}).")
        return self.model

    def _apply_threads(self) -> None:
        """Check the thread count early (the loaders apply it: `threads.use_threads`)."""
        if self.threads is not None:
            from .threads import check_threads

            check_threads(self.threads)

    def load_embedder(self, **extra: Any) -> Embedder:
        """Load the embedding model these settings describe (`extra`: other `Embedder.from_pretrained`
        arguments, e.g. adapter=, allow_causal_lm=)."""
        from .embedder import Embedder

        self._apply_threads()
        return Embedder.from_pretrained(self._model(), **self.loader_kwargs(), **extra)

    def load_reranker(self, template: str = "card", *, share_prefix: bool | None = None) -> Reranker:
        """Load the reranker these settings describe, with its prompt `template` (card or official-eval)."""
        from .reranker import Reranker

        self._apply_threads()
        return Reranker.from_pretrained(self._model(), template=template, share_prefix=share_prefix,
                                        **self.loader_kwargs())
