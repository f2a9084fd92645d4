"""What can go wrong with an upstream: it refused the request, or it could not take it at all."""

from __future__ import annotations

from ..errors import LLMError


class UpstreamError(LLMError):
    """An upstream refused the request (a 4xx): its status and OpenAI error are relayed unchanged.

    The request would fail the same way on every upstream, so it is not retried elsewhere.
    """

    def __init__(
        self, status: int, message: str, *, type: str | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code or "upstream_error")
        self.status = status
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


class UpstreamUnavailable(Exception):
    """The upstream could not take the request (no connection, a timeout, a 5xx or a 429).

    Another upstream may: the request is tried there if nothing reached the caller yet.
    ``overloaded`` (a 429) leaves the upstream in rotation; everything else takes it out.
    """

    def __init__(self, message: str, *, overloaded: bool = False, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.overloaded = overloaded
        self.retry_after = retry_after
