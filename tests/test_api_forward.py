"""The API over an engine that forwards OpenAI requests: bodies relayed as sent, answers with only ``id`` rewritten."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

from llm_middleware.api.app import API
from llm_middleware.api.core.http import Request
from llm_middleware.api.openai.forward import ForwardingEngine
from llm_middleware.engine.engine import Engine
from llm_middleware.engine.outputs import ModelInfo
from llm_middleware.errors import EngineStepError, ModelNotFoundError


class RelayingEngine:
    """Answers like an upstream server would, and records what it was asked."""

    def __init__(self, chunks: list[Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any], str]] = []
        default = [{"id": "up", "model": "chat", "choices": [{"delta": {"content": "hi"}}]}]
        self.chunks = chunks if chunks is not None else default
        self.closed = False

    state = "ready"
    error = None

    def models(self) -> list[ModelInfo]:
        return [ModelInfo("chat", "qwen", "generate", 0, 2048, False, "ready")]

    async def forward(self, route: str, body: dict[str, Any], *, request_id: str) -> dict[str, Any]:
        self.calls.append((route, body, request_id))
        if body.get("model") == "gpt-9":
            raise ModelNotFoundError("the model 'gpt-9' does not exist; available models: chat", param="model")
        return {"id": "upstream-id", "model": "chat", "echo": body} if route != "tokenize" else {"tokens": [1, 2]}

    async def forward_stream(self, route: str, body: dict[str, Any], *, request_id: str) -> AsyncGenerator[Any, None]:
        self.calls.append((route, body, request_id))
        try:
            for chunk in self.chunks:
                if isinstance(chunk, Exception):
                    raise chunk
                yield dict(chunk)
        finally:
            self.closed = True


async def _call(
    api: API, path: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request("POST", path, "/ai", {"content-type": "application/json", **(headers or {})}, body=raw)
    response = await api.handle(request)
    if response.stream is None:
        return response.status, dict(response.headers), json.loads(response.body)
    data = b"".join([chunk async for chunk in response.stream]).decode()
    events = [block.removeprefix("data: ") for block in data.split("\n\n") if block]
    return response.status, dict(response.headers), [e if e == "[DONE]" else json.loads(e) for e in events]


def test_only_engines_with_the_capability_forward() -> None:
    assert isinstance(RelayingEngine(), ForwardingEngine)
    assert not isinstance(Engine(), ForwardingEngine)


async def test_whole_requests_are_relayed_as_sent_with_our_id() -> None:
    engine = RelayingEngine()
    api = API(engine)  # type: ignore[arg-type]
    image = {"type": "image_url", "image_url": {"url": "x"}}
    body = {"model": "chat", "messages": [{"role": "user", "content": [image]}], "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f"}}], "vendor_extra": 1}
    status, _, answer = await _call(api, "/v1/chat/completions", body, {"x-request-id": "trace-1"})
    assert status == 200 and answer == {"id": "trace-1", "model": "chat", "echo": body}
    assert engine.calls == [("chat/completions", body, "trace-1")]
    routes = {"/v1/completions": "completions", "/v1/embeddings": "embeddings", "/detokenize": "detokenize"}
    for path, route in routes.items():
        await _call(api, path, {"model": "chat"})
        assert engine.calls[-1][0] == route
    status, _, answer = await _call(api, "/tokenize", {"prompt": "hi"})
    assert answer == {"tokens": [1, 2]} and engine.calls[-1][2].startswith("req-")
    status, _, answer = await _call(api, "/v1/embeddings", {"input": "x", "stream": True})
    assert status == 200 and answer["echo"]["stream"] is True  # embeddings never stream: a whole answer
    status, _, answer = await _call(api, "/v1/models", {})
    assert status == 405  # the other routes are the API's own


async def test_streams_are_relayed_chunk_by_chunk_and_framed() -> None:
    engine = RelayingEngine([{"id": "up", "choices": [{"delta": {"content": str(k)}}]} for k in range(3)]
                            + [{"id": "up", "choices": [], "usage": {"completion_tokens": 3}}])
    api = API(engine)  # type: ignore[arg-type]
    status, headers, events = await _call(api, "/v1/chat/completions", {"messages": [], "stream": True})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    request_id = headers["x-request-id"]
    assert request_id.startswith("chatcmpl-") and events[-1] == "[DONE]"
    assert [e["choices"][0]["delta"]["content"] for e in events[:3]] == ["0", "1", "2"]
    assert all(e["id"] == request_id for e in events[:-1]) and events[3]["usage"] == {"completion_tokens": 3}
    assert engine.closed


async def test_stream_errors_before_and_after_the_first_chunk() -> None:
    early = RelayingEngine([ModelNotFoundError("no such model", param="model")])
    stream = {"prompt": "x", "stream": True}
    status, _, body = await _call(API(early), "/v1/completions", stream)  # type: ignore[arg-type]
    assert status == 404 and body["error"]["code"] == "model_not_found" and early.closed

    late = RelayingEngine([{"id": "up", "choices": []}, EngineStepError("upstream died", code="upstream_failed")])
    status, _, events = await _call(API(late), "/v1/completions", stream)  # type: ignore[arg-type]
    assert status == 200 and events[1]["error"]["code"] == "upstream_failed" and events[2] == "[DONE]"


async def test_closing_the_response_closes_the_engine_stream() -> None:
    engine = RelayingEngine([{"id": "up", "choices": []}] * 5)
    response = await API(engine).handle(Request(  # type: ignore[arg-type]
        "POST", "/v1/chat/completions", "/ai", {}, body=b'{"messages": [], "stream": true}'))
    assert response.stream is not None
    await anext(response.stream)
    assert not engine.closed
    await response.stream.aclose()  # type: ignore[attr-defined]
    assert engine.closed


async def test_the_api_checks_only_what_it_relies_on() -> None:
    api = API(RelayingEngine())  # type: ignore[arg-type]
    for body, param in (([1, 2], None), ({"model": 5}, "model"), ({"stream": "yes"}, "stream")):
        status, _, answer = await _call(api, "/v1/chat/completions", body)
        assert status == 400 and answer["error"]["param"] == param
    status, _, answer = await _call(api, "/v1/chat/completions", b"{not json")
    assert status == 400 and answer["error"]["code"] == "invalid_json"
    status, _, answer = await _call(api, "/v1/chat/completions", {"model": "gpt-9"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"
