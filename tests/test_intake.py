"""The intake count: requests a server is reading, which an idle engine waits for before its first prompt chunk."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker, first_step
from test_dispatch import ShopASGI

from llm_middleware.engine import Engine
from llm_middleware.engine.scheduling.intake import Intake
from llm_middleware.errors import EngineNotReadyError
from llm_middleware.middleware import LLMMiddleware


async def test_a_ticket_counts_until_its_request_or_a_task_it_started_submits() -> None:
    intake = Intake()

    async def submit() -> None:
        Intake.submitted()  # runs in the task, which finds the ticket in the context it inherited

    with intake.reading():
        assert intake.pending == 1
        await asyncio.ensure_future(submit())
        assert intake.pending == 0
        Intake.submitted()  # twice is once
        assert intake.pending == 0
    assert intake.pending == 0
    with intake.reading():  # a thread starts with a context of its own: its submission is not the request's
        thread = threading.Thread(target=Intake.submitted)
        thread.start()
        thread.join()
        assert intake.pending == 1
    assert intake.pending == 0  # a request that submits nothing counts until it ends
    Intake.submitted()  # outside any request: nothing to close
    assert intake.pending == 0


async def test_an_idle_engine_waits_for_a_request_still_being_read(tiny_model_dir: Path) -> None:
    # Windows of 0.2 s: the second request comes two windows after the first (without the count,
    # the first would have started alone), and the wait for it may last 25 (5 s).
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=200)
    await eng.wait_ready()
    first_chunk = first_step(eng, lambda batch: len(batch.prefill))
    try:
        alone = asyncio.ensure_future(eng.complete(list(range(10, 20)), max_tokens=2, ignore_eos=True))
        with eng.intake.reading():  # the server reads a second request while the first is submitted
            await asyncio.sleep(0.4)
            await eng.complete(list(range(30, 40)), max_tokens=2, ignore_eos=True)
        await alone
        assert first_chunk == [2]
    finally:
        eng.shutdown()


def test_a_request_that_never_submits_delays_the_first_chunk_25_windows_at_most(tiny_model_dir: Path) -> None:
    window_ms = 40
    eng = Engine(tiny_model_dir, seed=0, burst_window_ms=window_ms)
    eng.wait_ready_sync()
    launched = first_step(eng, lambda batch: time.monotonic())
    try:
        with eng.intake.reading():  # never closed while the request runs: a thread's submission is not this one's
            sent = time.monotonic()
            thread = threading.Thread(target=eng.complete_sync, args=(list(range(10, 20)),), kwargs={"max_tokens": 1})
            thread.start()
            thread.join(30)
            assert not thread.is_alive()  # answered while the ticket is still open: the wait ended by itself
        assert launched[0] - sent >= 25 * (window_ms / 1000)  # ... after all 25 windows, the ticket being open
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


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition``; the deadline only guards against a hang."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.005)


@pytest.mark.parametrize("reading_ends", [True, False], ids=["until-read", "25-windows"])
def test_a_busy_engine_holds_a_few_prompts_while_a_burst_is_still_being_read(tiny_model_dir: Path,
                                                                            reading_ends: bool) -> None:
    # A step in flight (async scheduling) and a request still being read: the prompt that came
    # first waits for it, until the reading ends or for 25 windows at most, while the running
    # stream decodes.
    window_ms = 200 if reading_ends else 8  # 25 windows: 5 s, far more than the test's reading; or 0.2 s
    eng = Engine(tiny_model_dir, seed=0, async_scheduling=True, burst_window_ms=window_ms)
    eng.wait_ready_sync()

    def long_stream() -> None:
        with contextlib.suppress(EngineNotReadyError):  # still decoding when the engine shuts down
            eng.complete_sync(list(range(10, 20)), ignore_eos=True)

    running = threading.Thread(target=long_stream)
    try:
        running.start()
        _until(lambda: eng.stats()["running"] == 1, "the long stream")
        steps: list[Any] = []  # per launched step: (prompts started, decode rows, when); markers of the test
        default_worker(eng).before_step = lambda batch: steps.append((len(batch.prefill), len(batch.decode),
                                                                      time.monotonic()))
        with eng.intake.reading():
            sent = time.monotonic()
            late = threading.Thread(target=eng.complete_sync, args=(list(range(30, 40)),), kwargs={"max_tokens": 1})
            late.start()
            if reading_ends:
                _until(lambda: eng.stats()["waiting"] == 1, "the late prompt queued")
                queued = len(steps)
                _until(lambda: len(steps) >= queued + 3, "three steps")
                assert [prompts for prompts, _, _ in steps[queued:queued + 3]] == [0, 0, 0]  # held meanwhile
                steps.append("reading ends")
            else:
                late.join(30)
                assert not late.is_alive()  # it ran while the reading went on
        late.join(30)
        prompt_steps = [(i, step) for i, step in enumerate(steps) if step != "reading ends" and step[0]]
        index, (_, decode_rows, launched) = prompt_steps[0]
        assert decode_rows == 1  # the long stream still decoding
        if reading_ends:
            assert index > steps.index("reading ends")  # started once the reading ended, not before
        else:
            assert launched - sent >= 25 * (window_ms / 1000)  # held for all 25 windows
    finally:
        eng.shutdown()
        running.join(10)
