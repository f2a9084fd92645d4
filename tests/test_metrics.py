"""``{base}/metrics`` in Prometheus text format, and the access log line of every request."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgi_streams import ASGIStream
from engine_state import default_worker
from prometheus_client.parser import text_string_to_metric_families
from test_dispatch import ShopASGI, asgi_request, shop_wsgi, wsgi_call

from llm_middleware.engine.engine import Engine
from llm_middleware.middleware import LLMMiddleware
from llm_middleware.middleware.observe.access_log import log_access
from llm_middleware.middleware.observe.exchange import Exchange

CHAT = {"messages": [{"role": "user", "content": "Hello"}]}


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    engine = Engine(tiny_model_dir, name="tiny", max_model_len=256, seed=0)
    engine.wait_ready_sync(120)
    yield engine
    engine.shutdown()


async def scrape(mw: LLMMiddleware) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, keyed by name and sorted labels."""
    status, headers, body = await asgi_request(mw, "/ai/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [record.access for record in caplog.records if record.name == "llm_middleware.access"]  # type: ignore[attr-defined]


async def test_requests_tokens_latencies_and_engine_gauges(engine: Engine) -> None:
    mw = LLMMiddleware(ShopASGI(), engine=engine)
    other = LLMMiddleware(ShopASGI(), engine=engine)  # its own registry: sees none of mw's requests
    status, _, body = await asgi_request(mw, "/ai/v1/chat/completions", json={**CHAT, "max_tokens": 4, "min_tokens": 4})
    assert status == 200
    usage = json.loads(body)["usage"]
    # The stream's second step waits until its first token was read: the later tokens then come in
    # deltas of their own (one at least, however far the reader lags), each an inter-token latency.
    first_read = threading.Event()
    steps: list[int] = []
    worker = default_worker(engine)
    worker.before_step = lambda batch: (steps.append(1), len(steps) == 2 and first_read.wait(30))
    try:
        stream = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 6, "min_tokens": 6})
        assert await stream.start() == 200
        first_read.set()
        assert (await stream.rest())[-1] == "[DONE]"
    finally:
        first_read.set()
        worker.before_step = None
    assert (await asgi_request(mw, "/ai/v1/models/no-such"))[0] == 404
    assert (await asgi_request(mw, "/ai/nowhere"))[0] == 404

    samples = await scrape(mw)
    assert samples[("llm_requests_total", (("model", "tiny"), ("route", "/v1/chat/completions"), ("status", "200")))] == 2
    assert samples[("llm_requests_total", (("model", ""), ("route", "/v1/models/{model}"), ("status", "404")))] == 1
    assert samples[("llm_requests_total", (("model", ""), ("route", "other"), ("status", "404")))] == 1
    assert samples[("llm_prompt_tokens_total", (("model", "tiny"),))] == 2 * usage["prompt_tokens"]
    assert samples[("llm_completion_tokens_total", (("model", "tiny"),))] == 4 + 6
    assert samples[("llm_time_to_first_token_seconds_count", (("model", "tiny"),))] == 1
    assert 1 <= samples[("llm_inter_token_latency_seconds_count", (("model", "tiny"),))] <= 5
    assert samples[("llm_request_duration_seconds_count", (("route", "/v1/chat/completions"),))] == 2
    stats = engine.stats()
    assert samples[("llm_kv_blocks_free", (("model", "tiny"),))] == stats["free_kv_blocks"]
    assert samples[("llm_kv_blocks_used", (("model", "tiny"),))] == stats["total_kv_blocks"] - stats["free_kv_blocks"]
    assert samples[("llm_waiting_requests", (("model", "tiny"),))] == 0
    assert samples[("llm_running_sequences", (("model", "tiny"),))] == 0
    assert samples[("llm_weight_bytes", (("model", "tiny"),))] == stats["weight_bytes"] > 0
    assert samples[("llm_kv_cache_bytes", (("model", "tiny"),))] == stats["kv_cache_bytes"] > 0

    others = await scrape(other)
    assert not any(name == "llm_requests_total" for name, _ in others)
    assert others[("llm_kv_blocks_free", (("model", "tiny"),))] == stats["free_kv_blocks"]
    assert (await asgi_request(mw, "/ai/metrics", method="POST"))[0] == 405


async def test_access_log_line_per_request(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_middleware.access")
    mw = LLMMiddleware(ShopASGI(), engine=engine, api_keys=["k"], max_body_size=300)
    headers = [("x-api-key", "k"), ("x-request-id", "req-42")]
    stream = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 5, "min_tokens": 5}, headers)
    assert await stream.start() == 200
    await stream.rest()
    walked_away = ASGIStream(mw, "/ai/v1/chat/completions", {**CHAT, "stream": True, "max_tokens": 200, "min_tokens": 200}, headers[:1])
    assert await walked_away.start() == 200
    await walked_away.next_event()
    await walked_away.disconnect()
    assert (await asgi_request(mw, "/ai/v1/models"))[0] == 401
    assert (await asgi_request(mw, "/ai/v1/chat/completions", method="POST", body=b"x" * 500, headers=headers[:1]))[0] == 413
    assert (await asgi_request(mw, "/shop"))[0] == 201  # not ours: not logged

    lines = access_lines(caplog)
    assert [(line["status"], line["outcome"]) for line in lines] == [
        (200, "completed"), (200, "cancelled"), (401, "completed"), (413, "completed")
    ]
    done = lines[0]
    assert done["request_id"] == "req-42" and done["method"] == "POST" and done["path"] == "/ai/v1/chat/completions"
    assert done["model"] == "tiny" and done["stream"] is True and done["completion_tokens"] == 5
    assert done["prompt_tokens"] > 0 and 0 < done["ttft_ms"] <= done["duration_ms"] and done["client"] == "127.0.0.1"
    assert str(lines[1]["request_id"]).startswith("chatcmpl-") and lines[1]["completion_tokens"] == 0
    text = next(r.getMessage() for r in caplog.records if r.name == "llm_middleware.access")
    assert text.startswith("request_id=req-42 method=POST path=/ai/v1/chat/completions status=200 outcome=completed")
    assert "model=tiny stream=true" in text and "completion_tokens=5" in text


async def test_prompts_served_from_the_prefix_cache(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_middleware.access")
    mw = LLMMiddleware(ShopASGI(), engine=engine)
    system = {"role": "system", "content": "You answer questions about the catalogue of a shop. " * 3}
    before = await scrape(mw)
    usages = []
    for question in ("Which lamps are in stock?", "Which chairs are in stock?"):
        body = {"messages": [system, {"role": "user", "content": question}], "max_tokens": 2, "temperature": 0}
        status, _, answer = await asgi_request(mw, "/ai/v1/chat/completions", json=body)
        assert status == 200
        usages.append(json.loads(answer)["usage"])
    first, second = (usage["prompt_tokens_details"]["cached_tokens"] for usage in usages)
    assert first == 0 and 0 < second < usages[1]["prompt_tokens"]  # the second found the system prompt's blocks
    chats = [line for line in access_lines(caplog) if line["path"] == "/ai/v1/chat/completions"]
    assert [line["cached_tokens"] for line in chats] == [0, second]

    after = await scrape(mw)
    model = (("model", "tiny"),)

    def grew(name: str) -> float:
        return after[(name, model)] - before.get((name, model), 0)

    assert grew("llm_prompt_tokens_cached_total") == second
    assert grew("llm_prompt_tokens_computed_total") == sum(u["prompt_tokens"] for u in usages) - second
    served = after[("llm_prompt_tokens_cached_total", model)]
    assert after[("llm_prefix_cache_hit_rate", model)] == pytest.approx(
        served / (served + after[("llm_prompt_tokens_computed_total", model)]))
    assert after[("llm_kv_blocks_cached", model)] >= second // default_worker(engine).blocks.block_size
    assert after[("llm_kv_blocks_used", model)] == 0  # cached blocks that no sequence holds are free


def test_wsgi_stream_is_logged_once_it_is_closed(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_middleware.access")
    mw = LLMMiddleware(shop_wsgi, engine=engine)
    try:
        body = json.dumps({**CHAT, "stream": True, "max_tokens": 3, "min_tokens": 3}).encode()
        status, _, chunks = wsgi_call(mw, "/ai/v1/chat/completions", method="POST", body=body,
                                      headers={"Content-Type": "application/json"})
        assert status.startswith("200") and chunks[-1].endswith(b"data: [DONE]\n\n")
        [line] = access_lines(caplog)
        assert line["outcome"] == "completed" and line["completion_tokens"] == 3 and line["path"] == "/ai/v1/chat/completions"
    finally:
        mw.close()


def test_values_with_spaces_are_quoted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llm_middleware.access")
    exchange = Exchange(method="GET", path="/ai/v1/models/a b", route="/v1/models/{model}", client=None)
    exchange.status = 404
    log_access(exchange)
    text = caplog.records[-1].getMessage()
    assert 'path="/ai/v1/models/a b" status=404' in text and "model=- stream=false" in text and "ttft_ms=-" in text
