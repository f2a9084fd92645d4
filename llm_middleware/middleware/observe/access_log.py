"""One structured log line per request under the base path, on the ``llm_middleware.access`` logger.

The line is ``key=value`` pairs (values with spaces or quotes are JSON-quoted), which log
shippers parse without configuration::

    request_id=chatcmpl-3f2a... method=POST path=/ai/v1/chat/completions status=200 outcome=completed
    model=tiny stream=true prompt_tokens=12 cached_tokens=0 completion_tokens=30 ttft_ms=41.7
    duration_ms=388.2 client=127.0.0.1

``cached_tokens`` of the prompt tokens were served from the prefix cache.  ``ttft_ms`` is ``-`` for
requests that streamed no token.  Each pair is also attached to the record as ``record.access`` (a
dict), for JSON formatters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from .exchange import Exchange

logger = logging.getLogger("llm_middleware.access")


def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


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
        "ttft_ms": round(exchange.ttft * 1000, 1) if exchange.ttft is not None else None,
        "duration_ms": round(exchange.duration * 1000, 1),
        "client": exchange.client[0] if exchange.client else None,
    }


def log_access(exchange: Exchange) -> None:
    """Write the access log line of a finished request."""
    if not logger.isEnabledFor(logging.INFO):
        return
    fields = access_fields(exchange)
    logger.info(" ".join(f"{key}={_value(value)}" for key, value in fields.items()), extra={"access": fields})
