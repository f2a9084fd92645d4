"""The access log's line of a request under the base path (``access_line`` writes it)::

    request_id=chatcmpl-3f2a... method=POST path=/ai/v1/chat/completions status=200 outcome=completed
    model=tiny stream=true prompt_tokens=12 cached_tokens=0 completion_tokens=30 ttft_ms=41.7
    duration_ms=388.2 client=127.0.0.1

``cached_tokens`` of the prompt tokens were served from the prefix cache.  ``ttft_ms`` is ``-`` for
requests that streamed no token.
"""

from __future__ import annotations

from typing import Any

from ... import access_line
from .exchange import Exchange


def access_fields(exchange: Exchange) -> dict[str, Any]:
    """What the access log line says about ``exchange``, in order."""
    return {
        "request_id": exchange.request_id,
        "method": exchange.method,
        "path": exchange.path,
        "status": exchange.status,
        "outcome": exchange.outcome,
        "model": exchange.model or None,
        "stream": exchange.stream,
        "prompt_tokens": exchange.prompt_tokens,
        "cached_tokens": exchange.cached_tokens,
        "completion_tokens": exchange.completion_tokens,
        "ttft_ms": access_line.milliseconds(exchange.ttft) if exchange.ttft is not None else None,
        "duration_ms": access_line.milliseconds(exchange.duration),
        "client": exchange.client[0] if exchange.client else None,
    }


def log_access(exchange: Exchange) -> None:
    """Write the access log line of a finished request."""
    if access_line.enabled():
        access_line.write(access_fields(exchange))
