"""Requests a server has begun to answer but not yet submitted: the rest of a burst, on its way.

Requests sent together reach a worker's inbox one by one, as the event loop gets to each.  An
idle worker that sees its inbox fill waits for the rest (``burst_window_ms``), but gaps between
submissions run to several milliseconds when the event loop is busy reading the others; the
count of requests already read and not yet submitted tells the worker that more are coming.

The server opens a ticket around each request (``Intake.reading``); a worker closes it as it
queues the request's work (``Intake.submitted``), found through a context variable that the
request's tasks inherit.  A request that submits nothing closes its ticket when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class _Ticket:
    __slots__ = ("intake", "open")

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.open = True

    def close(self) -> None:
        if self.open:
            self.open = False
            self.intake._add(-1)


_current: ContextVar[_Ticket | None] = ContextVar("llm_middleware_intake_ticket", default=None)


class Intake:
    """How many requests are being read by the server and have not submitted their work yet."""

    def __init__(self) -> None:
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Requests read and not yet submitted."""
        return self._pending

    def _add(self, change: int) -> None:
        with self._lock:
            self._pending += change

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Count the current request (and the tasks it starts) until it submits or the block ends."""
        ticket = _Ticket(self)
        self._add(1)
        token = _current.set(ticket)
        try:
            yield
        finally:
            _current.reset(token)
            ticket.close()

    @staticmethod
    def submitted() -> None:
        """The current request has queued its work: it no longer counts (a no-op outside ``reading``)."""
        ticket = _current.get()
        if ticket is not None:
            ticket.close()
