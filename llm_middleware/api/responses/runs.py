"""Background responses: runs that outlive the request that started them.

A run is a task on an event loop of the registry's own (a thread of its own), not on the loop of
the request that started it: that loop may end with the request (test clients, servers that run a
loop per request) while the run must go on.  A run can be cancelled from any request, on any loop,
and every run still going when the server stops is cancelled as a shutdown, which the run records
as a failure.  Streamed clients follow a run through :meth:`Run.frames`, which any number of
readers on any loop may tail.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Literal

from ...runtime.loop_thread import LoopThread

#: Why a run was cancelled: a client asked, or the server is stopping.
StopReason = Literal["cancel", "shutdown"]
#: How long a stopping server waits for its runs to record how they ended.
SHUTDOWN_TIMEOUT = 10.0


class Run:
    """One background response: its task, why it was stopped (None while nobody stopped it), and
    the encoded events it streamed so far."""

    def __init__(self, response_id: str, owner: str) -> None:
        self.response_id = response_id
        self.owner = owner
        self.stop_reason: StopReason | None = None
        self._frames: list[bytes] = []
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """True once the run's task returned."""
        return self._ended.is_set()

    def publish(self, frame: bytes) -> None:
        """Add an encoded event for the readers."""
        with self._lock:
            self._frames.append(frame)
            self._wake()

    def _end(self) -> None:
        with self._lock:
            self._ended.set()
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    async def frames(self, after: int = -1) -> AsyncIterator[bytes]:
        """The run's events from the one numbered ``after + 1``, as they come, until it ends."""
        position = after + 1
        while True:
            with self._lock:
                frames = self._frames[position:]
                ended = self._ended.is_set()
                if not frames and not ended:
                    event = asyncio.Event()
                    self._waiters.append((asyncio.get_running_loop(), event))
            if frames:
                position += len(frames)
                for frame in frames:
                    yield frame
            elif ended:
                return
            else:
                await event.wait()

    def stop(self, reason: StopReason) -> None:
        """Cancel the run's task (from any thread); the first reason given is kept."""
        with self._lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)


class BackgroundRuns:
    """The runs of this process, by response id; safe to use from every thread and loop."""

    def __init__(self) -> None:
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._loop_thread = LoopThread("llm-background-runs")

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)

    @property
    def closed(self) -> bool:
        """True once the registry shut down: new runs are refused."""
        return self._closed

    async def start(self, run: Run, work: Callable[[Run], Coroutine[Any, Any, None]]) -> None:
        """Run ``work(run)`` as a task on the registry's loop, held until it returns.

        The task gets a context of its own: it belongs to no request.  When the registry has
        already shut down, the run is stopped as a shutdown as soon as it begins.
        """
        await self._loop_thread.call(self._spawn(run, work))

    async def _spawn(self, run: Run, work: Callable[[Run], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        task = loop.create_task(work(run), context=contextvars.Context())
        run._loop, run._task = loop, task
        with self._lock:
            closed = self._closed
            if not closed:
                self._runs[run.response_id] = run
        task.add_done_callback(lambda _: self._ended(run))
        if closed:  # after the task's first step, so that it sees the cancellation inside its own handlers
            loop.call_soon(run.stop, "shutdown")

    def _ended(self, run: Run) -> None:
        with self._lock:
            if self._runs.get(run.response_id) is run:
                del self._runs[run.response_id]
        run._end()

    def find(self, owner: str, response_id: str) -> Run | None:
        """``owner``'s run ``response_id`` in this process; None when there is none (or it is another's)."""
        with self._lock:
            run = self._runs.get(response_id)
        return run if run is not None and run.owner == owner else None

    def _stop_all(self) -> list[Run]:
        with self._lock:
            self._closed = True
            runs = list(self._runs.values())
        for run in runs:
            run.stop("shutdown")
        return runs

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Stop every run as a shutdown and wait (up to ``timeout``) until each has recorded its end."""
        runs = self._stop_all()
        deadline = time.monotonic() + timeout
        while any(not run.ended for run in runs) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._loop_thread.close()

    def shutdown_sync(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """:meth:`shutdown` for a thread outside the runs' loops (a WSGI server closing)."""
        runs = self._stop_all()
        deadline = time.monotonic() + timeout
        for run in runs:
            run._ended.wait(max(0.0, deadline - time.monotonic()))
        self._loop_thread.close()
