"""The server-neutral request and response that API handlers take and return.

The middleware builds a :class:`Request` from an ASGI scope or a WSGI environ (body already
read, within the size limit) and sends the :class:`Response` back through whichever
protocol the request came in on.  Handlers therefore know nothing about ASGI or WSGI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class Request:
    """An HTTP request under the API's base path.

    ``path`` is relative to the base path (``/v1/models``); ``root_path`` is everything in
    front of it (the server's root path plus the base path), for building absolute URLs.
    Header names are lower-case.
    """

    method: str
    path: str
    root_path: str
    headers: dict[str, str]
    query_string: bytes = b""
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass(slots=True)
class Response:
    """A whole response (``body``) or a streamed one (``stream`` yields body chunks).

    Closing ``stream`` (``aclose()``) must release everything the response holds: the
    middleware closes it when the client goes away.
    """

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
