"""Handing results from the engine thread to consumers: event loops and plain threads.

The step loop produces results for many requests at once.  Results bound for one event
loop are handed over in a single ``call_soon_threadsafe`` per step, not one per token;
thread consumers read a ``queue.SimpleQueue``.  A consumer that fell behind the step loop
takes every delta already queued for a choice as one: its per-token work (an event, a
chunk, a write) then shrinks as the load grows instead of piling up.
"""

from __future__ import annotations

import asyncio
import queue
from collections import defaultdict
from typing import Any

from ..outputs import Delta


def _coalesce(item: Any, pending: asyncio.Queue[Any] | queue.SimpleQueue[Any]) -> tuple[Any, Any]:
    """``item`` merged with the deltas of the same choice queued behind it, and the first queued
    item that could not be merged (``None`` when there is none)."""
    while isinstance(item, Delta) and item.finish_reason is None and not pending.empty():
        following = pending.get_nowait()
        if not (isinstance(following, Delta) and following.index == item.index):
            return item, following
        item = item.followed_by(following)
    return item, None


class AsyncSink:
    """Results for a consumer on an asyncio event loop."""

    __slots__ = ("loop", "queue", "_held")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self._held: Any = None  # taken from the queue but not mergeable with the last result

    async def get(self) -> Any:
        item = self._held if self._held is not None else await self.queue.get()
        item, self._held = _coalesce(item, self.queue)
        return item


class ThreadSink:
    """Results for a consumer blocking in a thread."""

    __slots__ = ("queue", "_held")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._held: Any = None

    def get(self) -> Any:
        item = self._held if self._held is not None else self.queue.get()
        item, self._held = _coalesce(item, self.queue)
        return item


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
