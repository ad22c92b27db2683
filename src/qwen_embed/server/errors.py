"""HTTP errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

Statuses: 400 bad value, 401 auth, 404 unknown route or model, 405 wrong method, 413 too large,
422 wrong JSON types, 429 overloaded (with Retry-After), 503 not ready or shutting down. A 500 means
a bug: user input never causes one.
"""

from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException

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


class Overloaded(APIError):
    """The model's queue is full: 429 with Retry-After, answered before any work is done."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(429, message, code="queue_full", headers={"Retry-After": str(retry_after)})


class PayloadTooLarge(HTTPException):
    """Raised while reading a body that grows past the limit (an HTTPException, so FastAPI re-raises it)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over the {limit}-byte limit; send fewer or shorter inputs.")


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
