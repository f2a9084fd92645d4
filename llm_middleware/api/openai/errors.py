"""OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``, as a response or a stream event."""

from __future__ import annotations

from collections.abc import Iterable

from msgspec import Struct

from ...errors import LLMError
from ..core.errors import client_error, error_headers
from ..core.http import Response
from ..core.responses import json_response
from ..core.sse import event


class ErrorDetail(Struct, kw_only=True):
    """What went wrong, in OpenAI's words."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(Struct, kw_only=True):
    """Every error response, and the ``data:`` event of a failure mid-stream."""

    error: ErrorDetail


def error_body(exc: LLMError) -> ErrorBody:
    """The ``{"error": {...}}`` body of ``exc``."""
    return ErrorBody(error=ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code))


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """An OpenAI-shaped JSON error response."""
    body = ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code))
    return json_response(body, status=status, headers=headers)


def exception_response(exc: BaseException) -> Response:
    """The response for any failure; unexpected ones are logged and become a bare 500."""
    error = client_error(exc)
    return json_response(error_body(error), status=error.status, headers=error_headers(error))


def error_event(exc: BaseException) -> bytes:
    """The event that reports a failure after the stream started (no status code left to send)."""
    return event(error_body(client_error(exc, streaming=True)))
