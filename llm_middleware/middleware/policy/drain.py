"""Graceful shutdown: refuse new API requests, let those in flight finish, end the rest."""

from __future__ import annotations

import asyncio
import threading
import time

from ...errors import EngineNotReadyError
from .deadline import Deadline

# How often a drain looks whether the requests in flight are done.
_POLL_SECONDS = 0.05
# How long requests ended by the drain get to send their last error event.
_LAST_WORDS_SECONDS = 5.0
# What clients refused during a drain are told to wait before retrying (another replica may answer).
_RETRY_AFTER_SECONDS = 5


class Drain:
    """The requests in flight, and whether the server is shutting down.

    Requests register their :class:`Deadline` while they run (from any thread: WSGI requests
    run on the bridge's loop, ASGI ones on the server's).
    """

    def __init__(self, timeout: float) -> None:
        if timeout < 0:
            raise ValueError(f"drain_timeout must be >= 0 seconds, got {timeout}")
        self.timeout = timeout
        self.draining = False
        self._lock = threading.Lock()
        self._active: set[Deadline] = set()

    def enter(self, deadline: Deadline) -> None:
        """A request started."""
        with self._lock:
            self._active.add(deadline)

    def leave(self, deadline: Deadline) -> None:
        """A request finished (its last byte was sent, or its client went away)."""
        with self._lock:
            self._active.discard(deadline)

    @property
    def in_flight(self) -> int:
        """How many requests are running."""
        with self._lock:
            return len(self._active)

    def reopen(self) -> None:
        """Take requests again (the engine was started anew after a shutdown)."""
        self.draining = False

    def check(self) -> None:
        """Refuse a request that arrives while the server drains (503 ``shutting_down``)."""
        if self.draining:
            raise EngineNotReadyError(
                "The server is shutting down and takes no new requests; retry on another instance or later.",
                code="shutting_down",
                retry_after=_RETRY_AFTER_SECONDS,
            )

    async def drain(self) -> None:
        """Refuse new requests, wait up to ``timeout`` for those in flight, then end the rest with an error.

        Requests ended here answer 503 if they had not started responding, or end their stream
        with their protocol's error ending; their engine requests are cancelled.
        """
        self.draining = True
        if await self._wait_idle(self.timeout):
            return
        error = EngineNotReadyError(
            f"The server is shutting down and stopped waiting for this request after {self.timeout:g} seconds.",
            code="shutting_down",
            retry_after=_RETRY_AFTER_SECONDS,
        )
        with self._lock:
            remaining = list(self._active)
        for deadline in remaining:
            deadline.expire(error)
        await self._wait_idle(_LAST_WORDS_SECONDS)

    async def _wait_idle(self, seconds: float) -> bool:
        until = time.monotonic() + seconds
        while self.in_flight:
            if time.monotonic() >= until:
                return False
            await asyncio.sleep(_POLL_SECONDS)
        return True
