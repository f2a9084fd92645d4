"""The FastAPI example (``examples/fastapi``, ``app.add_middleware(LLMMiddleware, ...)``) under uvicorn
and hypercorn: lifespan order, the engine dependency, pass-through, the API in FastAPI's own OpenAPI
document, a streamed chat through the ``openai`` SDK, and cancellation on disconnect."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi.responses import StreamingResponse
from openai import OpenAI
from disconnects import leave_a_long_stream
from servers import Server, server_env, serving

SERVERS = {
    "uvicorn": Server(["-m", "uvicorn", "fastapi_apps:app"]),
    "hypercorn": Server(["-m", "hypercorn", "fastapi_apps:app"]),
}
CHAT = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    with serving(SERVERS, server_env(tiny_model_dir)) as urls:
        yield urls


@pytest.fixture(scope="module")
def example(tiny_model_dir: Path) -> Iterator[ModuleType]:
    """The example's module, imported here to read what its own views return."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLM_MODEL", str(tiny_model_dir))
        yield importlib.import_module("examples.fastapi.app")


@pytest.mark.parametrize("name", list(SERVERS))
def test_engine_starts_before_the_app_lifespan_and_views_get_it(servers: dict[str, str], name: str) -> None:
    url = servers[name]
    [state] = httpx.get(url + "/startup").json()["engine"]
    assert state in ("loading", "ready")  # started by the middleware's lifespan, before the app's own
    summary = httpx.post(url + "/summarize", json={"text": "A long text."}, timeout=30)
    assert summary.status_code == 200 and isinstance(summary.json()["summary"], str)


async def streamed_body(response: StreamingResponse) -> bytes:
    """What a Starlette streamed response writes."""
    return b"".join([chunk if isinstance(chunk, bytes) else chunk.encode() async for chunk in response.body_iterator])


@pytest.mark.parametrize("name", list(SERVERS))
def test_host_page_and_stream_pass_through_unchanged(servers: dict[str, str], example: ModuleType, name: str) -> None:
    url = servers[name]
    home = httpx.get(url + "/")
    assert home.headers["content-type"].startswith("text/html")
    assert home.text == asyncio.run(example.index())
    with httpx.stream("GET", url + "/countdown") as response:
        assert response.headers["content-type"].startswith("text/plain")
        assert response.read() == asyncio.run(streamed_body(example.countdown()))


@pytest.mark.parametrize("name", list(SERVERS))
def test_api_operations_are_in_the_apps_openapi_document(servers: dict[str, str], name: str) -> None:
    document = httpx.get(servers[name] + "/openapi.json").json()
    assert {"/", "/summarize", "/countdown", "/ai/v1/chat/completions", "/ai/v1/models/{model}"} <= set(document["paths"])
    assert "/stats" not in document["paths"]
    chat = document["paths"]["/ai/v1/chat/completions"]["post"]
    assert chat["tags"] == ["LLM API"] and chat["operationId"].startswith("llm_")
    schema = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert "messages" in document["components"]["schemas"][schema]["properties"]
    assert "Text" in document["components"]["schemas"]  # the app's own schemas stay
    assert httpx.get(servers[name] + "/docs").status_code == 200


@pytest.mark.parametrize("name", list(SERVERS))
def test_streamed_chat_through_the_openai_sdk(servers: dict[str, str], name: str) -> None:
    client = OpenAI(base_url=servers[name] + "/ai/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="default", messages=CHAT, stream=True, max_tokens=8))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("name", list(SERVERS))
def test_disconnect_cancels_the_stream(servers: dict[str, str], name: str) -> None:
    leave_a_long_stream(servers[name], CHAT)
