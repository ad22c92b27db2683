"""Exception handlers: every error leaves in the OpenAI shape (errors.py).

- `APIError` (raised by routes) carries its status.
- Library and batcher errors go through the one table `errors.STATUS`; their message is sent as it is.
- Request validation errors become one readable line: unknown fields (400, naming them and the
  accepted ones, as OpenAI's API answers), malformed JSON (400), wrong types (422, naming the field).
- Starlette HTTP errors (404, 405, body errors) get our wording; anything else is a bug (500, logged).
- A client that disconnects while sending its body (`ClientDisconnect`) is nobody to answer: 499, counted,
  never logged as an error (a traceback per dropped upload would let clients flood the log).
"""

from __future__ import annotations

import difflib
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import QwenEmbedError
from .errors import APIError, api_error_response, as_api_error, error_response, nested_too_deeply
from .schemas import EmbeddingRequest, RerankRequest, TokenizeRequest

log = logging.getLogger("qwen_embed.server")
# what a field of one of the input unions takes, told to a client who sent something else; found by the field's
# type, not its name (TEI /similarity's `inputs` is an object, Cohere's a list of objects, /tokenize's no token ids)
UNION_HELP: list[tuple[Any, str]] = [
    (EmbeddingRequest.model_fields["input"].annotation,
     "a string, a list of strings, a list of token ids, or a list of token-id lists"),
    (RerankRequest.model_fields["documents"].annotation, 'a list of strings or {"text": ...} objects'),
    (TokenizeRequest.model_fields["inputs"].annotation, "a string or a list of strings"),
]
RENAME = {"dim": "dimensions"}  # core parameter names -> request field names (for `param` only)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def accepted_fields(request: Request) -> list[str]:
    """The fields the matched route's body accepts (from its request model)."""
    return list(_body_fields(request))


def _body_fields(request: Request) -> dict[str, Any]:
    field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    return dict(getattr(model, "model_fields", {}))


def union_help(request: Request, name: str) -> str | None:
    """What the route's field `name` takes when it is one of the input unions (`UNION_HELP`), else None."""
    info = _body_fields(request).get(name)
    if info is None:
        return None
    return next((text for annotation, text in UNION_HELP if info.annotation == annotation), None)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return api_error_response(exc)


async def on_library_error(request: Request, exc: Exception) -> Response:
    err = as_api_error(exc, RENAME)
    if err is None:
        return await on_bug(request, exc)
    return await on_api_error(request, err)


def unknown_fields(request: Request, extra: list[dict[str, Any]]) -> str:
    """One line naming the unknown fields, a close match for each, and the fields the route accepts."""
    names = [str(e["loc"][1]) for e in extra]
    accepted = accepted_fields(request)
    hints = []
    for n in names:
        close = difflib.get_close_matches(n, accepted, n=1)
        if close:
            hints.append(f"did you mean `{close[0]}` for `{n}`?")
    listed = ", ".join(f"`{n}`" for n in names[:5])
    tail = f" ({' '.join(hints)})" if hints else ""
    return (f"unrecognized request field{'s' if len(names) > 1 else ''} {listed}{tail}; this route accepts: "
            f"{', '.join(accepted)}")


_FIELD_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")  # pydantic also puts union branch tags (`RerankDocument`) in locs


def _path(loc: tuple[Any, ...]) -> str:
    """`documents[0].title` for the loc ('body', 'documents', 0, 'RerankDocument', 'title')."""
    out = ""
    for p in loc[1:]:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _FIELD_NAME.match(str(p)):
            out += f".{p}" if out else str(p)
    return out


def unknown_nested_fields(errors: list[dict[str, Any]]) -> list[str]:
    """The paths of unknown fields inside the body's objects, when they are all that is wrong. The one other
    error allowed is a union's other alternative failing as a whole at an item whose object alternative
    holds the unknown field (a document object with an extra field is not a string either). [] otherwise."""
    extra = [e for e in errors if e.get("type") == "extra_forbidden"]
    if not extra:
        return []
    unions = {_item(tuple(e["loc"])) for e in extra
              if any(isinstance(p, str) and not _FIELD_NAME.match(p) for p in e["loc"][1:])}
    for e in errors:
        loc = tuple(e["loc"])
        if e not in extra and not (_item(loc) in unions and len(loc) == len(_item(loc)) + 1):
            return []
    return list(dict.fromkeys(_path(tuple(e["loc"])) for e in extra))


def _item(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The loc up to its last list index (the item a union alternative was tried on), else its field."""
    last = max((i for i, p in enumerate(loc) if isinstance(p, int)), default=1)
    return loc[: last + 1]


async def on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [dict(e) for e in exc.errors()]
    if any(e.get("type") == "json_invalid" for e in errors):
        detail = next(e for e in errors if e.get("type") == "json_invalid")
        ctx = detail.get("ctx") or {}
        return error_response(400, f"the body is not valid JSON ({ctx.get('error', 'parse error')}).")
    ctype = request.headers.get("content-type", "")
    if "json" not in ctype.lower():
        return error_response(400, f"send the body as JSON with `Content-Type: application/json` "
                              f"(got {ctype[:60]!r}).")
    # the body itself is not an object (an object field deeper in it that is not one is that field's error)
    if any(e.get("type") in ("model_attributes_type", "dict_type") and not e["loc"][1:] for e in errors):
        return error_response(422, "the body must be a JSON object.")
    extra = [e for e in errors if e.get("type") == "extra_forbidden" and len(e["loc"]) == 2]
    errors = [e for e in errors if e not in extra]
    if extra and not errors:  # only unknown fields: 400, as OpenAI's API answers them
        return error_response(400, unknown_fields(request, extra) + ".", param=str(extra[0]["loc"][1]),
                              code="unknown_field")
    nested = unknown_nested_fields(errors)
    if nested and not extra:  # an unknown field inside an object of the body: the same 400, naming its path
        listed = ", ".join(f"`{p}`" for p in nested[:5])
        return error_response(400, f"unrecognized request field{'s' if len(nested) > 1 else ''} {listed}; those "
                              f"objects take only the fields GET /docs lists.", param=nested[0].split("[")[0]
                              .split(".")[0], code="unknown_field")
    by_field: dict[str, list[dict[str, Any]]] = {}
    for e in errors:
        by_field.setdefault(_loc(tuple(e["loc"][:2])).split(".")[0], []).append(e)
    parts = []
    for name, errs in list(by_field.items())[:3]:
        loc = [p for p in errs[0]["loc"] if p != "body"]
        takes = union_help(request, name)
        if takes is not None and not any(e["type"] == "missing" and len(loc) == 1 for e in errs):
            idx = next((p for e in errs for p in e["loc"] if isinstance(p, int)), None)
            at = f" ({name}[{idx}] is not)" if idx is not None else ""
            parts.append(f"`{name}` must be {takes}{at}")
        elif all(e["type"] == "literal_error" for e in errs):  # a union of literals: one list of values
            expected = " or ".join(str((e.get("ctx") or {}).get("expected", "")) for e in errs)
            parts.append(f"`{name}`: Input should be {expected}")
        else:
            parts.append(f"`{_loc(tuple(errs[0]['loc']))}`: {errs[0]['msg']}")
    more = f" (and {len(by_field) - 3} more fields)" if len(by_field) > 3 else ""
    unknown = f"; {unknown_fields(request, extra)}" if extra else ""
    return error_response(422, "; ".join(parts) + more + unknown, param=next(iter(by_field), None))


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    status, detail = exc.status_code, str(exc.detail)
    if status == 404:
        detail = f"no route {request.method} {request.url.path}; see GET /docs for the routes."
    elif status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}."
    elif status == 400 and "parsing the body" in detail:
        if isinstance(exc.__cause__, RecursionError):  # a small body parsed by FastAPI, as a large one by us
            return api_error_response(nested_too_deeply())
        detail = "the body cannot be parsed: send UTF-8 JSON."
    return error_response(status, detail, dict(exc.headers or {}))


async def on_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)  # never delivered: the metrics count it as nginx's "client closed request"


async def on_bug(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, f"internal error ({type(exc).__name__}); this is a bug in qwen-embed.")


def install(app: FastAPI) -> None:
    """Register the handlers on `app`."""
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(QwenEmbedError, on_library_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_bug)
