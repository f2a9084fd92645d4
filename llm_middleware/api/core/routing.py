"""Routes: what each (method, path) runs, and what the API docs say about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ...errors import LLMError
from .errors import HTTPError
from .http import Request, Response

#: A handler takes the request and its id (already decided by the dispatcher).
Handler = Callable[[Request, str], Awaitable[Response]]


@dataclass(slots=True, frozen=True)
class Route:
    """One endpoint.  ``path`` ending in ``/`` (with ``prefix=True``) matches every path below it.

    ``id_prefix`` starts generated request ids (``chatcmpl-``), which become the response's ``id``.
    ``request_type``/``response_type``/``stream_type`` are the body Structs, for the OpenAPI document;
    ``error_type`` is the error body where it is not the API's usual one, and ``stream_format`` says
    how the stream's events are framed.
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
    error_type: type | None = None
    stream_format: str = "`data: <chunk>` events, then `data: [DONE]`"


class MethodNotAllowedError(HTTPError):
    """The path is served, but not for this method (HTTP 405, with ``Allow``)."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, method: str, path: str, allowed: Sequence[str]) -> None:
        methods = ", ".join(allowed)
        super().__init__(f"Method {method} is not allowed for {path}; use {methods}.", headers=[("allow", methods)])


class NotFoundError(LLMError):
    """No route serves the path (HTTP 404)."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Router:
    """Finds the route of a request: exact paths by lookup, then the prefix routes in order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self._exact: dict[tuple[str, str], Route] = {(r.method, r.path): r for r in routes if not r.prefix}
        self._prefixes = [r for r in routes if r.prefix]
        self._methods: dict[str, list[str]] = {}
        for r in routes:
            self._methods.setdefault(r.path, []).append(r.method)

    def find(self, method: str, path: str) -> Route:
        """The route for ``method path``; raises :class:`NotFoundError` or :class:`MethodNotAllowedError`."""
        route = self._exact.get((method, path))
        if route is not None:
            return route
        methods = self._methods.get(path)
        for candidate in self._prefixes:
            if path.startswith(candidate.path):  # with an empty parameter too: the handler says what is missing
                if candidate.method == method:
                    return candidate
                methods = self._methods[candidate.path]
        if methods:
            raise MethodNotAllowedError(method, path, methods)
        raise NotFoundError(f"Unknown path {path}.")

    def template(self, path: str) -> str | None:
        """The path of the route serving ``path``, with parameters as placeholders
        (``/v1/models/{model}``); None for an unknown path.  A label of low cardinality for metrics."""
        if path in self._methods:
            return path
        for candidate in self._prefixes:
            if path.startswith(candidate.path):
                return candidate.path + "{" + (candidate.param_name or "id") + "}"
        return None
