"""An asyncio event loop on a thread of its own, used from any other thread or event loop.

The WSGI bridge runs the API's coroutines on one (WSGI threads have no loop), the remote engine
keeps its upstream connections on one (an httpx client belongs to the loop that drives it), and
the engines' blocking twins run their async calls on one.  Coroutines are run there; streams are
relayed item by item: a pump task hands each item to the caller's loop, or thread, the moment it
arrives, and closing the caller's side cancels the pump, which closes the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from ..errors import EngineNotReadyError

T = TypeVar("T")

_END = object()


class Channel(Protocol):
    """Where a relayed stream's items wait for a thread that reads them (``queue.SimpleQueue`` is one)."""

    def put(self, item: Any) -> None: ...

    def get(self) -> Any: ...


class _Failure:
    """An exception travelling to the consumer in place of an item."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Pump:
    """Hands every item of a source to ``put``, then the end or the failure; always closes the source."""

    __slots__ = ("source", "put", "task")

    def __init__(self, source: AsyncIterator[Any], put: Callable[[Any], None]) -> None:
        self.source = source
        self.put = put
        self.task: asyncio.Task[Any] | None = None

    async def run(self, closing: Callable[[], EngineNotReadyError | None]) -> None:
        self.task = asyncio.current_task()
        try:
            async for item in self.source:
                self.put(item)
        except asyncio.CancelledError:
            error = closing()
            if error is not None:  # the loop is closing: the consumer waits for an answer
                with contextlib.suppress(RuntimeError):  # its loop may be gone: nobody is listening
                    self.put(_Failure(error))
            raise
        except Exception as exc:
            with contextlib.suppress(RuntimeError):
                self.put(_Failure(exc))
        else:
            with contextlib.suppress(RuntimeError):
                self.put(_END)
        finally:
            aclose = getattr(self.source, "aclose", None)
            if aclose is not None:
                await aclose()

    async def stop(self) -> None:
        """On the loop: cancel the pump and wait until it has closed its source."""
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class LoopThread:
    """One event loop on a daemon thread, started on first use and again in each forked child.

    Nothing starts at construction, so a server may import the app and fork workers first.  With
    ``start_on_use`` False the loop runs only between :meth:`open` and :meth:`close`, and a call
    outside that time raises :class:`EngineNotReadyError`.  Never block on the loop from the loop's
    own thread.
    """

    def __init__(self, name: str = "llm-middleware-loop", *, start_on_use: bool = True) -> None:
        self._name = name
        self._start_on_use = start_on_use
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing: str | None = None  # why every call ends, once cancel_all() ran

    # ---- the thread ---------------------------------------------------------------------------

    def open(self) -> None:
        """Start the loop thread unless it runs (again in a forked child, whose inherited loop has no thread)."""
        with self._lock:
            self._start()

    def close(self) -> None:
        """Stop the loop and wait for its thread to end (a later use or :meth:`open` starts a new one)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            if loop is None or thread is None or self._pid != os.getpid():
                return
            self._loop = self._thread = self._pid = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._pid != os.getpid():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=_serve, args=(loop,), name=self._name, daemon=True)
            thread.start()
            self._loop, self._thread, self._pid = loop, thread, os.getpid()
            self._tasks = set()
            self._closing = None
        return self._loop

    def _running(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and self._pid == os.getpid():
            return loop
        if not self._start_on_use:
            raise EngineNotReadyError("the engine is not started: call start()", retry_after=1)
        with self._lock:
            return self._start()

    # ---- calls --------------------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block the calling thread until it returns."""
        return asyncio.run_coroutine_threadsafe(self._tracked(coro), self._running()).result()

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the loop, from another event loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._tracked(coro), self._running()))

    async def relay(self, source: AsyncIterator[T]) -> AsyncGenerator[T, None]:
        """The items of ``source`` (run on the loop) in the calling event loop; closing this closes ``source``."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        pump = _Pump(source, put)
        running = asyncio.run_coroutine_threadsafe(self._tracked(pump.run(self._closing_error)), self._running())
        try:
            while (item := await items.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            running.cancel()

    def relay_sync(self, source: AsyncIterator[T], channel: Channel | None = None) -> Iterator[T]:
        """The items of ``source`` (run on the loop) in the calling thread, through ``channel`` (a plain
        queue by default).  Closing the iterator closes ``source`` before it returns."""
        items: Channel = channel if channel is not None else queue.SimpleQueue()
        loop = self._running()
        pump = _Pump(source, items.put)
        running = asyncio.run_coroutine_threadsafe(self._tracked(pump.run(self._closing_error)), loop)

        def iterate() -> Iterator[T]:
            try:
                while (item := items.get()) is not _END:
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                if not running.done():
                    self._stop(pump, running, loop)

        return iterate()

    def _stop(self, pump: _Pump, running: Any, loop: asyncio.AbstractEventLoop) -> None:
        if threading.current_thread() is self._thread or not loop.is_running():
            running.cancel()  # on the loop itself (or without one) nothing can be waited for
            return
        asyncio.run_coroutine_threadsafe(pump.stop(), loop).result()

    async def cancel_all(self, reason: str = "the engine is shutting down") -> None:
        """On the loop: end every call and relay in progress with :class:`EngineNotReadyError` saying ``reason``."""
        self._closing = reason
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _closing_error(self) -> EngineNotReadyError | None:
        return EngineNotReadyError(self._closing, retry_after=5) if self._closing is not None else None

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of run_coroutine_threadsafe
        self._tasks.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            error = self._closing_error()
            if error is not None:
                raise error from None
            raise
        finally:
            self._tasks.discard(task)


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


async def on_loop(loop: asyncio.AbstractEventLoop | None, coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro`` run on ``loop`` (where the host's async objects belong) from another loop; on the
    calling loop when ``loop`` is None, is the calling loop, or no longer runs.  Cancelling the caller
    cancels it."""
    if loop is None or loop is asyncio.get_running_loop() or loop.is_closed() or not loop.is_running():
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
