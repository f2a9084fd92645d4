"""HTTP to the upstreams: one pooled httpx client, JSON answers, server-sent event streams.

Every failure is sorted by whether the request may have run: :class:`UpstreamUnavailable` (it
cannot have: try another upstream), :class:`UpstreamFailure` (it may have: fail it alone) or
:class:`UpstreamError` (the request itself was refused: relay it).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgspec

from .errors import UpstreamError, UpstreamFailure, UpstreamUnavailable
from .upstream import Upstream

_JSON_HEADERS = {"content-type": "application/json", "accept": "application/json"}
_SSE_HEADERS = {"content-type": "application/json", "accept": "text/event-stream"}


class UpstreamClient:
    """Requests to upstream servers over one connection pool (kept-alive connections, HTTP/2 if asked).

    ``timeout`` bounds every wait for an upstream's next bytes (for a whole answer: the whole
    generation); ``connect_timeout`` bounds connecting, and every phase of a health check.
    """

    def __init__(self, *, api_key: str | None, timeout: float, connect_timeout: float, http2: bool) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._health_timeout = httpx.Timeout(connect_timeout)
        self._http = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            # Each upstream applies its own admission control (429): no cap on concurrent streams here.
            # Idle connections are dropped well before the servers' own idle timeout (5 s in uvicorn and
            # hypercorn): a request sent on a connection the server is closing fails with no answer, which
            # cannot be told apart from an upstream that died while generating, so it is not retried.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100, keepalive_expiry=2.0),
            http2=http2,
        )

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()

    async def models(self, upstream: Upstream) -> dict[str, dict[str, Any]]:
        """The models ``upstream`` serves now (``GET {url}/models``), by id: its health check.

        Cards that carry a ``state`` other than ``ready`` (our own servers while loading) are left out.
        """
        try:
            response = await self._http.get(f"{upstream.url}/models", timeout=self._health_timeout)
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(_describe(exc)) from exc
        if response.status_code != 200:
            raise UpstreamUnavailable(f"GET /models answered HTTP {response.status_code}")
        try:
            cards = msgspec.json.decode(response.content)["data"]
            return {card["id"]: card for card in cards if card.get("state", "ready") == "ready"}
        except (msgspec.DecodeError, KeyError, TypeError) as exc:
            raise UpstreamUnavailable("GET /models did not answer an OpenAI model list") from exc

    async def post(self, upstream: Upstream, route: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        """POST ``body`` to ``route`` and return the JSON answer."""
        headers = {**_JSON_HEADERS, "x-request-id": request_id}
        try:
            response = await self._http.post(
                upstream.endpoint(route), content=msgspec.json.encode(body), headers=headers
            )
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc
        if response.status_code != 200:
            raise _status_error(response)
        try:
            answer = msgspec.json.decode(response.content)
        except msgspec.DecodeError as exc:
            raise UpstreamFailure(f"POST /{route} answered something other than JSON") from exc
        if not isinstance(answer, dict):
            raise UpstreamFailure(f"POST /{route} answered JSON that is not an object")
        return answer

    async def stream(
        self, upstream: Upstream, route: str, body: dict[str, Any], request_id: str
    ) -> AsyncGenerator[dict[str, Any], None]:
        """POST ``body`` to ``route`` and yield each server-sent event's JSON as it arrives.

        Closing the generator closes the connection, which cancels the request upstream.  An error
        event (``{"error": {...}}``) ends the stream with :class:`UpstreamFailure`.
        """
        headers = {**_SSE_HEADERS, "x-request-id": request_id}
        try:
            async with self._http.stream(
                "POST", upstream.endpoint(route), content=msgspec.json.encode(body), headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise _status_error(response)
                async for data in _event_data(response):
                    try:
                        message = msgspec.json.decode(data)
                    except msgspec.DecodeError as exc:
                        raise UpstreamFailure(f"POST /{route} streamed an event that is not JSON") from exc
                    if isinstance(message, dict) and isinstance(message.get("error"), dict | str):
                        raise UpstreamFailure(f"POST /{route} streamed an error event: {data[:500]}")
                    yield message
        except httpx.TransportError as exc:
            raise _transport_error(exc) from exc


async def _event_data(response: httpx.Response) -> AsyncGenerator[str, None]:
    """The ``data`` of each server-sent event, up to ``[DONE]``; other fields carry nothing here."""
    lines: list[str] = []
    done = False
    async for line in response.aiter_lines():
        if done:
            continue  # read to the end, so the connection can be reused
        if line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])
        elif not line and lines:
            data, lines = "\n".join(lines), []
            if data == "[DONE]":
                done = True
            else:
                yield data
    if lines and lines != ["[DONE]"]:
        yield "\n".join(lines)


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _transport_error(exc: httpx.TransportError) -> UpstreamUnavailable | UpstreamFailure:
    """What a failed exchange means.  Only a connection that was never made proves the request did
    not run; once it was sent, a timeout or a broken connection may come after the work began."""
    if isinstance(exc, httpx.ConnectError):
        return UpstreamUnavailable(_describe(exc), down=True)  # nothing listens there
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return UpstreamUnavailable(_describe(exc))  # slow, not gone: health checks decide
    return UpstreamFailure(_describe(exc), timeout=isinstance(exc, httpx.TimeoutException))


def _status_error(response: httpx.Response) -> UpstreamError | UpstreamUnavailable | UpstreamFailure:
    """What a non-200 answer means.  429 and 503 say the upstream did not take the request; refused
    credentials (401, 403: our ``api_key`` is wrong for that upstream, not the caller's) too.  Other
    5xx may come after the work began.  The remaining codes are the request's own fault."""
    status = response.status_code
    reason = f"HTTP {status}: {_body_text(response)}"
    if status in (429, 503):
        retry_after = response.headers.get("retry-after")
        return UpstreamUnavailable(
            reason,
            overloaded=status == 429,
            retry_after=float(retry_after) if retry_after and retry_after.isdigit() else None,
        )
    if status in (401, 403):
        return UpstreamUnavailable(reason, down=True)
    if status >= 500:
        return UpstreamFailure(reason, timeout=status == 504)
    fields = _error_fields(response)
    if fields is None:  # a proxy's page, a bare "Not Found": nothing meant for the client
        return UpstreamError(status, f"The upstream server refused the request (HTTP {status}).")
    message, type_, code, param = fields
    return UpstreamError(status, message, type=type_, code=code, param=param)


def _body_text(response: httpx.Response) -> str:
    """The start of an answer's body, for the log."""
    return response.text.strip()[:500] or response.reason_phrase


def _error_fields(response: httpx.Response) -> tuple[str, str | None, str | None, str | None] | None:
    """``message, type, code, param`` of an error answer in OpenAI's, FastAPI's or TGI's shape."""
    try:
        data = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        code, param = error.get("code"), error.get("param")
        return (
            error["message"],
            error.get("type") if isinstance(error.get("type"), str) else None,
            str(code) if code is not None else None,
            param if isinstance(param, str) else None,
        )
    for key in ("error", "message", "detail"):
        if isinstance(data.get(key), str):
            return data[key], None, None, None
    return None
