"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` through the API object, over the shared test engine."""

from __future__ import annotations

import json
from collections.abc import Iterator

import jsonschema
import pytest
from calling_engine import CALL, PREAMBLE
from thinking_engine import ANSWER, THOUGHT, ThinkingEngine

from llm_middleware.api.app import API
from llm_middleware.api.core.http import Request
from llm_middleware.demo_model import build_demo_model

HELLO = [{"role": "user", "content": "Hello there"}]
FORECAST = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}


async def _post(api, path: str, body: dict | bytes, headers: dict | None = None):
    """Status, headers, and the JSON body or the stream's ``(event, data)`` frames."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request(method="POST", path=path, root_path="/ai",
                      headers={"content-type": "application/json", **(headers or {})}, body=raw)
    response = await api.handle(request)
    if response.stream is None:
        return response.status, dict(response.headers), json.loads(response.body)
    text = b"".join([chunk async for chunk in response.stream]).decode()
    frames = []
    for frame in text.strip().split("\n\n"):
        event_line, data_line = frame.split("\n")
        frames.append((event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return response.status, dict(response.headers), frames


def _prompt(usage: dict) -> int:
    """The prompt's size: Anthropic counts tokens read from the (prefix) cache apart from ``input_tokens``."""
    return usage["input_tokens"] + usage["cache_read_input_tokens"]


def _message(**fields) -> dict:
    return {"model": "tiny", "max_tokens": 8, "messages": HELLO, "temperature": 0, **fields}


async def test_message_matches_chat_completion_and_its_stream(api) -> None:
    status, headers, chat = await _post(api, "/v1/chat/completions", {
        "model": "tiny", "messages": HELLO, "max_tokens": 8, "temperature": 0,
    })
    status, headers, message = await _post(api, "/v1/messages", _message())
    assert status == 200 and headers["x-request-id"] == message["id"] and message["id"].startswith("msg_")
    text = "".join(block["text"] for block in message["content"])
    assert text == chat["choices"][0]["message"]["content"]
    assert message["usage"]["output_tokens"] == chat["usage"]["completion_tokens"]
    assert _prompt(message["usage"]) == chat["usage"]["prompt_tokens"]
    assert message["stop_reason"] == {"length": "max_tokens", "stop": "end_turn"}[chat["choices"][0]["finish_reason"]]

    status, headers, frames = await _post(api, "/v1/messages", _message(stream=True))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert all(name == data["type"] for name, data in frames)
    streamed = "".join(data["delta"]["text"] for name, data in frames if name == "content_block_delta")
    assert streamed == text
    assert frames[-2][1]["delta"]["stop_reason"] == message["stop_reason"]
    assert _prompt(frames[-2][1]["usage"]) == _prompt(message["usage"])
    assert frames[-2][1]["usage"]["output_tokens"] == message["usage"]["output_tokens"]


async def test_stop_sequence_is_reported(api) -> None:
    _, _, chat = await _post(api, "/v1/chat/completions", {
        "model": "tiny", "messages": HELLO, "max_tokens": 12, "temperature": 0,
    })
    text = chat["choices"][0]["message"]["content"]
    assert len(text) >= 4, text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    body = _message(max_tokens=12, stop_sequences=["never written here", stop])
    _, _, message = await _post(api, "/v1/messages", body)
    assert message["stop_reason"] == "stop_sequence" and message["stop_sequence"] == stop
    assert "".join(block["text"] for block in message["content"]) == text[:text.index(stop)]
    _, _, frames = await _post(api, "/v1/messages", {**body, "stream": True})
    assert frames[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}
    # Without a stop sequence in the way, the same output ends for its own reasons.
    _, _, message = await _post(api, "/v1/messages", _message(max_tokens=12, stop_sequences=["never written here"]))
    assert message["stop_reason"] in ("end_turn", "max_tokens") and message["stop_sequence"] is None


async def test_thinking_switches_the_template_and_count_tokens_agrees(api) -> None:
    counts = {}
    for kind in ("enabled", "disabled", "adaptive", "between_tools"):
        status, _, message = await _post(api, "/v1/messages", _message(thinking={"type": kind, "budget_tokens": 1024}))
        _, _, counted = await _post(api, "/v1/messages/count_tokens", {
            "model": "tiny", "messages": HELLO, "thinking": {"type": kind},
        })
        assert status == 200 and counted["input_tokens"] == _prompt(message["usage"])
        counts[kind] = counted["input_tokens"]
    # The demo template writes an empty thinking block into the prompt when thinking is switched off.
    assert counts["enabled"] == counts["adaptive"] == counts["between_tools"] < counts["disabled"]


async def test_forced_tool_call_is_a_tool_use_block(api) -> None:
    tools = [{"name": "get_forecast", "input_schema": FORECAST}]
    body = _message(max_tokens=64, tools=tools, tool_choice={"type": "tool", "name": "get_forecast"})
    status, _, message = await _post(api, "/v1/messages", body)
    assert status == 200 and message["stop_reason"] == "tool_use"
    [call] = message["content"]
    assert call["type"] == "tool_use" and call["name"] == "get_forecast"
    jsonschema.validate(call["input"], FORECAST)

    status, _, frames = await _post(api, "/v1/messages", {**body, "stream": True})
    arguments = "".join(data["delta"]["partial_json"] for name, data in frames if name == "content_block_delta")
    assert json.loads(arguments) == call["input"]
    assert frames[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_errors_have_anthropics_shape(api) -> None:
    def is_error(body: dict, kind: str) -> bool:
        return body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"]

    status, _, body = await _post(api, "/v1/messages", {"model": "tiny", "messages": HELLO})
    assert status == 400 and is_error(body, "invalid_request_error") and "max_tokens" in body["error"]["message"]
    status, _, body = await _post(api, "/v1/messages", _message(model="nope"))
    assert status == 404 and is_error(body, "not_found_error")
    status, _, body = await _post(api, "/v1/messages", _message(stop_sequences=["x"] * 17))
    assert status == 400 and "stop_sequences" in body["error"]["message"]
    status, _, body = await _post(api, "/v1/messages", _message(tool_choice={"type": "tool", "name": "f"}))
    assert status == 400 and is_error(body, "invalid_request_error")
    status, _, body = await _post(api, "/v1/messages", _message(
        tools=[{"name": "f", "input_schema": {"type": "object", "properties": {"a": {"type": 5}}}}]))
    assert status == 400 and is_error(body, "invalid_request_error")
    status, _, body = await _post(api, "/v1/messages", b"{", headers={"content-type": "text/plain"})
    assert status == 415 and is_error(body, "invalid_request_error")
    for stream in (False, True):
        status, _, body = await _post(api, "/v1/messages", _message(
            stream=stream, messages=[{"role": "user", "content": "word " * 3000}]))
        assert status == 400 and is_error(body, "invalid_request_error")
    status, _, body = await _post(api, "/v1/messages/nothing-here", _message())
    assert status == 404 and is_error(body, "not_found_error")
    response = await api.handle(Request(method="GET", path="/v1/messages", root_path="/ai", headers={}))
    assert response.status == 405 and is_error(json.loads(response.body), "invalid_request_error")
    # The other routes keep OpenAI's shape.
    status, _, body = await _post(api, "/v1/chat/completions", {"model": "nope", "messages": HELLO})
    assert status == 404 and body["error"]["code"] == "model_not_found"


async def test_openapi_document_lists_the_routes(api) -> None:
    response = await api.handle(Request(method="GET", path="/openapi.json", root_path="/ai", headers={}))
    document = json.loads(response.body)
    create = document["paths"]["/v1/messages"]["post"]
    request_schema = create["requestBody"]["content"]["application/json"]["schema"]
    assert request_schema == {"$ref": "#/components/schemas/MessagesRequest"}
    assert create["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    assert "text/event-stream" in create["responses"]["200"]["content"]
    assert "post" in document["paths"]["/v1/messages/count_tokens"]
    assert "max_tokens" in document["components"]["schemas"]["MessagesRequest"]["required"]


@pytest.fixture(scope="module")
def thinking_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[API]:
    """The API over a model whose template opens a thinking block, steered to think and then answer or call."""
    path = build_demo_model(tmp_path_factory.mktemp("thinker"), arch="qwen3", size="tiny", thinking=True)
    engine = ThinkingEngine(path, name="thinker", seed=0, max_model_len=1024)
    engine.wait_ready_sync()
    yield API(engine, base_path="/ai")
    engine.shutdown()


async def test_thinking_comes_in_thinking_blocks(thinking_api) -> None:
    body = {"model": "thinker", "max_tokens": 200, "messages": HELLO, "temperature": 0}
    status, _, message = await _post(thinking_api, "/v1/messages", body)
    assert status == 200 and message["stop_reason"] == "end_turn"
    assert message["content"] == [{"type": "thinking", "thinking": THOUGHT, "signature": ""},
                                  {"type": "text", "text": ANSWER}]

    status, _, frames = await _post(thinking_api, "/v1/messages", {**body, "stream": True})
    empty = {"type": "thinking", "thinking": "", "signature": ""}
    assert frames[2] == ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": empty})
    deltas = [(data["index"], data["delta"]) for name, data in frames if name == "content_block_delta"]
    assert {(index, delta["type"]) for index, delta in deltas} == {(0, "thinking_delta"), (0, "signature_delta"),
                                                                   (1, "text_delta")}
    assert "".join(delta.get("thinking", "") for _, delta in deltas) == THOUGHT
    assert "".join(delta.get("text", "") for _, delta in deltas) == ANSWER

    # Thinking, a sentence, then a call: three blocks in that order.
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}}}]
    status, _, message = await _post(thinking_api, "/v1/messages", {**body, "tools": tools})
    assert [block["type"] for block in message["content"]] == ["thinking", "text", "tool_use"]
    assert message["content"][1]["text"] == PREAMBLE and message["stop_reason"] == "tool_use"
    assert (message["content"][2]["name"], message["content"][2]["input"]) == (CALL["name"], CALL["arguments"])

    # Switched off, the template closes the block in the prompt: the output is all answer.
    status, _, message = await _post(thinking_api, "/v1/messages", {**body, "max_tokens": 6,
                                                                     "thinking": {"type": "disabled"}})
    assert status == 200 and {block["type"] for block in message["content"]} <= {"text"}
    # An earlier turn's thinking block is taken back (its signature unchecked).
    replay = [*HELLO, {"role": "assistant", "content": [{"type": "thinking", "thinking": THOUGHT, "signature": "x"},
                                                        {"type": "text", "text": ANSWER}]},
              {"role": "user", "content": "And?"}]
    status, _, message = await _post(thinking_api, "/v1/messages", {**body, "messages": replay})
    assert status == 200 and message["content"][0]["thinking"] == THOUGHT


async def test_a_system_turn_among_the_messages_is_a_system_message(api) -> None:
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "system", "content": [{"type": "text", "text": "Answer in French."}]},
             {"role": "user", "content": "Bye"}]
    status, _, message = await _post(api, "/v1/messages", _message(messages=turns))
    chat_turns = [{**turn, "content": "Answer in French."} if turn["role"] == "system" else turn for turn in turns]
    _, _, chat = await _post(api, "/v1/chat/completions", {"model": "tiny", "messages": chat_turns, "max_tokens": 8,
                                                          "temperature": 0})
    assert status == 200 and _prompt(message["usage"]) == chat["usage"]["prompt_tokens"]
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    status, _, refused = await _post(api, "/v1/messages", _message(messages=[{"role": "system", "content": [image]}]))
    assert status == 400 and "text blocks only" in refused["error"]["message"]
