"""Routes: what each (method, path) runs, and what the API docs say about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .http import Request, Response

#: A handler takes the request and its id (already decided by the dispatcher).
Handler = Callable[[Request, str], Awaitable[Response]]


@dataclass(slots=True, frozen=True)
class Route:
    """One endpoint.  ``path`` ending in ``/`` (with ``prefix=True``) matches every path below it.

    ``id_prefix`` starts generated request ids (``chatcmpl-``), which become the response's ``id``.
    ``request_type``/``response_type``/``stream_type`` are the body Structs, for the OpenAPI document.
    """

    method: str
    path: str
    handler: Handler
    summary: str
    id_prefix: str = "req-"
    prefix: bool = False
    request_type: type | None = None
    response_type: type | None = None
    stream_type: type | None = None
    param_name: str | None = None
