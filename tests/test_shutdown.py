"""Per-request timeouts, and draining on shutdown: in process, and through a real server stopped by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker, idle_stats, kv_accounting
from servers import free_port, launch, server_env, wait_until_up
from test_dispatch import ShopASGI, asgi_request

from llm_middleware.engine.engine import Engine
from llm_middleware.errors import EngineNotReadyError
from llm_middleware.middleware import LLMMiddleware

CHAT = {"messages": [{"role": "user", "content": "Hello"}]}
#: At least 8 s of steps on ``slow_engine``: longer than any timeout or drain of these tests.
LONG = {**CHAT, "max_tokens": 400, "min_tokens": 400}


@pytest.fixture(scope="module")
def slow_engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """An engine whose steps take at least 20 ms, so that a long answer takes seconds."""
    engine = Engine(tiny_model_dir, max_model_len=512, max_batch_size=2, seed=0)
    engine.wait_ready_sync(120)
    default_worker(engine).before_step = lambda batch: time.sleep(0.02)
    yield engine
    engine.shutdown()


async def idle(engine: Engine) -> dict[str, int]:
    return kv_accounting(await idle_stats(engine, timeout=6.0))


# ---- request timeout ----------------------------------------------------------------------------


async def test_timeout_of_a_whole_answer_is_a_504_and_cancels_the_request(slow_engine: Engine) -> None:
    before = await idle(slow_engine)
    mw = LLMMiddleware(ShopASGI(), engine=slow_engine, request_timeout=0.5)
    status, headers, body = await asgi_request(mw, "/ai/v1/chat/completions", json=LONG)
    assert status == 504
    error = json.loads(body)["error"]
    assert error["code"] == "timeout" and error["type"] == "server_error" and "0.5 seconds" in error["message"]
    assert await idle(slow_engine) == before


async def test_timeout_mid_stream_ends_with_an_error_event_and_done(slow_engine: Engine) -> None:
    before = await idle(slow_engine)
    # Long enough for the first tokens on a loaded machine, far shorter than the answer.
    mw = LLMMiddleware(ShopASGI(), engine=slow_engine, request_timeout=3)
    stream = ASGIStream(mw, "/ai/v1/chat/completions", {**LONG, "stream": True})
    assert await stream.start() == 200
    events = await stream.rest()
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "timeout"
    assert len(events) > 3 and all("choices" in e for e in events[:-2])
    assert await idle(slow_engine) == before


async def test_no_timeout_when_disabled(slow_engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=slow_engine, request_timeout=None)
    status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 30, "min_tokens": 30})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 30
    with pytest.raises(ValueError, match="request_timeout"):
        LLMMiddleware(ShopASGI(), engine=slow_engine, request_timeout=0)


# ---- drain, in process --------------------------------------------------------------------------


async def test_drain_refuses_new_requests_and_ends_the_stragglers(slow_engine: Engine) -> None:
    before = await idle(slow_engine)
    # The short answer ends within the drain on any machine; the long one cannot (8 s of steps at least).
    mw = LLMMiddleware(ShopASGI(), engine=slow_engine, drain_timeout=5)
    short = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 4, "min_tokens": 4})
    long = ASGIStream(mw, "/ai/v1/chat/completions", {**LONG, "stream": True})
    assert await short.start() == 200 and await long.start() == 200
    await short.next_event()
    await long.next_event()
    drain = asyncio.create_task(mw.drain())
    await asyncio.sleep(0)  # the drain task's first step runs now: from then on, requests are refused
    status, headers, body = await asgi_request(mw, "/ai/v1/models")
    assert status == 503 and json.loads(body)["error"]["code"] == "shutting_down" and headers["retry-after"]
    assert (await asgi_request(mw, "/ai/health"))[0] == 503
    assert (await asgi_request(mw, "/shop"))[0] == 201  # the wrapped app is not drained
    short_events = await short.rest()
    assert short_events[-1] == "[DONE]" and short_events[-2]["choices"][0]["finish_reason"] == "length"
    long_events = await long.rest()
    assert long_events[-1] == "[DONE]" and long_events[-2]["error"]["code"] == "shutting_down"
    await asyncio.wait_for(drain, 10)
    assert await idle(slow_engine) == before


async def test_lifespan_shutdown_drains_before_stopping_the_engine(tiny_model_dir: Path) -> None:
    from asgiref.testing import ApplicationCommunicator

    # The drain ends when the stream does: its timeout only guards against a hang.
    mw = LLMMiddleware(ShopASGI(), model=tiny_model_dir, drain_timeout=60)
    lifespan = ApplicationCommunicator(mw, {"type": "lifespan", "asgi": {"version": "3.0"}})
    await lifespan.send_input({"type": "lifespan.startup"})
    assert (await lifespan.receive_output(10))["type"] == "lifespan.startup.complete"
    await mw.engine.wait_ready(60)
    stream = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 40, "min_tokens": 40})
    assert await stream.start() == 200
    await stream.next_event()
    await lifespan.send_input({"type": "lifespan.shutdown"})
    events = await stream.rest()
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert (await lifespan.receive_output(30))["type"] == "lifespan.shutdown.complete"
    assert mw.engine.state == "stopped"


# ---- SIGTERM to a real server -------------------------------------------------------------------


def stream_events(url: str, body: dict[str, Any], started: threading.Event, out: list[Any]) -> None:
    """POST a streamed chat to ``url`` and collect its events; ``started`` is set at the first one."""
    with httpx.stream("POST", url, json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                out.append(payload if payload == "[DONE]" else json.loads(payload))
                started.set()


def test_sigterm_drains_then_stops(tiny_model_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = launch(["-m", "draining_app"], port, {**server_env(tiny_model_dir), "DRAIN_TIMEOUT": "6"})
    try:
        wait_until_up(url, process)
        chat = url + "/ai/v1/chat/completions"
        # Steps take 50 ms: one answer finishes within the drain, the other would take minutes.
        finishing: list[Any] = []
        endless: list[Any] = []
        started = [threading.Event(), threading.Event()]
        short = {**CHAT, "stream": True, "max_tokens": 8, "min_tokens": 8}
        long = {**CHAT, "stream": True, "max_tokens": 1900, "ignore_eos": True}
        threads = [
            threading.Thread(target=stream_events, args=(chat, short, started[0], finishing)),
            threading.Thread(target=stream_events, args=(chat, long, started[1], endless)),
        ]
        for thread in threads:
            thread.start()
        assert all(event.wait(30) for event in started)
        process.send_signal(signal.SIGTERM)
        draining = httpx.get(url + "/ai/health", timeout=10)
        while draining.status_code == 200:  # until the server has taken the signal
            draining = httpx.get(url + "/ai/health", timeout=10)
        assert draining.json()["error"]["code"] == "shutting_down"
        refused = httpx.post(chat, json={**CHAT, "max_tokens": 2}, timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down", refused.text
        for thread in threads:
            thread.join(30)
        assert finishing[-1] == "[DONE]" and "choices" in finishing[-2], (len(finishing), finishing[-2:])
        assert finishing[-2]["choices"][0]["finish_reason"] == "length"
        assert endless[-1] == "[DONE]" and endless[-2]["error"]["code"] == "shutting_down", endless[-3:]
        assert process.wait(30) == 0
        stderr = process.stderr.read().decode()  # type: ignore[union-attr]
        assert "engine state after shutdown: stopped" in stderr and "Traceback" not in stderr, stderr[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- races with a stop, and loads cut short -----------------------------------------------------


def in_thread(call: Any) -> Any:
    """``call()`` run on a thread of its own: its result or exception (the join only guards against a hang)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert outcome, f"{call} did not return"
    return outcome[0]


def test_a_request_submitted_while_the_engine_stops_fails_instead_of_waiting_forever(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_middleware.engine.workers import requests as request_factory

    engine = Engine(tiny_model_dir, max_model_len=256, seed=0)
    engine.wait_ready_sync(120)
    build = request_factory.GenerationRequest

    def stop_first(*args: Any) -> Any:
        # The request has passed the worker's checks and is about to be queued: the engine stops now.
        engine.shutdown()
        return build(*args)

    monkeypatch.setattr(request_factory, "GenerationRequest", stop_first)
    try:
        outcome = in_thread(lambda: engine.chat_sync([{"role": "user", "content": "Hi"}], max_tokens=2))
        assert isinstance(outcome, EngineNotReadyError) and outcome.status == 503, outcome
        assert engine.state == "stopped"
    finally:
        engine.shutdown()


def test_a_stopped_engine_stays_stopped_until_started(tiny_model_dir: Path) -> None:
    engine = Engine(tiny_model_dir, max_model_len=256, seed=0)
    engine.wait_ready_sync(120)
    engine.shutdown()
    try:
        hello = [{"role": "user", "content": "Hi"}]
        for call in (lambda: engine.chat_sync(hello, max_tokens=2), lambda: asyncio.run(engine.chat(hello, max_tokens=2)),
                     lambda: engine.tokenize("Hi"), lambda: engine.wait_ready_sync(5)):
            with pytest.raises(EngineNotReadyError, match="stopped"):
                call()
        assert engine.state == "stopped"
        engine.start()
        engine.wait_ready_sync(120)
        assert engine.chat_sync(hello, max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    finally:
        engine.shutdown()


class GatedLoads:
    """Holds each tokenizer load (the first step of a model load) until ``release``; records the
    order in which loads enter and leave that step, and which go on to load weights."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.gate = threading.Event()
        self.entered = threading.Event()
        self.steps: list[str] = []
        tokenizer, weights = AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained

        def held_tokenizer(*args: Any, **kwargs: Any) -> Any:
            self.steps.append("tokenizer")
            self.entered.set()
            self.gate.wait(60)
            self.steps.append("tokenizer loaded")
            return tokenizer(*args, **kwargs)

        def counted_weights(*args: Any, **kwargs: Any) -> Any:
            self.steps.append("weights")
            return weights(*args, **kwargs)

        monkeypatch.setattr(AutoTokenizer, "from_pretrained", held_tokenizer)
        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", counted_weights)


def load_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llm-load")]


def test_shutdown_during_a_load_returns_at_once_and_the_load_stops_at_its_next_step(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = GatedLoads(monkeypatch)
    engine = Engine(tiny_model_dir, max_model_len=256, seed=0)
    try:
        engine.start()
        assert loads.entered.wait(60)
        assert in_thread(engine.shutdown) is None  # while the tokenizer step is still held
        assert engine.state == "stopped" and load_threads()
        with pytest.raises(EngineNotReadyError, match="stopped"):
            engine.complete_sync("Hi", max_tokens=2)
        loads.gate.set()
        for thread in load_threads():
            thread.join(60)
        # The held step finished; the load went no further, and no worker ever started.
        assert loads.steps == ["tokenizer", "tokenizer loaded"]
        assert engine.state == "stopped" and default_worker(engine) is None
    finally:
        loads.gate.set()
        engine.shutdown()


def test_a_restart_waits_for_the_abandoned_load_to_end(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = GatedLoads(monkeypatch)
    engine = Engine(tiny_model_dir, max_model_len=256, seed=0)
    try:
        engine.start()
        assert loads.entered.wait(60)
        engine.shutdown()
        engine.start()  # the first load is still held in its tokenizer step
        assert engine.state == "loading"
        loads.gate.set()
        engine.wait_ready_sync(120)
        # Never two loads at once: the second began after the abandoned one left its step.
        assert loads.steps == ["tokenizer", "tokenizer loaded", "tokenizer", "tokenizer loaded", "weights"]
        assert engine.complete_sync("Hi", max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    finally:
        loads.gate.set()
        engine.shutdown()
