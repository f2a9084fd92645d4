"""Faults: a failing model step ends only the requests in it; a model that fails to load answers 503."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker, idle_stats, kv_accounting
from test_dispatch import ShopASGI, asgi_request

from llm_middleware.engine.engine import Engine
from llm_middleware.middleware import LLMMiddleware

CHAT = {"messages": [{"role": "user", "content": "Hello"}]}


class StepFault:
    """A ``before_step`` hook that makes the next model step raise, once armed."""

    def __init__(self) -> None:
        self.armed = False
        self.fired = 0

    def __call__(self, batch: Any) -> None:
        if self.armed:
            self.armed = False
            self.fired += 1
            raise RuntimeError("injected fault")


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    """One sequence per step: a request waiting for the slot is never in the running one's step."""
    engine = Engine(tiny_model_dir, max_model_len=512, max_batch_size=1, seed=0)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


@pytest.fixture
def fault(engine: Engine) -> Iterator[StepFault]:
    worker = default_worker(engine)
    fault = StepFault()
    worker.before_step = fault
    yield fault
    worker.before_step = None


async def settle(engine: Engine) -> dict[str, int]:
    return kv_accounting(await idle_stats(engine, timeout=4.0))


async def test_step_failure_before_the_first_token_is_a_500(
    engine: Engine, fault: StepFault, caplog: pytest.LogCaptureFixture
) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine)
    before = await settle(engine)
    fault.armed = True
    for stream in (False, True):  # a stream that fails before its first token is an HTTP error too
        fault.armed = True
        status, headers, body = await asgi_request(mw, "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 4, "stream": stream})
        assert status == 500 and headers["content-type"] == "application/json"
        error = json.loads(body)["error"]
        assert error["type"] == "server_error" and error["code"] == "engine_error"
        # The exception's text goes to the log, under the request id the client is told.
        assert "injected fault" not in error["message"] and headers["x-request-id"] in error["message"]
        assert any(headers["x-request-id"] in r.getMessage() and "injected fault" in r.exc_text for r in caplog.records
                   if r.exc_text)
    assert fault.fired == 2
    assert await settle(engine) == before
    status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 3})
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3


async def test_step_failure_mid_stream_fails_only_that_step(engine: Engine, fault: StepFault) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine)
    before = await settle(engine)
    running = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 400, "min_tokens": 400})
    assert await running.start() == 200
    first = await running.next_event()
    assert first["choices"][0]["delta"]["role"] == "assistant"
    await running.next_event()
    # A second request waits for the only batch slot: it is not in the step that fails.
    waiting = asyncio.create_task(asgi_request(mw, "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 3}))
    for _ in range(500):
        if engine.stats()["waiting"] == 1:
            break
        await asyncio.sleep(0.01)
    assert engine.stats()["waiting"] == 1
    fault.armed = True
    rest = await running.rest()
    assert rest[-1] == "[DONE]"
    assert rest[-2]["error"]["code"] == "engine_error" and "injected fault" not in rest[-2]["error"]["message"]
    assert first["id"] in rest[-2]["error"]["message"]
    assert all("choices" in event for event in rest[:-2])
    status, _, body = await waiting
    assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 3
    assert await settle(engine) == before


async def test_model_that_fails_to_load(tmp_path: Path) -> None:
    shop = ShopASGI()
    mw = LLMMiddleware(shop, model=tmp_path / "no-such-model")
    try:
        await asgi_request(mw, "/ai/health")  # the first request starts loading, which fails at once
        for _ in range(200):
            if mw.engine.state == "failed":
                break
            await asyncio.sleep(0.02)
        status, headers, body = await asgi_request(mw, "/ai/health")
        error = json.loads(body)["error"]
        # Where the model was looked for is the host's business (engine.error), not the client's.
        assert status == 503 and error["code"] == "engine_failed" and str(tmp_path) not in error["message"]
        assert headers["x-request-id"] in error["message"] and str(tmp_path) in (mw.engine.error or "")
        for path, payload in [
            ("/ai/v1/chat/completions", {**CHAT, "max_tokens": 2}),
            ("/ai/v1/chat/completions", {**CHAT, "max_tokens": 2, "stream": True}),
            ("/ai/v1/completions", {"prompt": "Hi", "max_tokens": 2}),
            ("/ai/v1/embeddings", {"input": "Hi"}),
            ("/ai/tokenize", {"prompt": "Hi"}),
            ("/ai/detokenize", {"tokens": [1, 2]}),
        ]:
            status, headers, body = await asgi_request(mw, path, json=payload)
            error = json.loads(body)["error"]
            assert status == 503 and error["code"] == "engine_unavailable", (path, body)
            assert "failed to load" in error["message"] and str(tmp_path) not in error["message"]
            assert "retry-after" in headers
        # Listing models still answers: it is how clients see which model failed.
        status, _, body = await asgi_request(mw, "/ai/v1/models")
        assert status == 200 and json.loads(body)["data"][0]["state"] == "failed"
        status, _, body = await asgi_request(mw, "/shop/page")
        assert status == 201 and body == b"shop:/shop/page"
    finally:
        mw.close()
