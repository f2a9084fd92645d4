"""The remote engine's own event loop, used from any other event loop or thread.

An httpx client belongs to the loop that drives it, yet the engine is called from the server's
loop, the WSGI bridge's loop, the host app's loop and plain threads.  So every upstream
connection and health check lives on one loop thread, and callers reach it here: coroutines are
run there, and streams are relayed item by item (the pump task hands each item to the caller's
loop, or thread, the moment it arrives; closing the caller's side cancels the pump, which closes
the upstream connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from ..errors import EngineNotReadyError
from ..runtime.loop_thread import LoopThread

T = TypeVar("T")

_END = object()


class _Failure:
    """An exception travelling to the consumer in place of an item."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _shutting_down() -> EngineNotReadyError:
    return EngineNotReadyError("the remote engine is shutting down", retry_after=5)


async def _current_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


async def _pump(source: AsyncIterator[T], put: Callable[[Any], None]) -> None:
    """Hand every item of ``source`` to ``put``, then the end or the failure; always close ``source``."""
    try:
        async for item in source:
            put(item)
    except asyncio.CancelledError:
        with contextlib.suppress(RuntimeError):  # the consumer's loop may be gone: nobody is listening
            put(_Failure(_shutting_down()))
        raise
    except Exception as exc:
        with contextlib.suppress(RuntimeError):
            put(_Failure(exc))
    else:
        with contextlib.suppress(RuntimeError):
            put(_END)
    finally:
        await source.aclose()  # type: ignore[attr-defined]


class EngineLoop:
    """One event loop thread per process, and the ways to use it from elsewhere."""

    def __init__(self, name: str) -> None:
        self._thread = LoopThread(name)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False

    def open(self) -> None:
        """Start the loop thread (again in a forked child, whose inherited loop has no thread)."""
        if self._loop is None or self._pid != os.getpid():
            self._loop = self._thread.run(_current_loop())
            self._pid = os.getpid()
            self._tasks = set()
            self._closing = False

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop, blocking this thread (never call it from the loop itself)."""
        return self._thread.run(coro)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` run on the loop, from another event loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._tracked(coro), self._running()))

    def call_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block this thread until it returns."""
        return asyncio.run_coroutine_threadsafe(self._tracked(coro), self._running()).result()

    async def relay(self, source: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """The items of ``source`` (run on the loop) in the calling event loop; closing this closes ``source``."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(items.put_nowait, item)

        pump = asyncio.run_coroutine_threadsafe(self._tracked(_pump(source, put)), self._running())
        try:
            while (item := await items.get()) is not _END:
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            pump.cancel()

    def relay_sync(self, source: AsyncGenerator[T, None]) -> Iterator[T]:
        """The items of ``source`` (run on the loop) in the calling thread; closing the iterator closes ``source``."""
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        pump = asyncio.run_coroutine_threadsafe(self._tracked(_pump(source, items.put)), self._running())

        def iterate() -> Iterator[T]:
            try:
                while (item := items.get()) is not _END:
                    if isinstance(item, _Failure):
                        raise item.error
                    yield item
            finally:
                pump.cancel()

        return iterate()

    async def cancel_all(self) -> None:
        """On the loop: end every call and relay in progress with :class:`EngineNotReadyError`."""
        self._closing = True
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Stop the loop thread (a later :meth:`open` starts a new one)."""
        self._thread.close()
        self._loop = None

    def _running(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._pid != os.getpid():
            raise EngineNotReadyError("the remote engine is not started: call start()", retry_after=1)
        return self._loop

    async def _tracked(self, coro: Coroutine[Any, Any, T]) -> T:
        task = asyncio.current_task()
        assert task is not None  # always run as a task of run_coroutine_threadsafe
        self._tasks.add(task)
        try:
            return await coro
        except asyncio.CancelledError:
            if self._closing:
                raise _shutting_down() from None
            raise
        finally:
            self._tasks.discard(task)
