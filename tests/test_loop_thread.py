"""The loop thread: coroutines and streams run on its loop, handed to other loops and threads, ended by a shutdown."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncGenerator

import pytest

from llm_middleware.errors import EngineNotReadyError, InvalidRequestError
from llm_middleware.runtime.loop_thread import LoopThread


@pytest.fixture
def engine_loop():
    loop = LoopThread("test-remote-loop", start_on_use=False)
    loop.open()
    yield loop
    loop.close()


async def test_relay_hands_items_over_and_closing_it_stops_the_source(engine_loop: LoopThread) -> None:
    ran_on: list[str] = []
    closed = threading.Event()

    async def endless() -> AsyncGenerator[int, None]:
        try:
            for k in itertools.count():
                ran_on.append(threading.current_thread().name)
                yield k
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    relay = engine_loop.relay(endless())
    assert [await anext(relay) for _ in range(3)] == [0, 1, 2]
    await relay.aclose()
    assert await asyncio.to_thread(closed.wait, 60)  # only closing the relay ends this source
    assert set(ran_on) == {"test-remote-loop"}


def test_sync_twins_relay_items_and_errors(engine_loop: LoopThread) -> None:
    async def failing() -> AsyncGenerator[int, None]:
        yield 1
        raise InvalidRequestError("no")

    items = engine_loop.relay_sync(failing())
    assert next(items) == 1
    with pytest.raises(InvalidRequestError, match="no"):
        next(items)

    async def answer() -> int:
        return 42

    assert engine_loop.run(answer()) == 42


async def test_shutdown_ends_waiting_callers_with_a_clear_error(engine_loop: LoopThread) -> None:
    started = threading.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    waiting = asyncio.ensure_future(engine_loop.call(forever()))
    assert await asyncio.to_thread(started.wait, 60)
    await asyncio.to_thread(engine_loop.run, engine_loop.cancel_all())
    with pytest.raises(EngineNotReadyError, match="shutting down"):
        await waiting


def test_closing_a_sync_relay_closes_its_source_before_it_returns(engine_loop: LoopThread) -> None:
    closed = threading.Event()

    async def endless() -> AsyncGenerator[int, None]:
        try:
            for k in itertools.count():
                yield k
                await asyncio.sleep(0.01)
        finally:
            closed.set()

    items = engine_loop.relay_sync(endless())
    assert next(items) == 0
    items.close()  # type: ignore[attr-defined]
    assert closed.is_set()


def test_a_loop_started_on_use_serves_at_once_and_again_after_close() -> None:
    loop = LoopThread("test-loop-on-use")

    async def name() -> str:
        return threading.current_thread().name

    try:
        assert loop.run(name()) == "test-loop-on-use"
        loop.close()
        assert loop.run(name()) == "test-loop-on-use"
    finally:
        loop.close()
