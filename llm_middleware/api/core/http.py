"""The server-neutral request and response that API handlers take and return.

The middleware builds a :class:`Request` from an ASGI scope or a WSGI environ (body already
read, within the size limit) and sends the :class:`Response` back through whichever
protocol the request came in on.  Handlers therefore know nothing about ASGI or WSGI, and the
middleware knows nothing about a protocol's bodies: a streamed body says itself how it ends
with an error (:class:`BodyStream`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


#: The identity of a request made without a credential of its own: every request of an open API, a
#: public path reached without a key, and an ``authorize`` that answers plain True.
ANONYMOUS = "anonymous"


@dataclass(slots=True)
class Request:
    """An HTTP request under the API's base path.

    ``path`` is relative to the base path (``/v1/models``); ``root_path`` is everything in
    front of it (the server's root path plus the base path), for building absolute URLs.
    Header names are lower-case.  ``identity`` names the credential the request was let in with
    (whatever it owns, such as stored responses, is visible to that identity only): ``"key:"``
    and a SHA-256 digest of its API key, ``"user:"`` and what ``authorize`` returned, or
    :data:`ANONYMOUS`.
    """

    method: str
    path: str
    root_path: str
    headers: dict[str, str]
    query_string: bytes = b""
    body: bytes = b""
    client: tuple[str, int] | None = None
    identity: str = ANONYMOUS


class BodyStream(Protocol):
    """A response body sent chunk by chunk.

    ``aclose()`` releases everything the stream holds (its engine requests): the middleware calls
    it when the stream is done or the client went away, iterated or not.  ``fail(error)`` is what
    ends the stream early with ``error``, in its protocol's words (an error event, then whatever
    the protocol sends last); ``failed`` is true once the stream ended that way.
    """

    def __aiter__(self) -> BodyStream: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...

    def fail(self, error: BaseException) -> bytes: ...

    @property
    def failed(self) -> bool: ...


class WrappedStream:
    """A :class:`BodyStream` that passes everything to the one it wraps; subclasses change what they add."""

    def __init__(self, stream: BodyStream) -> None:
        self._stream = stream

    def __aiter__(self) -> WrappedStream:
        return self

    async def __anext__(self) -> bytes:
        return await anext(self._stream)

    async def aclose(self) -> None:
        """Close the wrapped stream."""
        await self._stream.aclose()

    def fail(self, error: BaseException) -> bytes:
        """The wrapped stream's ending for ``error``."""
        return self._stream.fail(error)

    @property
    def failed(self) -> bool:
        """True once the stream ended with an error."""
        return self._stream.failed


@dataclass(slots=True)
class Response:
    """A whole response (``body``) or a streamed one (``stream``)."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    stream: BodyStream | None = None
