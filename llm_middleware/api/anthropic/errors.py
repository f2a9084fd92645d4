"""Anthropic's error shape, ``{"type": "error", "error": {"type", "message"}}``, as a response or a stream event.

The status stays the one every route answers with; ``error.type`` is the name Anthropic gives it,
so the official SDK raises the class it raises for Anthropic's own answers (``BadRequestError``,
``AuthenticationError``, ``NotFoundError``, ``RateLimitError``, ...).
"""

from __future__ import annotations

from ..core.errors import client_error, error_headers
from ..core.http import Response
from ..core.responses import json_response
from ..core.sse import Framing, named_event
from .types import ErrorObject, ErrorResponse

_TYPES = {
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an answer with ``status``."""
    if status in _TYPES:
        return _TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def _body(exc: BaseException, *, streaming: bool) -> tuple[int, ErrorResponse, list[tuple[str, str]]]:
    error = client_error(exc, streaming=streaming)
    body = ErrorResponse(error=ErrorObject(type=error_type(error.status), message=error.message))
    return error.status, body, error_headers(error)


def exception_response(exc: BaseException) -> Response:
    """The response for any failure, in Anthropic's shape; unexpected ones are logged and become a bare 500."""
    status, body, headers = _body(exc, streaming=False)
    return json_response(body, status=status, headers=headers)


def error_event(exc: BaseException) -> bytes:
    """The ``event: error`` that ends a stream failing after it started (no status code left to send)."""
    _, body, _ = _body(exc, streaming=True)
    return named_event(body)


#: Anthropic's streams end after ``message_stop`` (or an ``error`` event) with nothing more.
FRAMING = Framing(last=b"", error_event=error_event)
