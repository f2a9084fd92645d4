"""One request under the base path, from arrival to its last byte: what metrics and the access log report.

The middleware creates an :class:`Exchange` per request and makes it the current one (a
context variable, so that code deep below, such as the engine observer, can add the model
and token counts without being handed it).  It ends once, when the response is fully sent,
or when the client goes away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from ...api.core.http import BodyStream, WrappedStream
from ..policy.deadline import Deadline


@dataclass(slots=True, eq=False)
class Exchange:
    """The facts of one request.  ``outcome`` is ``completed``, ``cancelled`` (client gone),
    ``error`` (an error event ended the stream), ``timeout`` or ``shutting_down``."""

    method: str
    path: str
    route: str
    client: tuple[str, int] | None
    started: float = field(default_factory=time.perf_counter)
    request_id: str = "-"
    status: int = 0
    stream: bool = False
    model: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    outcome: str = "completed"
    deadline: Deadline | None = None
    ended: bool = False

    @property
    def duration(self) -> float:
        """Seconds since the request arrived."""
        return time.perf_counter() - self.started


#: The exchange of the request being served in this context (None outside requests under the prefix).
current_exchange: ContextVar[Exchange | None] = ContextVar("llm_middleware_exchange", default=None)


class ObservedStream(WrappedStream):
    """A response stream that reports how it ended, exactly once.

    ``on_end`` runs when the stream is exhausted or closed, even if it was never iterated
    (closing an unstarted async generator would skip its ``finally``).
    """

    def __init__(self, stream: BodyStream, exchange: Exchange, on_end: Callable[[Exchange], None]) -> None:
        super().__init__(stream)
        self._exchange = exchange
        self._on_end = on_end
        self._exhausted = False

    async def __anext__(self) -> bytes:
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            self._exhausted = True
            raise

    async def aclose(self) -> None:
        """Close the underlying stream (cancelling its engine requests) and end the exchange."""
        try:
            await self._stream.aclose()
        finally:
            if self._stream.failed:
                self._exchange.outcome = "error"
            elif not self._exhausted and self._exchange.outcome == "completed":
                self._exchange.outcome = "cancelled"
            self._on_end(self._exchange)
