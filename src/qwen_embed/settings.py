"""Model-loading settings: one frozen type shared by every command, the server and the training config.

`ModelSettings` holds what loading a checkpoint takes (path or hub id, device, dtype, max length, token
budget of a forward pass, torch.compile, CPU threads). Commands declare its flags with one call,
`ModelSettings.add_arguments(parser, default_model)`, read them back with `ModelSettings.from_args(args)`
and load with `load_embedder()` / `load_reranker()`. `HELP` is the one table of their help texts (the
server's settings table and the training config reuse it). `model=None` means "not given": a command
may declare the model optional with no default (`index` and `search` then take the table's).

This module stays light (no torch at import), so `qwen-embed --help` stays fast; the default model ids
live here and are re-exported by `embedder.py` and `reranker.py`, whose models they name.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .embedder import Embedder
    from .reranker import Reranker

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"
DEFAULT_MAX_LENGTH = 8192

HELP = {
    "model": "hub id or local checkpoint folder",
    "device": "cpu, cuda or cuda:N (default: cuda when available)",
    "dtype": "float32, bfloat16, float16, or int8 (cpu only: int8 linear layers, faster, approximate) "
             "(default: bf16 on cuda, fp32 on cpu)",
    "max_length": f"tokens per input, end token included (default {DEFAULT_MAX_LENGTH})",
    "batch_tokens": "token budget of one forward pass",
    "compile": "torch.compile the layers on CUDA (default: on with CUDA)",
    "deterministic": "batch-invariant kernels: bitwise the same vector (and score) for a text whatever else is in "
                     "its batch (slower; see docs/deterministic.md)",
    "threads": "torch CPU threads per process (default: the cores this process may use, divided among the worker "
               "processes or models that run at once)",
}


@dataclass(frozen=True)
class ModelSettings:
    """How to load one model. None means "not given": the loader's default (or, for `model`, the caller's)."""

    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    max_length: int = DEFAULT_MAX_LENGTH
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
        parser.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH, help=HELP["max_length"])
        parser.add_argument("--batch-tokens", type=int, default=None, help=HELP["batch_tokens"])
        parser.add_argument("--threads", type=int, default=None, help=HELP["threads"])
        parser.add_argument("--deterministic", action="store_true", help=HELP["deterministic"])

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, flag: str = "--model") -> ModelSettings:
        """The settings parsed by `add_arguments` (with the same `flag`); flags a command lacks stay None."""
        values = vars(args)
        return cls(model=values[flag.lstrip("-").replace("-", "_")], device=values.get("device"),
                   dtype=values.get("dtype"), max_length=values.get("max_length", DEFAULT_MAX_LENGTH),
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
