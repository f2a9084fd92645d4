"""Handing results from the engine thread to consumers: event loops and plain threads.

The step loop produces results for many requests at once.  Results bound for one event
loop are handed over in a single ``call_soon_threadsafe`` per step, not one per token;
thread consumers read a ``queue.SimpleQueue``.
"""

from __future__ import annotations

import asyncio
import queue
from collections import defaultdict
from typing import Any


class AsyncSink:
    """Results for a consumer on an asyncio event loop."""

    __slots__ = ("loop", "queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    async def get(self) -> Any:
        return await self.queue.get()


class ThreadSink:
    """Results for a consumer blocking in a thread."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def get(self) -> Any:
        return self.queue.get()


Sink = AsyncSink | ThreadSink


def _put_all(items: list[tuple[AsyncSink, Any]]) -> None:
    for sink, item in items:
        sink.queue.put_nowait(item)


class Outbox:
    """Collects one step's results, then delivers them with one hop per event loop."""

    def __init__(self) -> None:
        self._by_loop: defaultdict[asyncio.AbstractEventLoop, list[tuple[AsyncSink, Any]]] = defaultdict(list)

    def put(self, sink: Sink, item: Any) -> None:
        if isinstance(sink, ThreadSink):
            sink.queue.put(item)
        else:
            self._by_loop[sink.loop].append((sink, item))

    def flush(self) -> None:
        for loop, items in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass
        self._by_loop.clear()
