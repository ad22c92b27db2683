"""One small exception hierarchy.

Every error a user can cause derives from `QwenEmbedError`; its message says the value, the limit and
the fix. The CLI prints such an error as one line and exits non-zero; anything else is a bug.
"""

from __future__ import annotations


class QwenEmbedError(Exception):
    """Base class of every error qwen-embed raises on purpose.

    `param` names the argument the error concerns (e.g. "dim"), so that an outer layer (the HTTP
    server, the CLI) can point at its own spelling of that argument without editing the message."""

    def __init__(self, *args: object, param: str | None = None) -> None:
        super().__init__(*args)
        self.param = param


class InputError(QwenEmbedError, ValueError):
    """Bad user input: empty list, empty or non-string text, dim out of range, unknown template..."""


class ConfigError(QwenEmbedError):
    """config.json missing, unreadable, or of an unsupported architecture."""


class WeightsError(QwenEmbedError):
    """Weights missing, truncated or not matching the model (missing / unexpected keys, shapes)."""


class ModelNotFoundError(QwenEmbedError):
    """A hub id that cannot be resolved (offline, unknown id) or a path that does not exist."""


class TokenizerError(QwenEmbedError):
    """tokenizer.json missing or lacking a token the model needs (end token, "yes"/"no")."""


class ModelOutputError(QwenEmbedError):
    """The model produced non-finite values (NaN / inf): broken weights or config, never a vector to keep."""
