"""HTTP errors in the OpenAI shape, `{"error": {"message", "type", "param", "code"}}`, and the one table
that maps error types to status codes.

Statuses: 400 bad value, 401 auth, 404 unknown route or model, 405 wrong method, 413 too large,
422 wrong JSON types, 429 overloaded (with Retry-After), 503 not ready or shutting down. A 500 means
a bug: user input never causes one.

Route code raises `APIError` (status chosen where the rule lives); the core and the batcher raise
their own types (`InputError`, `QueueFull`, `ShuttingDown`, ...), which `STATUS` maps to a status
without touching their message. `param` comes from the error itself (core errors carry the argument
they concern).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import ConfigError, InputError, ModelOutputError, QwenEmbedError, TokenizerError
from .batcher import BatcherFailed, QueueFull, ShuttingDown
from .model_process import ModelError, ModelProcessDied

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}

# error type -> (status, code); the most specific class in an error's MRO wins
STATUS: dict[type[BaseException], tuple[int, str | None]] = {
    QueueFull: (429, "queue_full"),
    ShuttingDown: (503, "shutting_down"),
    BatcherFailed: (503, "batcher_failed"),
    ModelProcessDied: (503, "model_unavailable"),
    ModelError: (500, "model_error"),
    ModelOutputError: (500, "model_output_not_finite"),
    InputError: (400, None),
    TokenizerError: (400, None),
    ConfigError: (400, None),
    QwenEmbedError: (400, None),
}


class APIError(Exception):
    """An error answered to the client with `status` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}


MAX_DEPTH = 8  # the deepest accepted body is 4 levels (object > list > list > id)


def nested_too_deeply() -> APIError:
    """A body so deeply nested that the JSON parser gave up (RecursionError), whatever its size or parser."""
    return APIError(400, f"the body is nested too deeply; the deepest accepted body has {MAX_DEPTH // 2} levels.")


class PayloadTooLarge(HTTPException):
    """Raised while reading a body that grows past the limit (an HTTPException, so FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit}-byte limit; send fewer or shorter inputs.")


def status_of(exc: BaseException) -> tuple[int, str | None] | None:
    """(status, code) of a library or batcher error by the table, None for anything else (a bug)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def as_api_error(exc: BaseException, rename: dict[str, str] | None = None) -> APIError | None:
    """A library / batcher error as the APIError the client gets; `rename` maps a core parameter name to
    the route's field name (dim -> dimensions) for the `param` of the body, never for the message."""
    mapped = status_of(exc)
    if mapped is None:
        return None
    status, code = mapped
    param = getattr(exc, "param", None)
    if param is not None and rename:
        param = rename.get(param, param)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, ModelProcessDied):
        headers["Retry-After"] = "1"
    if isinstance(exc, ShuttingDown):
        headers["Connection"] = "close"
    return APIError(status, str(exc), param=param, code=code, headers=headers)


def api_error_response(err: APIError) -> JSONResponse:
    """The response an APIError is answered with."""
    return error_response(err.status, err.message, err.headers, err.param, err.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, headers: dict[str, str] | None = None,
                   param: str | None = None, code: str | None = None) -> JSONResponse:
    """A JSON error response in the OpenAI shape."""
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)
