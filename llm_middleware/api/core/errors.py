"""Errors as every protocol answers them: which failures a client may see, and the HTTP headers that go with them.

The client's mistakes (bad JSON, a wrong field, an unknown model) are
:class:`~llm_middleware.errors.LLMError` subclasses that name the offending field in ``param``;
anything else is our own bug, logged here and answered with a bare 500 that says nothing about
internals.  Each protocol renders the result in its own error shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

from ...errors import LLMError
from .http import Response

logger = logging.getLogger("llm_middleware")

#: Renders any failure as a response in a protocol's error shape; the API hands one to the middleware.
ErrorRenderer = Callable[[BaseException], Response]


class HTTPError(LLMError):
    """An error whose answer carries HTTP headers of its own (``Allow``, ``WWW-Authenticate``)."""

    def __init__(
        self, message: str, *, headers: Iterable[tuple[str, str]] = (), param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.headers = list(headers)


class InternalError(LLMError):
    """Our own failure, as a client sees it: a generic 500."""

    status = 500
    type = "server_error"
    code = "internal_error"


def client_error(exc: BaseException, *, streaming: bool = False) -> LLMError:
    """``exc`` as a client may see it: an :class:`LLMError` as it is; anything else is logged and
    becomes an :class:`InternalError` whose message says nothing about it."""
    if isinstance(exc, LLMError):
        return exc
    if streaming:
        logger.exception("unexpected error while streaming an API response", exc_info=exc)
        return InternalError("The server had an error while generating the response.")
    logger.exception("unexpected error while handling an API request", exc_info=exc)
    return InternalError("The server had an error while processing your request.")


def retry_after_header(seconds: float | None) -> list[tuple[str, str]]:
    """``Retry-After`` in whole seconds (at least 1: zero would invite a busy loop)."""
    return [("retry-after", str(max(1, math.ceil(seconds if seconds is not None else 1))))]


def error_headers(exc: LLMError) -> list[tuple[str, str]]:
    """The headers of the answer to ``exc``: ``Retry-After`` where waiting helps, and its own."""
    headers = retry_after_header(exc.retry_after) if exc.status in (429, 503) else []
    if isinstance(exc, HTTPError):
        headers += exc.headers
    return headers
