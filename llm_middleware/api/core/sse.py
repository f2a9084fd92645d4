"""Server-sent events framing, byte for byte as OpenAI streams: ``data: <json>\\n\\n`` ... ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from .errors import exception_body
from .http import Response
from ..openai.schemas import encoder

DONE = b"data: [DONE]\n\n"

HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    # Reverse proxies (nginx) buffer responses unless told otherwise, which stalls the stream.
    ("x-accel-buffering", "no"),
)


def event(message: Any) -> bytes:
    """One ``data:`` event holding ``message`` (a Struct) encoded as JSON."""
    return b"data: " + encoder.encode(message) + b"\n\n"


def error_event(exc: BaseException) -> bytes:
    """The event that reports a failure after the stream started."""
    return event(exception_body(exc))


def streaming_response(events: AsyncIterator[bytes], headers: list[tuple[str, str]] | None = None) -> Response:
    """A 200 event-stream response around ``events`` (which must end with :data:`DONE`)."""
    return Response(status=200, headers=[*HEADERS, *(headers or ())], stream=events)
