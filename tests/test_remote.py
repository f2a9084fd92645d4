"""RemoteEngine: the API served from a fleet of real upstream servers on loopback.

Three upstreams run in subprocesses (hypercorn serving ``server_apps:raw_asgi``, which exposes the
engine's live counts at ``/stats``): ``a`` and ``b`` serve the tiny chat model, ``c`` MiniLM.
The front is ``LLMMiddleware(app, engine=RemoteEngine([a, b, c]))`` served by hypercorn in this process.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask
from remote_servers import FrontServer, front_home, wait_until
from servers import free_port, launch, server_env, wait_until_up

from llm_middleware import EngineNotReadyError, InvalidRequestError, LLMMiddleware, ModelNotFoundError, RemoteEngine
from llm_middleware.remote import UpstreamTimeoutError

# No worker subprocess (--workers 0): killing the server process then really stops serving.
UPSTREAM_APP = ["-m", "hypercorn", "--workers", "0", "server_apps:raw_asgi"]
HELLO = [{"role": "user", "content": "Hello"}]
# Long enough (seconds of decoding on CPU) to still be running while a test looks at it.
LONG = {"messages": HELLO, "stream": True, "max_tokens": 2000, "min_tokens": 2000}


@dataclass
class UpstreamProcess:
    """One upstream server process, restartable on its port."""

    env: dict[str, str]
    port: int
    process: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return self.url + "/ai/v1"

    def start(self) -> None:
        self.process = launch(UPSTREAM_APP, self.port, self.env)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def running(self) -> int:
        return json.loads(httpx.get(self.url + "/stats", timeout=5).text)["running"]

    def generated(self) -> float:
        """Completion tokens of the requests this upstream finished; a cancelled request adds none."""
        metrics = httpx.get(self.url + "/ai/metrics", timeout=5).text.splitlines()
        return sum(float(line.split()[-1]) for line in metrics if line.startswith("llm_completion_tokens_total"))


@dataclass
class Fleet:
    a: UpstreamProcess
    b: UpstreamProcess
    c: UpstreamProcess
    chat_model: str  # the upstream id of the chat model (published as "chat")
    embed_model: str
    engine: RemoteEngine
    front: str  # the front's base URL

    def running(self) -> tuple[int, int]:
        return self.a.running(), self.b.running()

    def generated(self) -> float:
        return self.a.generated() + self.b.generated()

    def cancelled_since(self, generated: float, what: str) -> None:
        """Wait until the chat upstreams run nothing, and check that what they ran was cancelled: a request
        that ran to its end would have added its tokens to what they had ``generated``."""
        wait_until(lambda: self.running() == (0, 0), 120, what)
        assert self.generated() == generated


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def fleet(tiny_model_dir: Path, minilm_dir: Path) -> Iterator[Fleet]:
    chat_env = server_env(tiny_model_dir)
    a, b = UpstreamProcess(chat_env, free_port()), UpstreamProcess(chat_env, free_port())
    c = UpstreamProcess({**chat_env, "LLM_MODEL": str(minilm_dir)}, free_port())
    upstreams = [a, b, c]
    try:
        for upstream in upstreams:
            upstream.start()
        for upstream in upstreams:
            wait_until_up(upstream.url, upstream.process)
        chat_model = httpx.get(a.base + "/models").json()["data"][0]["id"]
        embed_model = httpx.get(c.base + "/models").json()["data"][0]["id"]
        engine = RemoteEngine([a.base, b.base, c.base], model_map={"chat": chat_model}, health_interval=0.5, timeout=30)
        with FrontServer(LLMMiddleware(front_home, base_path="/ai", engine=engine)) as front:
            wait_until(lambda: _answers(front.url + "/ai/health"), 60, "the front coming up")
            yield Fleet(a, b, c, chat_model, embed_model, engine, front.url)
        engine.shutdown()
    finally:
        for upstream in upstreams:
            if upstream.process.poll() is None:
                upstream.kill()


async def _events(response: httpx.Response) -> AsyncIterator[Any]:
    """The ``data:`` payloads of a server-sent event stream, as they arrive."""
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            yield payload if payload == "[DONE]" else json.loads(payload)


class LongStreams:
    """``n`` concurrent long chat streams through the front, closed together on exit."""

    def __init__(self, client: httpx.AsyncClient, n: int, tokens: int = 2000) -> None:
        self._client = client
        self._n = n
        self._body = {**LONG, "max_tokens": tokens, "min_tokens": tokens}

    async def __aenter__(self) -> list[httpx.Response]:
        path = "/ai/v1/chat/completions"
        requests = [self._client.build_request("POST", path, json=self._body) for _ in range(self._n)]
        self._responses = list(await asyncio.gather(*(self._client.send(r, stream=True) for r in requests)))
        assert all(r.status_code == 200 for r in self._responses)
        return self._responses

    async def __aexit__(self, *exc: object) -> None:
        for response in self._responses:
            await response.aclose()


async def _whole_tokens(completion: Any) -> int:
    return (await completion).usage.completion_tokens


async def _streamed_tokens(deltas: Any) -> int:
    return [d async for d in deltas][-1].usage.completion_tokens


def test_models_are_the_union_of_the_upstreams_renamed(fleet: Fleet) -> None:
    models = httpx.get(fleet.front + "/ai/v1/models").json()["data"]
    assert [(m["id"], m["task"], m["state"]) for m in models] == [
        ("chat", "generate", "ready"), (fleet.embed_model, "embed", "ready"),
    ]
    assert models[0]["max_model_len"] == 2048 and models[0]["random_weights"] is True
    assert httpx.get(fleet.front + "/ai/v1/models/chat").json()["id"] == "chat"
    unknown = httpx.post(fleet.front + "/ai/v1/chat/completions", json={"model": "gpt-9", "messages": HELLO})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert f"chat, {fleet.embed_model}" in unknown.json()["error"]["message"]
    assert httpx.get(fleet.front + "/").text == "front home"
    # The middleware's metrics read engine.stats(): the remote engine has the same keys.
    metrics = httpx.get(fleet.front + "/ai/metrics")
    assert metrics.status_code == 200 and 'llm_running_sequences{model="chat"} 0.0' in metrics.text


async def test_streams_are_balanced_passed_through_and_cancelled_upstream(fleet: Fleet) -> None:
    generated = fleet.generated()
    async with httpx.AsyncClient(base_url=fleet.front, timeout=30) as client:
        async with LongStreams(client, 4) as streams:
            # (The readers must stay referenced: collecting one would close its response.)
            readers = [_events(response) for response in streams]
            firsts = [[await anext(events) for _ in range(3)] for events in readers]
            # Least outstanding requests: two streams on each chat upstream, all still decoding
            # there while their first chunks already arrived here (no buffering on the way).
            assert fleet.running() == (2, 2)
            for response, events in zip(streams, firsts, strict=True):
                request_id = response.headers["x-request-id"]
                assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
                assert all(e["id"] == request_id and e["model"] == "chat" for e in events)
                assert all(e["object"] == "chat.completion.chunk" for e in events)
        # The clients went away: each cancellation reaches its upstream, which ends the request there.
        await asyncio.to_thread(fleet.cancelled_since, generated, "upstream cancellation")
    assert fleet.c.running() == 0


async def test_usage_ids_and_every_route_pass_through(fleet: Fleet) -> None:
    async with httpx.AsyncClient(base_url=fleet.front, timeout=30) as client:
        body = {"model": "chat", "messages": HELLO, "max_tokens": 8, "min_tokens": 8,
                "stream": True, "stream_options": {"include_usage": True}}
        headers = {"x-request-id": "trace-7"}
        async with client.stream("POST", "/ai/v1/chat/completions", json=body, headers=headers) as response:
            events = [e async for e in _events(response)]
        assert events[-1] == "[DONE]"
        *chunks, usage = events[:-1]
        assert all(e["id"] == "trace-7" and e["model"] == "chat" for e in events[:-1])
        assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 8
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"

        body = {"model": "chat", "prompt": "Hi", "max_tokens": 5, "min_tokens": 5}
        whole = (await client.post("/ai/v1/completions", json=body)).json()
        assert whole["id"].startswith("cmpl-") and whole["model"] == "chat" and whole["usage"]["completion_tokens"] == 5

        texts = ["a cat sleeps on the sofa", "a kitten naps on the couch", "quarterly stock market results"]
        embedded = (await client.post("/ai/v1/embeddings", json={"model": fleet.embed_model, "input": texts})).json()
        vectors = [item["embedding"] for item in embedded["data"]]
        assert len(vectors) == 3 and len(vectors[0]) == 384

        def cosine(x: list[float], y: list[float]) -> float:
            dot = sum(p * q for p, q in zip(x, y, strict=True))
            return dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))

        assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.2

        tokens = (await client.post("/ai/tokenize", json={"model": "chat", "prompt": "hello world"})).json()
        assert tokens["count"] == len(tokens["tokens"]) > 0
        text = (await client.post("/ai/detokenize", json={"model": "chat", "tokens": tokens["tokens"]})).json()
        assert text["prompt"] == "hello world"

        body = {"model": "chat", "messages": HELLO, "temperature": -1}
        refused = await client.post("/ai/v1/chat/completions", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "temperature"
    assert fleet.c.running() == 0


async def test_engine_api_over_the_fleet(fleet: Fleet) -> None:
    engine = fleet.engine
    reply = await engine.chat(HELLO, model="chat", max_tokens=4, min_tokens=4)
    assert reply.model == "chat" and reply.usage.completion_tokens == 4 and reply.choices[0].finish_reason == "length"
    deltas = [d async for d in engine.stream_complete("Once upon", max_tokens=6, min_tokens=6)]
    assert "".join(d.text for d in deltas) and deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == 6
    assert engine.chat_sync(HELLO, max_tokens=3).usage.completion_tokens == 3
    vectors = (await engine.embed(["a", "b"])).vectors
    assert len(vectors) == 2 and len(vectors[0]) == 384
    assert engine.detokenize(engine.tokenize("hello world", model="chat"), model="chat") == "hello world"
    with pytest.raises(InvalidRequestError, match="not supported by a remote engine"):
        engine.apply_chat_template(HELLO)
    with pytest.raises(ModelNotFoundError, match="available models: chat"):
        await engine.chat(HELLO, model="gpt-9")
    with pytest.raises(InvalidRequestError, match="top_p"):
        engine.chat_sync(HELLO, top_p=2.0)

    generated = fleet.generated()
    stream = engine.stream_chat(HELLO, max_tokens=2000, min_tokens=2000)
    await anext(stream)
    assert sum(fleet.running()) == 1
    await stream.aclose()
    await asyncio.to_thread(fleet.cancelled_since, generated, "cancellation of an engine stream")
    assert engine.stats("chat")["running"] == 0


def test_a_wsgi_app_streams_from_the_fleet_and_cancels_on_close(fleet: Fleet) -> None:
    flask_app = Flask(__name__)

    @flask_app.get("/ask")
    def ask() -> dict[str, int]:
        return {"tokens": wrapped.engine.chat_sync(HELLO, max_tokens=3, min_tokens=3).usage.completion_tokens}

    wrapped = LLMMiddleware(flask_app.wsgi_app, base_path="/ai", engine=fleet.engine)
    flask_app.wsgi_app = wrapped  # type: ignore[method-assign]
    client = flask_app.test_client()
    try:
        assert client.get("/ask").json == {"tokens": 3}
        greedy = {"messages": HELLO, "max_tokens": 5, "min_tokens": 5, "temperature": 0}
        whole = client.post("/ai/v1/chat/completions", json=greedy).json
        assert whole is not None and whole["usage"]["completion_tokens"] == 5
        streamed = client.post("/ai/v1/chat/completions",
                               json={**greedy, "stream": True, "stream_options": {"include_usage": True}})
        assert streamed.text.endswith("\n\ndata: [DONE]\n\n")
        events = [json.loads(e.removeprefix("data: ")) for e in streamed.text.split("\n\n")[:-2]]
        # The role chunk, the content, the finish and the usage, in that order, with every token on the way:
        # the text is the whole answer's (both upstreams decode greedily with the same weights).
        *chunks, usage = events
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[-1]["choices"][0]["finish_reason"] == "length" and usage["usage"]["completion_tokens"] == 5
        assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks[:-1])
        text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
        assert text == whole["choices"][0]["message"]["content"]

        generated = fleet.generated()
        long = client.post("/ai/v1/chat/completions", json=LONG, buffered=False)
        body = iter(long.response)
        next(body), next(body)
        assert sum(fleet.running()) == 1
        long.close()  # what a WSGI server does when the client goes away
        fleet.cancelled_since(generated, "cancellation through WSGI")
    finally:
        wrapped.close()


async def test_shutdown_ends_requests_in_flight_and_start_begins_afresh(fleet: Fleet) -> None:
    engine = RemoteEngine(fleet.a.base, health_interval=60)
    await engine.wait_ready()
    generated = fleet.generated()
    stream = engine.stream_chat(HELLO, max_tokens=2000, min_tokens=2000)
    await anext(stream)
    await asyncio.to_thread(engine.shutdown)
    assert engine.state == "stopped"
    with pytest.raises(EngineNotReadyError, match="shutting down"):
        async for _ in stream:
            pass
    await asyncio.to_thread(fleet.cancelled_since, generated, "the upstream request ending")
    engine.start()
    await engine.wait_ready(10)
    assert (await engine.chat(HELLO, max_tokens=2, min_tokens=2)).usage.completion_tokens == 2
    engine.shutdown()


async def test_a_timed_out_request_fails_alone_and_ends_upstream(fleet: Fleet) -> None:
    impatient = RemoteEngine(fleet.a.base, timeout=0.3, health_interval=60)
    await impatient.wait_ready()
    generated = fleet.generated()
    with pytest.raises(UpstreamTimeoutError, match="did not answer in time"):
        await impatient.chat(HELLO, max_tokens=2000, min_tokens=2000)  # the whole answer takes far longer
    # The generation was too long for the timeout: the upstream is not to blame, it stays in rotation.
    [status] = impatient.upstreams()
    assert status.healthy and status.error is None and impatient.state == "ready"
    await asyncio.to_thread(fleet.cancelled_since, generated, "the timed-out request ending upstream")
    impatient.shutdown()


def test_http2_option_serves_requests(fleet: Fleet) -> None:
    engine = RemoteEngine(fleet.a.base, http2=True)  # plain http: HTTP/2 is only negotiated over TLS
    try:
        assert engine.chat_sync(HELLO, max_tokens=2, min_tokens=2).usage.completion_tokens == 2
    finally:
        engine.shutdown()


async def test_failover_and_recovery(fleet: Fleet) -> None:
    # An engine that will not notice by itself that b died: its next health check is a minute away.
    unaware = RemoteEngine([fleet.a.base, fleet.b.base], health_interval=60)
    await unaware.wait_ready()
    async with httpx.AsyncClient(base_url=fleet.front, timeout=30) as client:
        async with LongStreams(client, 2, tokens=1000) as streams:
            readers = [_events(response) for response in streams]
            for events in readers:
                await anext(events)
            assert fleet.running() == (1, 1)
            fleet.b.kill()
            ends = [[e async for e in events] for events in readers]
        # The stream on b had started: it ends with an error event, not a replay; a's stream completes.
        broken = [end for end in ends if any("error" in e for e in end[:-1])]
        whole = [end for end in ends if end not in broken]
        assert len(broken) == 1 and len(whole) == 1
        assert broken[0][-2]["error"]["code"] == "upstream_failed" and broken[0][-1] == "[DONE]"
        assert fleet.b.url not in json.dumps(broken[0][-2])  # which upstream failed, and how, is for the log
        assert whole[0][-2]["choices"][0]["finish_reason"] == "length" and whole[0][-1] == "[DONE]"

        answers = await asyncio.gather(*(
            client.post("/ai/v1/chat/completions", json={"messages": HELLO, "max_tokens": 3}) for _ in range(6)
        ))
        assert [r.status_code for r in answers] == [200] * 6

    # Requests that find nothing listening on b move to a: none fails.
    counts = await asyncio.gather(
        *(_whole_tokens(unaware.chat(HELLO, max_tokens=3, min_tokens=3)) for _ in range(4)),
        *(_streamed_tokens(unaware.stream_chat(HELLO, max_tokens=3, min_tokens=3)) for _ in range(2)),
    )
    assert counts == [3] * 6
    a_status, b_status = unaware.upstreams()
    assert a_status.healthy and not b_status.healthy and b_status.requests >= 1
    assert "health check" not in (b_status.error or "")  # a request found b dead, not a check
    unaware.shutdown()

    # b comes back on its port; a health check returns it to rotation and traffic spreads again.
    fleet.b.start()
    wait_until_up(fleet.b.url, fleet.b.process)
    def b_serves() -> bool:
        status = fleet.engine.upstreams()[1]
        return status.healthy and fleet.chat_model in status.models

    await asyncio.to_thread(wait_until, b_serves, 60, "recovery of b")
    async with httpx.AsyncClient(base_url=fleet.front, timeout=30) as client, LongStreams(client, 2) as streams:
        readers = [_events(response) for response in streams]
        for events in readers:
            await anext(events)
        assert fleet.running() == (1, 1)


def test_forwarded_requests_are_counted_in_metrics(fleet: Fleet) -> None:
    def completion_tokens() -> float:
        text = httpx.get(fleet.front + "/ai/metrics").text
        line = next((ln for ln in text.splitlines() if ln.startswith('llm_completion_tokens_total{model="chat"}')), "")
        return float(line.split()[-1]) if line else 0.0

    before = completion_tokens()
    body = {"model": "chat", "messages": HELLO, "max_tokens": 3, "ignore_eos": True}
    whole = httpx.post(fleet.front + "/ai/v1/chat/completions", json=body, timeout=30).json()
    streamed = httpx.post(fleet.front + "/ai/v1/chat/completions", timeout=30,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.status_code == 200 and whole["usage"]["completion_tokens"] == 3
    assert completion_tokens() == before + 6


async def test_responses_over_the_fleet(fleet: Fleet) -> None:
    """The Responses API runs over the remote engine's chat streams; the store stays at the front."""
    async with httpx.AsyncClient(base_url=fleet.front, timeout=30) as client:
        body = {"model": "chat", "input": "Hello", "max_output_tokens": 5, "min_tokens": 5}
        first = (await client.post("/ai/v1/responses", json=body)).json()
        assert first["status"] == "incomplete" and first["model"] == "chat" and first["usage"]["output_tokens"] == 5
        assert (await client.get(f"/ai/v1/responses/{first['id']}")).json() == first
        async with client.stream("POST", "/ai/v1/responses",
                                 json={**body, "previous_response_id": first["id"], "stream": True}) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        events = [json.loads(line.removeprefix("data: ")) for line in lines]
        assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.incomplete"
        assert events[-1]["response"]["previous_response_id"] == first["id"]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        missing = await client.post("/ai/v1/responses", json={**body, "previous_response_id": "resp_gone"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "previous_response_not_found"
