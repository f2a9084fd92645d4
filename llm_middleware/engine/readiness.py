"""The end of one model load, awaited by threads and event loops alike without holding a thread.

Requests that arrive while a model loads wait for it, possibly for minutes.  A wait through
``asyncio.to_thread(event.wait)`` would hold a thread of the default executor, which the host
app's own code shares, per request.  Here a waiting event loop holds only a future, resolved from
the loading thread with ``call_soon_threadsafe``, and a cancelled wait leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Readiness:
    """Set once, when a load ends (loaded, failed or abandoned); ``wait`` blocks a thread, ``wait_async`` a task."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        # Futures of the tasks waiting now, each with its loop.
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        """Wake every waiter, on whichever thread or loop it waits (idempotent, from any thread)."""
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, set()
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, timeout: float | None = None) -> bool:
        """Block the calling thread until set or ``timeout`` seconds pass; True if set."""
        return self._event.wait(timeout)

    async def wait_async(self) -> None:
        """Wait until set, holding no thread; cancelling the task withdraws the wait."""
        loop = asyncio.get_running_loop()
        waiter = (loop, loop.create_future())
        with self._lock:
            if self._event.is_set():
                return
            self._waiters.add(waiter)
        try:
            await waiter[1]
        finally:
            with self._lock:
                self._waiters.discard(waiter)

    @property
    def waiting(self) -> int:
        """How many tasks wait now."""
        with self._lock:
            return len(self._waiters)
