"""OpenAI error bodies, and the mapping from every failure to one.

The client's mistakes (bad JSON, a wrong field, an unknown model) become 4xx responses that
name the offending field in ``param``; only our own bugs become a 500, and its message
says nothing about internals.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

import msgspec

from ...errors import LLMError
from .http import Response
from .responses import json_response
from ..openai.schemas import ErrorBody, ErrorDetail

logger = logging.getLogger("llm_middleware")

# msgspec ends a validation message with " - at `$.messages[0].role`".
_PATH_SUFFIX = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
# ... or names a missing field of the top-level object: "Object missing required field `messages`".
_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")


def error_detail(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> ErrorBody:
    """The ``{"error": {...}}`` body, for responses and for mid-stream error events."""
    return ErrorBody(error=ErrorDetail(message=message, type=type, param=param, code=code))


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
    return json_response(error_detail(message, type=type, code=code, param=param), status=status, headers=headers)


def retry_after_header(seconds: float | None) -> list[tuple[str, str]]:
    """``Retry-After`` in whole seconds (at least 1: zero would invite a busy loop)."""
    return [("retry-after", str(max(1, math.ceil(seconds if seconds is not None else 1))))]


def llm_error_response(exc: LLMError) -> Response:
    """The response for an engine or API error, with ``Retry-After`` where waiting helps."""
    headers = retry_after_header(exc.retry_after) if exc.status in (429, 503) else []
    return error_response(exc.status, exc.message, type=exc.type, code=exc.code, param=exc.param, headers=headers)


def validation_error_param(exc: msgspec.ValidationError) -> str | None:
    """The request field a msgspec validation error is about, OpenAI-style (``messages[0].role``)."""
    text = str(exc)
    match = _PATH_SUFFIX.search(text)
    path = match.group("path") if match else ""
    missing = _MISSING_FIELD.search(text)
    if missing:
        field = missing.group("field")
        return f"{path}.{field}" if path else field
    return path or None


def validation_error_message(exc: msgspec.ValidationError) -> str:
    """msgspec's message with the path rewritten to the field name clients know."""
    text = _PATH_SUFFIX.sub("", str(exc))
    param = validation_error_param(exc)
    return f"Invalid value for '{param}': {text}" if param else f"Invalid request body: {text}"


def exception_response(exc: BaseException) -> Response:
    """Map any exception to a response; unexpected ones are logged and become a bare 500."""
    if isinstance(exc, LLMError):
        return llm_error_response(exc)
    logger.exception("unexpected error while handling an API request", exc_info=exc)
    return error_response(500, "The server had an error while processing your request.", type="server_error", code="internal_error")


def exception_body(exc: BaseException) -> ErrorBody:
    """The error body for a failure after a stream started (no status code left to send)."""
    if isinstance(exc, LLMError):
        return error_detail(exc.message, type=exc.type, code=exc.code, param=exc.param)
    logger.exception("unexpected error while streaming an API response", exc_info=exc)
    return error_detail("The server had an error while generating the response.", type="server_error", code="internal_error")
