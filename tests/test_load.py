"""Load: many concurrent streams with clients walking away mid-stream, and a full queue answering 429 at once."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker, idle_stats, kv_accounting
from test_dispatch import ShopASGI, asgi_request

from llm_middleware.engine.engine import Engine
from llm_middleware.middleware import LLMMiddleware

PROMPTS = ["Hello", "What is the capital of France?", "Tell me a story about a dragon.", "2 + 2 ="]
MAX_TOKENS = 16


def chat(prompt: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": MAX_TOKENS,
            "min_tokens": MAX_TOKENS, **extra}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine(tiny_model_dir, max_model_len=256, max_batch_size=8, max_waiting=64, seed=0)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


async def idle(engine: Engine) -> dict[str, int]:
    return await idle_stats(engine, timeout=10.0)


async def test_concurrent_streams_with_random_disconnects(engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine)
    expected = {}
    for prompt in PROMPTS:  # each answer alone: a shared batch must not change greedy output
        status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json=chat(prompt))
        assert status == 200
        expected[prompt] = json.loads(body)["choices"][0]["message"]["content"]
    before = await idle(engine)
    rng = random.Random(20240611)
    plans = [(rng.choice(PROMPTS), rng.choice([None, None, 1, 2, 3])) for _ in range(48)]

    async def client(prompt: str, leave_after: int | None) -> str | None:
        stream = ASGIStream(mw, "/ai/v1/chat/completions", chat(prompt, stream=True, stream_options={"include_usage": True}))
        assert await stream.start(60) == 200
        if leave_after is not None:
            for _ in range(leave_after):
                await stream.next_event(60)
            await stream.disconnect()
            return None
        events = await stream.rest(60)
        assert events[-1] == "[DONE]"
        assert events[-2]["usage"]["completion_tokens"] == MAX_TOKENS and events[-2]["choices"] == []
        assert events[-3]["choices"][0]["finish_reason"] == "length"
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-2] if e["choices"])

    began = time.monotonic()
    answers = await asyncio.wait_for(asyncio.gather(*(client(p, k) for p, k in plans)), 120)
    completed = [(prompt, answer) for (prompt, _), answer in zip(plans, answers) if answer is not None]
    assert 0 < len(completed) < len(plans)
    for prompt, answer in completed:
        assert answer == expected[prompt]
    after = await idle(engine)
    assert kv_accounting(after) == kv_accounting(before), f"after {time.monotonic() - began:.1f} s"
    # The prompts repeat: later ones started from blocks the earlier ones left in the prefix cache.
    assert after["cached_prompt_tokens"] > before["cached_prompt_tokens"]


@pytest.fixture(scope="module")
def tight_engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """One sequence decodes, two wait; anything more is refused."""
    engine = Engine(tiny_model_dir, max_model_len=256, max_batch_size=1, max_waiting=2, seed=0)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


async def test_past_max_waiting_is_429_at_once(tight_engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=tight_engine)
    worker = default_worker(tight_engine)
    gate = threading.Event()
    worker.before_step = lambda batch: gate.wait(30)  # hold the running batch in its step
    try:
        admitted = [asyncio.create_task(asgi_request(mw, "/ai/v1/chat/completions", json=chat(p))) for p in PROMPTS[:3]]
        for _ in range(500):
            if tight_engine.stats()["running"] == 1 and tight_engine.stats()["waiting"] == 2:
                break
            await asyncio.sleep(0.01)
        assert tight_engine.stats()["running"] == 1 and tight_engine.stats()["waiting"] == 2
        for stream in (False, True):
            # Answered while the gate still holds every admitted request: the refusal waited for none of them.
            refused = asgi_request(mw, "/ai/v1/chat/completions", json=chat("Hi", stream=stream))
            status, headers, body = await asyncio.wait_for(refused, 60)
            assert not any(task.done() for task in admitted)
            assert status == 429 and int(headers["retry-after"]) >= 1
            assert json.loads(body)["error"]["type"] == "rate_limit_error"
        gate.set()
        for status, _, body in await asyncio.wait_for(asyncio.gather(*admitted), 60):
            assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == MAX_TOKENS
    finally:
        gate.set()
        worker.before_step = None
