"""The intake count: requests a server is reading, which an idle engine waits for before its first prompt chunk."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker, first_step
from test_dispatch import ShopASGI

from llm_middleware.engine import Engine
from llm_middleware.engine.intake import Intake
from llm_middleware.errors import EngineNotReadyError
from llm_middleware.middleware import LLMMiddleware


async def test_a_ticket_counts_until_its_request_or_a_task_it_started_submits() -> None:
    intake = Intake()
    with intake.reading():
        assert intake.pending == 1
        await asyncio.ensure_future(asyncio.sleep(0, result=Intake.submitted()))  # a task inherits the ticket
        assert intake.pending == 0
        Intake.submitted()  # twice is once
        assert intake.pending == 0
    assert intake.pending == 0
    with intake.reading():  # a request that submits nothing counts until it ends
        assert intake.pending == 1
    assert intake.pending == 0
    Intake.submitted()  # outside any request: nothing to close
    assert intake.pending == 0


async def test_an_idle_engine_waits_for_a_request_still_being_read(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=50)
    await eng.wait_ready()
    first_chunk = first_step(eng, lambda batch: len(batch.prefill))
    try:
        alone = asyncio.ensure_future(eng.complete(list(range(10, 20)), max_tokens=2, ignore_eos=True))
        with eng.intake.reading():  # the server reads a second request while the first is submitted
            await asyncio.sleep(0.3)  # six windows: without the count the first would have started alone
            await eng.complete(list(range(30, 40)), max_tokens=2, ignore_eos=True)
        await alone
        assert first_chunk == [2]
    finally:
        eng.shutdown()


def test_a_request_that_never_submits_delays_the_first_chunk_25_windows_at_most(tiny_model_dir: Path) -> None:
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=40)
    eng.wait_ready_sync()
    launched = first_step(eng, lambda batch: time.monotonic())
    try:
        with eng.intake.reading():
            sent = time.monotonic()
            # A thread starts with a context of its own: its submission does not close this ticket.
            thread = threading.Thread(target=eng.complete_sync, args=(list(range(10, 20)),), kwargs={"max_tokens": 1})
            thread.start()
            thread.join(10)
        assert 0.9 < launched[0] - sent < 3.0  # 25 windows of 40 ms
    finally:
        eng.shutdown()


@pytest.mark.parametrize("path,body,submits", [
    ("/ai/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}, True),
    ("/ai/v1/completions", {"prompt": "Hi", "max_tokens": 3}, True),
    ("/ai/tokenize", {"prompt": "Hi"}, False),
])
async def test_the_middleware_counts_a_request_until_it_submits(
    api_engine: Engine, monkeypatch: pytest.MonkeyPatch, path: str, body: dict, submits: bool
) -> None:
    counts: list[int] = []
    add = Intake._add

    def spy(self: Intake, change: int) -> None:
        add(self, change)
        counts.append(self.pending)

    monkeypatch.setattr(Intake, "_add", spy)
    stream = ASGIStream(LLMMiddleware(ShopASGI(), engine=api_engine), path, body)
    assert await stream.start() == 200
    if submits:
        assert counts == [1, 0]  # closed at submission, before the response began
    await stream.body()
    await stream.app_returned()
    assert counts == [1, 0]


@pytest.mark.parametrize("reading_s,window_ms,held_s", [(0.15, 40, 0.15), (1.0, 8, 0.2)])
def test_a_busy_engine_holds_a_few_prompts_while_a_burst_is_still_being_read(
    tiny_model_dir: Path, reading_s: float, window_ms: float, held_s: float
) -> None:
    # A step in flight (async scheduling) and a request still being read: the prompt that came
    # first waits for it, until the reading ends or for 25 windows at most, while the running
    # stream decodes.
    eng = Engine(tiny_model_dir, seed=0, async_scheduling=True, burst_window_ms=window_ms)
    eng.wait_ready_sync()
    ended_by_shutdown: list[EngineNotReadyError] = []

    def long_stream() -> None:
        try:
            eng.complete_sync(list(range(10, 20)), ignore_eos=True)
        except EngineNotReadyError as error:
            ended_by_shutdown.append(error)

    running = threading.Thread(target=long_stream)
    try:
        running.start()
        while eng.stats()["running"] == 0:
            time.sleep(0.01)
        launches: list[tuple[float, int]] = []  # the steps that start prompts: when, and their decode rows
        default_worker(eng).before_step = (
            lambda batch: launches.append((time.monotonic(), len(batch.decode))) if batch.prefill else None)
        with eng.intake.reading():
            sent = time.monotonic()
            late = threading.Thread(target=eng.complete_sync, args=(list(range(30, 40)),), kwargs={"max_tokens": 1})
            late.start()
            time.sleep(reading_s)
        late.join(10)
        assert launches[0][1] == 1  # the long stream still decoding
        assert held_s - 0.03 < launches[0][0] - sent < held_s + 0.2
    finally:
        eng.shutdown()
        running.join(10)
    assert len(ended_by_shutdown) == 1  # the long stream was still decoding, and ended with an error, not silently
