"""What can go wrong with an upstream, sorted by whether the request may have run there.

:class:`UpstreamUnavailable`: it cannot have run (try another upstream).  :class:`UpstreamFailure`:
it may have run (fail this request alone, never replay it).  :class:`UpstreamError`: the upstream
refused the request itself (relay the refusal).  Callers see :class:`UpstreamFailedError` and
:class:`UpstreamTimeoutError` for failures, whose messages name only the request id; the
upstream's URL and its own words go to the log.
"""

from __future__ import annotations

from ..errors import LLMError


class UpstreamError(LLMError):
    """An upstream refused the request (a 4xx): its status and OpenAI error are relayed.

    The request would fail the same way on every upstream, so it is not retried elsewhere.
    """

    def __init__(
        self, status: int, message: str, *, type: str | None = None, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message, param=param, code=code or "upstream_error")
        self.status = status
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


class UpstreamFailedError(LLMError):
    """An upstream failed while it may have been running the request (HTTP 502).

    The request is not replayed on another upstream (it may have run, or be running still), and
    the upstream stays in rotation: health checks decide that.  The message names the request id
    only; the log line with that id says which upstream failed and how.
    """

    status = 502
    type = "server_error"
    code = "upstream_failed"


class UpstreamTimeoutError(UpstreamFailedError):
    """An upstream's answer did not come within ``timeout``, or it answered 504 itself (HTTP 504)."""

    status = 504
    code = "upstream_timeout"


class UpstreamUnavailable(Exception):
    """The upstream could not take the request, which cannot have run there: nothing accepted the
    connection in time, or it answered 429, 503, 401 or 403.  Another upstream may take it.

    ``down`` (nothing listens there, or our ``api_key`` is refused) takes the upstream out of
    rotation until a health check passes; busy upstreams (429, 503) and slow connects stay in it.
    ``overloaded`` marks a 429.
    """

    def __init__(
        self, reason: str, *, down: bool = False, overloaded: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.down = down
        self.overloaded = overloaded
        self.retry_after = retry_after


class UpstreamFailure(Exception):
    """The upstream failed after it received the request: a 5xx other than 503, no answer within the
    timeout, a connection closed mid-answer, an answer that is not OpenAI's JSON, an error event.

    ``timeout`` marks a timeout (ours, or the upstream's own 504).
    """

    def __init__(self, reason: str, *, timeout: bool = False) -> None:
        super().__init__(reason)
        self.timeout = timeout
