"""Serving API requests over WSGI: reading the body, and a streaming iterable that cancels on close.

Our own bridge rather than a generic ASGI-to-WSGI adapter: PEP 3333 servers call ``close()``
on the iterable when the client goes away, and that is where the engine request is cancelled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING

from ..api.core.http import Request, Response
from ..runtime.loop_thread import LoopThread
from .policy.body_limit import BodyTooLargeError, check_declared_length

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

_READ_CHUNK = 64 * 1024


def environ_headers(environ: WSGIEnvironment) -> dict[str, str]:
    """The request headers with lower-case, dash-separated names (``HTTP_X_API_KEY`` -> ``x-api-key``)."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").lower()] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            headers[key.replace("_", "-").lower()] = value
    return headers


def read_body(environ: WSGIEnvironment, headers: dict[str, str], limit: int) -> bytes:
    """Read the request body, raising :class:`BodyTooLargeError` as soon as it passes ``limit``."""
    length = check_declared_length(headers.get("content-length"), limit)
    stream = environ["wsgi.input"]
    if length is None:
        # Without a length, PEP 3333 allows reading only when the server marks the input as
        # terminated (chunked uploads); otherwise there is no body.
        if not environ.get("wsgi.input_terminated"):
            return b""
        length = limit + 1
    chunks: list[bytes] = []
    size = 0
    while size < length:
        chunk = stream.read(min(_READ_CHUNK, length - size))
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def build_request(
    environ: WSGIEnvironment, path: str, root_path: str, headers: dict[str, str], body: bytes, identity: str
) -> Request:
    """The API's view of a WSGI request whose path relative to the base path is ``path``, let in as ``identity``."""
    return Request(
        method=environ["REQUEST_METHOD"],
        path=path,
        root_path=root_path,
        headers=headers,
        query_string=environ.get("QUERY_STRING", "").encode("latin-1"),
        body=body,
        client=client_address(environ),
        identity=identity,
    )


def client_address(environ: WSGIEnvironment) -> tuple[str, int] | None:
    """The client's ``(host, port)``, when the server says."""
    port = environ.get("REMOTE_PORT")
    addr = environ.get("REMOTE_ADDR")
    return (addr, int(port)) if addr and port and str(port).isdigit() else None


def decode_wsgi_str(value: str) -> str:
    """A WSGI "native string" (bytes carried as latin-1) as the UTF-8 text it encodes."""
    return value.encode("latin-1").decode("utf-8", "replace")


def serve_response(
    response: Response, start_response: StartResponse, loop: LoopThread
) -> Iterator[bytes] | list[bytes]:
    """Start ``response`` and return the WSGI iterable for its body."""
    status = f"{response.status} {_reason(response.status)}"
    start_response(status, list(response.headers))
    if response.stream is None:
        return [response.body]
    return StreamingBody(response.stream, loop)


class StreamingBody:
    """A WSGI iterable over a response stream living on the bridge's event loop.

    Each chunk is handed to the server as soon as the stream yields it; ``close()`` (called
    by every PEP 3333 server, also when the client went away) closes the stream, which
    cancels the engine request.
    """

    def __init__(self, stream: AsyncIterator[bytes], loop: LoopThread) -> None:
        self._stream = stream
        self._loop = loop
        self._closed = False

    def __iter__(self) -> StreamingBody:
        return self

    def __next__(self) -> bytes:
        if self._closed:
            raise StopIteration
        chunk = self._loop.run(_next_chunk(self._stream))
        if chunk is None:
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Close the stream on its loop; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            self._loop.run(aclose())


async def _next_chunk(stream: AsyncIterator[bytes]) -> bytes | None:
    """The next non-empty chunk, or None at the end (StopAsyncIteration cannot cross threads)."""
    while True:
        try:
            chunk = await stream.__anext__()
        except StopAsyncIteration:
            return None
        if chunk:
            return chunk


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"

