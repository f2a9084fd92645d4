"""The request body size limit, shared by the ASGI and WSGI readers."""

from __future__ import annotations

from ...errors import LLMError


class BodyTooLargeError(LLMError):
    """The request body is longer than the middleware's ``max_body_size`` (HTTP 413)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body is larger than the limit of {limit} bytes.")


def check_declared_length(content_length: str | None, limit: int) -> int | None:
    """The declared ``Content-Length`` as an int; raise at once when it exceeds ``limit``.

    Rejecting on the header spares reading a body we would throw away.
    """
    if content_length is None or not content_length.strip().isdigit():
        return None
    length = int(content_length)
    if length > limit:
        raise BodyTooLargeError(limit)
    return length
