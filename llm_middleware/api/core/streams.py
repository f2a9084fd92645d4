"""Async-generator plumbing for engine streams: pull the first item early, merge several."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TypeVar

T = TypeVar("T")


async def first_items(streams: list[AsyncGenerator[T, None]]) -> list[T | None]:
    """Await the first item of every stream (None for an empty one), so that errors the engine
    raises up front surface before a streaming response is committed.  On failure every
    stream is closed, cancelling the requests already admitted."""
    firsts: list[T | None] = []
    try:
        for stream in streams:
            firsts.append(await anext(stream, None))
    except BaseException:
        for stream in streams:
            await stream.aclose()
        raise
    return firsts


async def resume(first: T | None, stream: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """``first`` then the rest of ``stream``; closing this generator closes ``stream``."""
    try:
        if first is not None:
            yield first
        async for item in stream:
            yield item
    finally:
        await stream.aclose()


async def merge(streams: list[AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[int, T], None]:
    """Items of all ``streams`` as they come, tagged with the stream's position.

    Closing this generator cancels the pending reads and closes every stream.
    """
    pending = {asyncio.ensure_future(anext(stream)): k for k, stream in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                k = pending.pop(task)
                try:
                    item = task.result()
                except StopAsyncIteration:
                    continue
                # Ask for the next item before yielding, so a slow consumer does not stall the others.
                pending[asyncio.ensure_future(anext(streams[k]))] = k
                yield k, item
    finally:
        for task in pending:
            task.cancel()
        # A generator cannot be closed while a read of it is in flight: let the cancelled reads end first.
        await asyncio.gather(*pending, return_exceptions=True)
        for stream in streams:
            await stream.aclose()
