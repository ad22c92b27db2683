"""What the route modules share: JSON encoding off the event loop, timing headers, and the route class
that parses and sizes large bodies off the event loop.

A large JSON body (a flat list of millions of token ids) costs seconds to parse and validate; on the
event loop that would stall every client, /health included. `body_route(state)` gives a route class
whose handler parses bodies of `OFF_LOOP_BYTES` or more in the CPU pool, refuses one nested deeper than
`MAX_DEPTH` (400) or holding more numbers than `--max-request-tokens` (413) there, and hands the parsed
value to FastAPI (which then only validates a value of bounded size).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Sequence, Sized
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from .. import schemas as S
from ..batcher import Timing
from ..errors import MAX_DEPTH, APIError, nested_too_deeply
from ..service import INLINE_VALUES, Service
from ..state import State

OFF_LOOP_BYTES = 64 * 1024
SLICE = 256 * 1024  # bytes scanned between two chances for the event loop to run
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 503)
}


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: ~20x the standard library on lists of floats, the same values; the vectors
    and scores are finite, pooling.py and reranker.py refuse NaN before they get here)."""
    return orjson.dumps(obj)


def timing_headers(t: Timing) -> dict[str, str]:
    """TEI-style stage times in milliseconds (x-total-time is added by the Guard to every response)."""
    ms = {"x-tokenization-time": t.tokenization, "x-queue-time": t.queue, "x-inference-time": t.inference}
    return {k: f"{v * 1000:.3f}" for k, v in ms.items()}


async def encoded(svc: Service, payload: Callable[[], Any], timing: Timing, work: int) -> Response:
    """The JSON response, encoded in the CPU pool, or on the event loop when `work` (the numbers or characters
    it holds) is at most service.INLINE_VALUES and the request is alone (`Service.lone`)."""
    body = await svc.off_loop(lambda: json_bytes(payload()), inline=work <= INLINE_VALUES and svc.lone())
    return Response(body, media_type="application/json", headers=timing_headers(timing))


def rerank_work(scores: Sized, texts: Sequence[str], returned: bool) -> int:
    """The size `encoded` weighs for a rerank answer: one number per score, plus the characters of the
    texts when the answer returns them."""
    return len(scores) + (sum(map(len, texts)) if returned else 0)


def count_sliced(body: bytes, byte: bytes, start: int, end: int) -> int:
    """`body.count(byte, start, end)`, SLICE bytes at a time (the event loop may run between two)."""
    return sum(body.count(byte, i, min(i + SLICE, end)) for i in range(start, end, SLICE))


def commas_in_strings(body: bytes, max_quotes: int) -> int | None:
    """The commas inside the JSON strings of `body` (a text's own characters, not separators of values);
    None when its strings do not pair up (not JSON) or hold more than `max_quotes` quotes. Escaped
    backslashes, then escaped quotes, are dropped first (JSON reads escapes left to right, so what is
    left of a run of backslashes escapes the quote after it); every quote left opens or closes a string."""
    plain = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    quotes = count_sliced(plain, b'"', 0, len(plain))
    if quotes % 2 or quotes > max_quotes:
        return None
    inside = 0
    at = plain.find(b'"')
    while at != -1:
        end = plain.find(b'"', at + 1)
        inside += count_sliced(plain, b",", at + 1, end)
        at = plain.find(b'"', end + 1)
    return inside


def precheck(body: bytes, max_numbers: int, max_inputs: int) -> None:
    """Refuse, before parsing, a body whose separators show more values than a request may hold.

    json.loads holds the GIL for its whole run (0.5 s for 4M ids), so parsing in a thread still
    stalls the event loop; counting commas and quotes slice by slice does not. Commas bound the number
    of values from above, unescaped quotes the number of strings (at most 4 a document: key and text).
    When the commas pass the bound, those inside strings (a CSV text's own) are taken off before refusing."""
    commas = quotes = 0
    for i in range(0, len(body), SLICE):
        part = body[i : i + SLICE + 1]  # one byte of overlap, so that a \" across slices is seen
        commas += part.count(b",", 0, SLICE)
        quotes += part.count(b'"', 0, SLICE) - part.count(b'\\"', 0, SLICE + 1)
    strings = 4 * max_inputs + 64
    if quotes <= 2 * strings and commas > max_numbers + strings and (
            (inside := commas_in_strings(body, 2 * strings)) is None or commas - inside > max_numbers + strings):
        raise APIError(413, f"the body holds more than {max_numbers} token ids, over the limit of {max_numbers} "
                       "tokens per request (--max-request-tokens); split it into smaller requests.",
                       code="too_many_tokens")


def parse_sized(body: bytes, max_numbers: int, max_inputs: int = 2048) -> Any:
    """json.loads, then refuse a value nested deeper than MAX_DEPTH or with more than `max_numbers`
    numbers (token ids); None when the body is not JSON (FastAPI then reports it as usual)."""
    precheck(body, max_numbers, max_inputs)
    try:
        value = json.loads(body)
    except RecursionError:
        raise nested_too_deeply() from None
    except ValueError:
        return None
    numbers = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"the body is nested {depth} levels deep, over the limit of {MAX_DEPTH}; send "
                           "inputs as a list of strings or of token-id lists.")
        if isinstance(item, list):
            for x in item:
                if isinstance(x, int | float) and not isinstance(x, bool):
                    numbers += 1
                elif isinstance(x, list | dict):
                    stack.append((x, depth + 1))
        elif isinstance(item, dict):
            stack.extend((x, depth + 1) for x in item.values() if isinstance(x, list | dict))
        if numbers > max_numbers:
            raise APIError(413, f"the body holds more than {max_numbers} token ids, over the limit of "
                           f"{max_numbers} tokens per request (--max-request-tokens); split it into smaller "
                           "requests.", code="too_many_tokens")
    return value


def body_route(state: State) -> type[APIRoute]:
    """A route class whose large bodies are parsed and sized in the CPU pool (see the module docstring)."""

    class OffLoopRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def parse_then_handle(request: Request) -> Response:
                body = await request.body()
                if len(body) >= OFF_LOOP_BYTES and "json" in request.headers.get("content-type", "").lower():
                    value = await asyncio.get_running_loop().run_in_executor(
                        state.pools.cpu, parse_sized, body, state.settings.max_request_tokens,
                        state.settings.max_inputs)
                    if value is not None:
                        request._json = value
                return await handler(request)

            return parse_then_handle

    return OffLoopRoute
