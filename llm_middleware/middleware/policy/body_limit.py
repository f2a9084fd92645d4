"""The request body size limit, shared by the ASGI and WSGI readers."""

from __future__ import annotations

from ...api.core.errors import error_response
from ...api.core.http import Response


class BodyTooLargeError(Exception):
    """The request body is longer than the middleware's ``max_body_size``."""


def check_declared_length(content_length: str | None, limit: int) -> int | None:
    """The declared ``Content-Length`` as an int; raise at once when it exceeds ``limit``.

    Rejecting on the header spares reading a body we would throw away.
    """
    if content_length is None or not content_length.strip().isdigit():
        return None
    length = int(content_length)
    if length > limit:
        raise BodyTooLargeError
    return length


def body_too_large_response(limit: int) -> Response:
    """The OpenAI-shaped 413 answer for a body over ``limit`` bytes."""
    return error_response(
        413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large"
    )
