"""Handing results from the engine thread to consumers on event loops, and on to blocked threads.

The step loop produces results for many requests at once.  Results bound for one event loop are
handed over in a single ``call_soon_threadsafe`` per step, not one per token.  A consumer that
fell behind takes every delta already queued for a choice as one: its per-token work (an event,
a chunk, a write) then shrinks as the load grows instead of piling up.  Threads (the blocking
twins) read what a loop relays to them through a ``ThreadSink``, which merges the same way.
"""

from __future__ import annotations

import asyncio
import queue
from collections import defaultdict
from typing import Any

from .outputs import Delta


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
    """Results for a consumer blocking in a thread (any thread may ``put``)."""

    __slots__ = ("queue", "_held")

    def __init__(self) -> None:
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._held: Any = None

    def put(self, item: Any) -> None:
        self.queue.put(item)

    def get(self) -> Any:
        item = self._held if self._held is not None else self.queue.get()
        item, self._held = _coalesce(item, self.queue)
        return item



def _put_all(items: list[tuple[AsyncSink, Any]]) -> None:
    for sink, item in items:
        sink.queue.put_nowait(item)


class Outbox:
    """Collects one step's results, then delivers them with one hop per event loop."""

    def __init__(self) -> None:
        self._by_loop: defaultdict[asyncio.AbstractEventLoop, list[tuple[AsyncSink, Any]]] = defaultdict(list)

    def put(self, sink: AsyncSink, item: Any) -> None:
        self._by_loop[sink.loop].append((sink, item))

    def flush(self) -> None:
        for loop, items in self._by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening any more
                pass
        self._by_loop.clear()
