"""``GET /health``: 200 once the engine is ready, 503 with the reason (and ``Retry-After``) otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.errors import retry_after_header
from ..core.http import Request, Response
from ..core.responses import json_response
from .errors import error_response
from .types.server import HealthStatus

if TYPE_CHECKING:
    from ...engine.engine import Engine

# How long a client should wait before asking again while models load.
LOADING_RETRY_AFTER = 5


async def health(engine: Engine, request: Request, request_id: str) -> Response:
    """Readiness of the engine, for load balancers and orchestrators."""
    state = engine.state
    if state == "ready":
        return json_response(HealthStatus())
    if state == "failed":
        # Why it failed (paths, exception text) is for the server's log and engine.error, not for clients.
        return error_response(
            503, f"A model failed to load; the server's log says why (request {request_id}).", type="server_error",
            code="engine_failed",
        )
    reasons = {
        "loading": "The model is still loading.",
        "stopped": "The engine is stopped.",
        "stopping": "The engine is shutting down.",
    }
    return error_response(
        503,
        reasons.get(state, f"The engine is {state}."),
        type="server_error",
        code=f"engine_{state}",
        headers=retry_after_header(LOADING_RETRY_AFTER),
    )
