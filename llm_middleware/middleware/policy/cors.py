"""Cross-origin access to the API for browser clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ...api.core.http import Response
from ...errors import LLMError

_ALLOW_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
# Headers an OpenAI client sends; used when a preflight does not list the ones it wants.
_DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project"
_MAX_AGE = "600"


class OriginNotAllowedError(LLMError):
    """A preflight from an origin that may not call the API (HTTP 403)."""

    status = 403
    type = "invalid_request_error"
    code = "origin_not_allowed"


class CORSPolicy:
    """Which origins may call the API from a browser, and the headers that say so.

    ``allowed_origins`` lists exact origins (``"https://example.com"``) or is ``["*"]``.
    """

    def __init__(self, allowed_origins: Iterable[str]) -> None:
        origins = [origin.rstrip("/") for origin in allowed_origins]
        self.allow_all = "*" in origins
        self.origins = frozenset(origins)

    def allows(self, origin: str) -> bool:
        """True when ``origin`` may read the API's responses."""
        return self.allow_all or origin in self.origins

    @staticmethod
    def is_preflight(method: str, headers: Mapping[str, str]) -> bool:
        """True for a browser's CORS preflight (OPTIONS with Origin and the requested method)."""
        return method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers

    def preflight(self, headers: Mapping[str, str]) -> Response:
        """The answer to a preflight: 204 with the allowed methods and headers; raises
        :class:`OriginNotAllowedError` for an origin not allowed."""
        origin = headers["origin"]
        if not self.allows(origin):
            raise OriginNotAllowedError(f"Origin {origin!r} is not allowed to call this API.")
        return Response(
            204,
            [
                *self._origin_headers(origin),
                ("Access-Control-Allow-Methods", _ALLOW_METHODS),
                (
                    "Access-Control-Allow-Headers",
                    headers.get("access-control-request-headers") or _DEFAULT_ALLOW_HEADERS,
                ),
                ("Access-Control-Max-Age", _MAX_AGE),
            ],
        )

    def apply(self, headers: Mapping[str, str], response: Response) -> Response:
        """Add ``Access-Control-Allow-Origin`` to ``response`` when the request's Origin is allowed."""
        origin = headers.get("origin")
        if origin is not None and self.allows(origin):
            response.headers.extend(self._origin_headers(origin))
        return response

    def _origin_headers(self, origin: str) -> list[tuple[str, str]]:
        if self.allow_all:
            return [("Access-Control-Allow-Origin", "*")]
        # The answer depends on the Origin header: caches must key on it.
        return [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
