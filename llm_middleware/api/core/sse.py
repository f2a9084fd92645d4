"""Server-sent events: the one body every streamed route answers with.

A route turns items (engine deltas, relayed chunks) into its protocol's events; an
:class:`EventStream` runs that over a source of items and ends the stream the protocol's way
(:class:`Framing`): after the last item with what the protocol sends last, and after a failure
with its error event.  Closing it (the client went away) closes the sources, which cancels
their engine requests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from msgspec import Struct

from .http import Response
from .responses import encoder

T = TypeVar("T")

HEADERS: tuple[tuple[str, str], ...] = (
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    # Reverse proxies (nginx) buffer responses unless told otherwise, which stalls the stream.
    ("x-accel-buffering", "no"),
)


def event(message: Any) -> bytes:
    """One ``data:`` event holding ``message`` (a Struct or builtin value) encoded as JSON."""
    return b"data: " + encoder.encode(message) + b"\n\n"


def named_event(message: Struct) -> bytes:
    """One event whose ``event:`` line names it by ``message``'s tag (its ``type``), as the Responses and
    Messages APIs send them, then its ``data:``."""
    name = str(type(message).__struct_config__.tag)
    return b"event: " + name.encode() + b"\n" + event(message)


@dataclass(frozen=True, slots=True)
class Framing:
    """How one protocol ends its event streams: ``last`` after the last event, and
    ``error_event(exc)`` (followed by ``last``) when the stream fails after it started."""

    last: bytes
    error_event: Callable[[BaseException], bytes]


class EventStream(Generic[T]):
    """The events of a streamed response: ``render(item)`` for ``first`` and each item of ``items``
    (``b""`` while an item produces no event yet), then ``closing()``, then ``framing.last``.

    A failure of the items or of their rendering ends the stream with the protocol's error event.
    ``aclose()`` closes ``items`` and then ``sources`` (the engine streams behind ``items``, which
    a generator never started would leave open).
    """

    def __init__(
        self,
        items: AsyncGenerator[T, None],
        render: Callable[[T], bytes],
        framing: Framing,
        *,
        first: T | None = None,
        closing: Callable[[], bytes] | None = None,
        sources: Sequence[AsyncGenerator[Any, None]] = (),
    ) -> None:
        self._items = items
        self._render = render
        self._framing = framing
        self._first = first
        self._closing = closing
        self._sources = sources
        self._done = False
        self._failed = False

    @property
    def failed(self) -> bool:
        """True once the stream ended with an error event."""
        return self._failed

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> bytes:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._first is not None:
                first, self._first = self._first, None
                if data := self._render(first):
                    return data
            async for item in self._items:
                if data := self._render(item):
                    return data
            ending = self._closing() if self._closing is not None else b""
        except Exception as exc:
            await self.aclose()
            return self.fail(exc)
        await self.aclose()
        return ending + self._framing.last

    def fail(self, error: BaseException) -> bytes:
        """The bytes that end the stream with ``error``: the protocol's error event, then its last words."""
        self._done = self._failed = True
        return self._framing.error_event(error) + self._framing.last

    async def aclose(self) -> None:
        """Close the items and their sources, cancelling the engine requests behind them."""
        self._done = True
        await self._items.aclose()
        for source in self._sources:
            await source.aclose()


def streaming_response(stream: EventStream[Any], headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A 200 event-stream response around ``stream``."""
    return Response(status=200, headers=[*HEADERS, *headers], stream=stream)
