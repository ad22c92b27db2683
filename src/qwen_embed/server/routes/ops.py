"""Operations routes: GET/HEAD /health (readiness) and GET /metrics (Prometheus; behind the API key
when one is set, unless listed in --public-paths)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from .. import schemas as S
from ..errors import error_response
from ..state import State


def router(state: State) -> APIRouter:
    """Health and metrics over `state`."""
    r = APIRouter(tags=["ops"])

    @r.get("/health", responses={503: {"model": S.ErrorResponse}})
    async def health() -> Response:
        """200 once a warm-up forward pass has succeeded, 503 before."""  # and while draining
        down = state.down()
        if state.ready and not state.draining and down is None:
            return JSONResponse({"status": "ok"})
        why = "shutting down" if state.draining else down or state.warmup_error or "warming up"
        return error_response(503, f"not ready: {why}", {"Retry-After": "1"}, code="not_ready")

    r.add_api_route("/health", health, methods=["HEAD"], operation_id="health_head",
                    responses={503: {"model": S.ErrorResponse}})  # load balancers probe with HEAD

    @r.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return r
