"""The official openai SDK against the API, through an in-process httpx transport (no server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from llm_middleware.api.core.http import Request

BASE = "/ai"


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterator[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        await self._stream.aclose()  # type: ignore[attr-defined]


class APITransport(httpx.AsyncBaseTransport):
    """Hands each httpx request to ``API.handle``, as the middleware would."""

    def __init__(self, api) -> None:
        self.api = api

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert path.startswith(BASE + "/")
        ours = Request(
            method=request.method,
            path=path[len(BASE):],
            root_path=BASE,
            headers={k.decode().lower(): v.decode() for k, v in request.headers.raw},
            query_string=request.url.query,
            body=await request.aread(),
        )
        response = await self.api.handle(ours)
        if response.stream is not None:
            return httpx.Response(response.status, headers=response.headers, stream=_Body(response.stream))
        return httpx.Response(response.status, headers=response.headers, content=response.body)


@pytest.fixture
def client(api) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=APITransport(api))
    return openai.AsyncOpenAI(base_url=f"http://test{BASE}/v1", api_key="unused", http_client=http, max_retries=0)


MESSAGES = [{"role": "user", "content": "Hello there"}]


async def test_chat(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_completion_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True, "top_k": 5},
    )
    choice = completion.choices[0]
    assert completion.object == "chat.completion" and choice.finish_reason == "length"
    assert choice.message.role == "assistant" and choice.message.tool_calls is None
    assert len(choice.logprobs.content) == 6 and len(choice.logprobs.content[0].top_logprobs) == 2
    assert completion.usage.completion_tokens == 6

    stream = await client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


async def test_completions_models_embeddings(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="tiny", prompt=["a", "b"], max_tokens=2, temperature=0)
    assert [c.index for c in completion.choices] == [0, 1]
    models = await client.models.list()
    assert {m.id for m in models.data} == {"tiny", "minilm"}
    assert (await client.models.retrieve("minilm")).owned_by == "llm_middleware"
    # The SDK asks for base64 unless told otherwise, and decodes it itself.
    b64 = await client.embeddings.create(model="minilm", input=["hello world"])
    floats = await client.embeddings.create(model="minilm", input=["hello world"], encoding_format="float")
    assert b64.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)
    assert len(b64.data[0].embedding) == 384


async def test_sdk_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 2000}], stream=True)
    assert too_long.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    assert bad.value.param == "messages[0].role"
    assert json.loads(bad.value.response.text)["error"]["type"] == "invalid_request_error"
