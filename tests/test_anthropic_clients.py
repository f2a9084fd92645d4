"""Anthropic's clients against real servers: the official ``anthropic`` SDK and LangChain's ``ChatAnthropic``.

Two servers run on loopback, started together once for the module: the Flask example under
hypercorn, and a raw ASGI app that wants an API key and has one decoding slot and one waiting
place (for the 401 and 429 answers); a front with a ``RemoteEngine`` relays to the first.  The same
prompt sent greedily as a chat completion, as a response and as a message must come back as the
same tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import anthropic
import httpx
import jsonschema
import pytest
from pydantic import BaseModel
from remote_servers import FrontServer, front_home, wait_until
from servers import Server, server_env, serving

from llm_middleware import LLMMiddleware, RemoteEngine

SERVERS = ["flask", "asgi"]
MESSAGES_KEY = "messages-key"  # the key server_apps.keyed_single_slot wants
HELLO = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0}
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"name": "get_forecast", "description": "The weather forecast", "input_schema": FORECAST},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
]


def _prompt(message: anthropic.types.Message) -> int:
    """The prompt's size: Anthropic counts tokens read from the (prefix) cache apart from ``input_tokens``."""
    return message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0)


@pytest.fixture(scope="module")
def servers(tiny_model_dir: Path) -> Iterator[dict[str, str]]:
    """Base URLs of the module's servers."""
    with serving(
        {
            "flask": Server(["-m", "hypercorn", "examples.flask.app:app"]),
            "asgi": Server(["-m", "hypercorn", "server_apps:keyed_single_slot"]),
        },
        {**server_env(tiny_model_dir), "OMP_NUM_THREADS": "1"},
    ) as urls:
        yield urls


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> str:
    """The chat model's id: the name of its directory."""
    return tiny_model_dir.name


def _client(url: str, api_key: str = MESSAGES_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url + "/ai", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(params=SERVERS)
def client(request: pytest.FixtureRequest, servers: dict[str, str]) -> Iterator[anthropic.Anthropic]:
    """The SDK pointed at each server (``base_url`` is the API's base path, without ``/v1``)."""
    sdk = _client(servers[request.param])
    yield sdk
    sdk.close()


def _text(message: anthropic.types.Message) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


def test_create_and_count_tokens(client: anthropic.Anthropic, model: str) -> None:
    message = client.messages.create(model=model, max_tokens=6, messages=HELLO, system="Be brief.", extra_body=GREEDY)
    assert message.type == "message" and message.role == "assistant" and message.model == model
    assert message.id.startswith("msg_") and message.stop_sequence is None
    assert message._request_id == message.id  # the SDK reads Anthropic's request-id header
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert 1 <= message.usage.output_tokens <= 6
    assert (message.stop_reason == "max_tokens") == (message.usage.output_tokens == 6)
    assert [block.type for block in message.content] in (["text"], [])
    counted = client.messages.count_tokens(model=model, messages=HELLO, system="Be brief.")
    assert counted.input_tokens == _prompt(message) > 0
    with_tools = client.messages.count_tokens(model=model, messages=HELLO, system="Be brief.", tools=TOOLS)
    assert with_tools.input_tokens > counted.input_tokens  # the tools are rendered into the prompt


def test_stream_helpers_assemble_the_same_message(client: anthropic.Anthropic, model: str) -> None:
    whole = client.messages.create(model=model, max_tokens=8, messages=HELLO, extra_body=GREEDY)
    with client.messages.stream(model=model, max_tokens=8, messages=HELLO, extra_body=GREEDY) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == _text(final) == _text(whole)
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert _prompt(final) == _prompt(whole)


def test_stream_frames_name_their_events(servers: dict[str, str], model: str) -> None:
    body = {"model": model, "max_tokens": 4, "messages": HELLO, "stream": True, "temperature": 0}
    # x-api-key authenticates, as Anthropic's older SDKs send it; any anthropic-version is taken.
    headers = {"x-api-key": MESSAGES_KEY, "anthropic-version": "2023-06-01"}
    response = httpx.post(servers["asgi"] + "/ai/v1/messages", json=body, headers=headers, timeout=60)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    names = []
    for frame in response.text.strip().split("\n\n"):
        event_line, data_line = frame.split("\n")
        name = event_line.removeprefix("event: ")
        assert json.loads(data_line.removeprefix("data: "))["type"] == name
        names.append(name)
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    blocks = names[2:-2]
    if blocks:  # one text block (a random model may end at once)
        assert blocks[0] == "content_block_start" and blocks[-1] == "content_block_stop"
        assert set(blocks[1:-1]) == {"content_block_delta"}


def test_forced_tool_use_then_tool_result(client: anthropic.Anthropic, model: str) -> None:
    forced = {"type": "tool", "name": "get_forecast"}
    ask = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
    message = client.messages.create(model=model, max_tokens=64, messages=ask, tools=TOOLS, tool_choice=forced)
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_forecast" and call.id
    jsonschema.validate(call.input, FORECAST)

    with client.messages.stream(model=model, max_tokens=64, messages=ask, tools=TOOLS,
                                tool_choice={"type": "any", "disable_parallel_tool_use": True}) as stream:
        final = stream.get_final_message()
    [streamed_call] = [block for block in final.content if block.type == "tool_use"]
    assert final.stop_reason == "tool_use" and streamed_call.name in ("get_forecast", "get_time")
    assert isinstance(streamed_call.input, dict)

    answer = client.messages.create(
        model=model, max_tokens=4, tools=TOOLS, extra_body=GREEDY,
        messages=[
            *ask,
            {"role": "assistant", "content": [block.model_dump(exclude_none=True) for block in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ],
    )
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    assert _prompt(answer) > _prompt(message)


class Verdict(BaseModel):
    """A structured answer for ``messages.parse``."""

    ok: bool
    mood: Literal["happy", "sad"]


def test_parse_follows_the_output_format(client: anthropic.Anthropic, model: str) -> None:
    parsed = client.messages.parse(model=model, max_tokens=40, messages=HELLO, output_format=Verdict)
    assert parsed.stop_reason == "end_turn" and isinstance(parsed.parsed_output, Verdict)
    with client.messages.stream(model=model, max_tokens=40, messages=HELLO, output_format=Verdict) as stream:
        final = stream.get_final_message()
    assert isinstance(final.parsed_output, Verdict)


def test_errors_raise_the_sdk_classes(client: anthropic.Anthropic, model: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as missing:
        client.post("/v1/messages", cast_to=object, body={"model": model, "messages": HELLO})
    assert missing.value.type == "invalid_request_error" and "max_tokens" in missing.value.message
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model=model, max_tokens=4, messages=[{"role": "user", "content": [image]}])
    assert "image" in refused.value.message
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=model, max_tokens=4, messages=HELLO, tool_choice={"type": "any"})
    with pytest.raises(anthropic.BadRequestError) as bad_schema:
        client.messages.create(model=model, max_tokens=4, messages=HELLO,
                               output_config={"format": {"type": "json_schema", "schema": {"type": 5}}})
    assert "output_config.format.schema" in bad_schema.value.message
    for stream in (False, True):
        with pytest.raises(anthropic.BadRequestError) as too_long:
            client.messages.create(model=model, max_tokens=4, stream=stream,
                                   messages=[{"role": "user", "content": "word " * 3000}])
        assert too_long.value.body["type"] == "error"
    with pytest.raises(anthropic.NotFoundError) as unknown:
        client.messages.create(model="claude-none", max_tokens=4, messages=HELLO)
    assert unknown.value.type == "not_found_error" and unknown.value.request_id is not None
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="claude-none", messages=HELLO)


def test_missing_key_raises_authentication_error(servers: dict[str, str], model: str) -> None:
    with _client(servers["asgi"], api_key="wrong") as sdk, pytest.raises(anthropic.AuthenticationError) as refused:
        sdk.messages.create(model=model, max_tokens=4, messages=HELLO)
    assert refused.value.status_code == 401 and refused.value.type == "authentication_error"
    assert refused.value.body["type"] == "error" and refused.value.body["error"]["type"] == "authentication_error"


def _stats(url: str) -> dict[str, int]:
    return httpx.get(url + "/stats").json()


def _wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_full_queue_raises_rate_limit_error(servers: dict[str, str], model: str) -> None:
    url = servers["asgi"]
    endpoint = url + "/ai/v1/messages"
    headers = {"x-api-key": MESSAGES_KEY}
    long = {"model": model, "messages": HELLO, "stream": True, "max_tokens": 2000, "min_tokens": 2000}
    with httpx.Client(timeout=30, headers=headers) as http, ThreadPoolExecutor(1) as pool, _client(url) as sdk:
        with http.stream("POST", url + "/ai/v1/chat/completions", json=long) as running:
            chunks = running.iter_raw()  # kept: a dropped iterator closes the response, and so the request
            next(chunks)  # the long request holds the only slot
            queued = pool.submit(http.post, endpoint, json={"model": model, "messages": HELLO, "max_tokens": 2})
            _wait_for(lambda: _stats(url)["waiting"] == 1)
            with pytest.raises(anthropic.RateLimitError) as refused:
                sdk.messages.create(model=model, max_tokens=2, messages=HELLO)
        # Leaving the stream disconnects it, which frees the slot for the queued request.
        assert queued.result().status_code == 200
    assert refused.value.type == "rate_limit_error" and int(refused.value.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize("server", SERVERS)
def test_langchain_chat_anthropic(servers: dict[str, str], model: str, server: str) -> None:
    from langchain_anthropic import ChatAnthropic

    chat = ChatAnthropic(model=model, base_url=servers[server] + "/ai", api_key=MESSAGES_KEY, max_tokens=6,
                         temperature=0, max_retries=0)
    reply = chat.invoke("Hello there")
    assert reply.response_metadata["stop_reason"] in ("end_turn", "max_tokens")
    assert reply.usage_metadata["input_tokens"] > 0 and 1 <= reply.usage_metadata["output_tokens"] <= 6
    chunks = list(chat.stream("Hello there"))
    streamed = chunks[0]
    for chunk in chunks[1:]:
        streamed += chunk
    assert streamed.text == reply.text
    assert streamed.usage_metadata["input_tokens"] == reply.usage_metadata["input_tokens"]
    assert streamed.usage_metadata["output_tokens"] == reply.usage_metadata["output_tokens"]


def test_same_tokens_across_protocols(servers: dict[str, str], model: str) -> None:
    url = servers["flask"] + "/ai/v1"
    prompt = "Tell me about the sea"
    with httpx.Client(timeout=60) as http:
        chat = http.post(url + "/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0,
        }).json()
        message = http.post(url + "/messages", json={
            "model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 12, "temperature": 0,
        }).json()
        responses = http.post(url + "/responses", json={
            "model": model, "input": prompt, "max_output_tokens": 12, "temperature": 0, "store": False,
        })
    text = chat["choices"][0]["message"]["content"]
    assert "".join(block["text"] for block in message["content"] if block["type"] == "text") == text
    assert message["usage"]["output_tokens"] == chat["usage"]["completion_tokens"]
    usage = message["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == chat["usage"]["prompt_tokens"]
    if responses.status_code == 404:
        pytest.skip("POST /v1/responses is not served by this build; chat completions and messages agreed")
    response = responses.json()
    output = "".join(part["text"] for item in response["output"] if item["type"] == "message"
                     for part in item["content"] if part["type"] == "output_text")
    assert output == text
    assert response["usage"]["output_tokens"] == chat["usage"]["completion_tokens"]
    assert response["usage"]["input_tokens"] == chat["usage"]["prompt_tokens"]


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def front(servers: dict[str, str], model: str) -> Iterator[str]:
    """The base URL of a front whose ``RemoteEngine`` relays to the Flask server (its model published as "chat")."""
    engine = RemoteEngine([servers["flask"] + "/ai/v1"], model_map={"chat": model}, timeout=30)
    with FrontServer(LLMMiddleware(front_home, base_path="/ai", engine=engine)) as server:
        wait_until(lambda: _answers(server.url + "/ai/health"), 60, "the front coming up")
        yield server.url
    engine.shutdown()


def test_messages_over_a_remote_engine(front: str, servers: dict[str, str], model: str) -> None:
    with _client(front) as relayed, _client(servers["flask"]) as direct:
        here = direct.messages.create(model=model, max_tokens=6, messages=HELLO, extra_body=GREEDY)
        there = relayed.messages.create(model="chat", max_tokens=6, messages=HELLO, extra_body=GREEDY)
        assert _text(there) == _text(here) and there.model == "chat"
        assert _prompt(there) == _prompt(here)
        assert there.usage.output_tokens == here.usage.output_tokens
        with relayed.messages.stream(model="chat", max_tokens=6, messages=HELLO, extra_body=GREEDY) as stream:
            assert "".join(stream.text_stream) == _text(here)
        counted = relayed.messages.count_tokens(model="chat", messages=HELLO)
        assert counted.input_tokens == _prompt(here)
        # A forced call needs the tool-call grammar, which OpenAI-compatible upstreams do not take: refused, not
        # answered with unconstrained text.
        with pytest.raises(anthropic.BadRequestError):
            relayed.messages.create(model="chat", max_tokens=8, messages=HELLO, tools=TOOLS,
                                    tool_choice={"type": "tool", "name": "get_forecast"})
        with pytest.raises(anthropic.NotFoundError):
            relayed.messages.create(model="nope", max_tokens=4, messages=HELLO)
