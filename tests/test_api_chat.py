"""POST /v1/chat/completions end to end on a real engine (tiny random-weight Qwen3 model)."""

from __future__ import annotations

import asyncio
import json

import pytest
from engine_state import StepLog, default_worker

from llm_middleware.api.core.http import Request
from llm_middleware.api.openai.chat import ChatChunks
from llm_middleware.conversation import guided
from llm_middleware.conversation.answer import ToolSettings
from llm_middleware.conversation.stream import TurnSplitter
from llm_middleware.engine.outputs import Delta, Usage

HELLO = [{"role": "user", "content": "Hello there"}]
GREEDY = {"temperature": 0, "ignore_eos": True}


def _content(events: list, index: int = 0) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e["choices"] and e["choices"][0]["index"] == index
    )


async def test_whole_answer_shape(call_api) -> None:
    result = await call_api("POST", "/v1/chat/completions", {"model": "tiny", "messages": HELLO, "max_tokens": 6, **GREEDY})
    assert result.status == 200
    body = result.json()
    assert body["object"] == "chat.completion"
    assert body["id"] == result.headers["x-request-id"] and body["id"].startswith("chatcmpl-")
    assert body["model"] == "tiny" and isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert "tool_calls" not in choice["message"]
    usage = body["usage"]
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6


async def test_incoming_request_id_is_the_completion_id(call_api) -> None:
    result = await call_api(
        "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 1}, headers={"x-request-id": "trace-42"}
    )
    assert result.headers["x-request-id"] == "trace-42" and result.json()["id"] == "trace-42"
    odd = await call_api(
        "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 1}, headers={"x-request-id": "has space"}
    )
    assert odd.headers["x-request-id"].startswith("chatcmpl-")


async def test_stream_matches_whole_answer_and_ends_properly(call_api) -> None:
    request = {"messages": HELLO, "max_tokens": 8, **GREEDY}
    whole = (await call_api("POST", "/v1/chat/completions", request)).json()
    result = await call_api("POST", "/v1/chat/completions", {**request, "stream": True})
    assert result.status == 200
    assert result.headers["content-type"] == "text/event-stream" and result.headers["cache-control"] == "no-cache"
    events = result.events
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == result.headers["x-request-id"] for c in chunks)
    assert all("usage" not in c for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    assert _content(chunks) == whole["choices"][0]["message"]["content"]


async def test_stream_usage_chunk(call_api) -> None:
    result = await call_api(
        "POST", "/v1/chat/completions",
        {"messages": HELLO, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}, **GREEDY},
    )
    *chunks, usage_chunk, done = result.events
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 5
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 5


async def test_n_choices_streamed_and_whole(call_api) -> None:
    request = {"messages": HELLO, "max_tokens": 4, "n": 3, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    whole = (await call_api("POST", "/v1/chat/completions", request)).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1, 2]
    assert whole["usage"]["completion_tokens"] == 12
    events = (await call_api("POST", "/v1/chat/completions", {**request, "stream": True})).events[:-1]
    for index in range(3):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["finish_reason"] == "length"


async def test_logprobs(call_api) -> None:
    result = await call_api(
        "POST", "/v1/chat/completions", {"messages": HELLO, "max_tokens": 5, "logprobs": True, "top_logprobs": 3, **GREEDY}
    )
    choice = result.json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 5
    assert "".join(t["token"] for t in content) == choice["message"]["content"]
    for token in content:
        assert token["bytes"] == list(token["token"].encode())
        assert len(token["top_logprobs"]) == 3
        tops = [t["logprob"] for t in token["top_logprobs"]]
        assert tops == sorted(tops, reverse=True) and all(lp <= 0 for lp in tops)
        assert token["logprob"] == pytest.approx(tops[0])  # greedy takes the most likely token
    streamed = await call_api(
        "POST", "/v1/chat/completions",
        {"messages": HELLO, "max_tokens": 5, "logprobs": True, "top_logprobs": 3, "stream": True, **GREEDY},
    )
    tokens = [t for e in streamed.events[:-1] if e["choices"][0]["logprobs"] for t in e["choices"][0]["logprobs"]["content"]]
    assert [t["token"] for t in tokens] == [t["token"] for t in content]


async def test_top_logprobs_needs_logprobs(call_api) -> None:
    result = await call_api("POST", "/v1/chat/completions", {"messages": HELLO, "top_logprobs": 2})
    assert result.status == 400 and result.json()["error"]["param"] == "top_logprobs"


async def test_seed_reproducibility(call_api) -> None:
    async def sample(seed: int) -> str:
        body = {"messages": HELLO, "max_tokens": 12, "temperature": 1.0, "seed": seed, "ignore_eos": True}
        return (await call_api("POST", "/v1/chat/completions", body)).json()["choices"][0]["message"]["content"]

    assert await sample(123) == await sample(123)
    assert len({await sample(seed) for seed in range(5)}) > 1


async def test_stop_string_ends_the_answer(call_api) -> None:
    base = {"messages": HELLO, "max_tokens": 16, **GREEDY}
    text = (await call_api("POST", "/v1/chat/completions", base)).json()["choices"][0]["message"]["content"]
    stop = text[3:5]
    assert stop  # the tiny model writes at least 5 characters in 16 tokens
    choice = (await call_api("POST", "/v1/chat/completions", {**base, "stop": [stop]})).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == text[: text.index(stop)]


async def test_max_completion_tokens_is_max_tokens(call_api) -> None:
    body = {"messages": HELLO, "max_completion_tokens": 3, **GREEDY}
    assert (await call_api("POST", "/v1/chat/completions", body)).json()["usage"]["completion_tokens"] == 3


async def test_content_parts_developer_role_and_tool_history(call_api) -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 C"},
    ]
    result = await call_api("POST", "/v1/chat/completions", {"messages": messages, "max_tokens": 2, "user": "u1"})
    assert result.status == 200, result.body
    bad = [*messages[:2], {**messages[2], "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}]}]
    result = await call_api("POST", "/v1/chat/completions", {"messages": bad})
    assert result.status == 400 and result.json()["error"]["param"] == "messages[2].tool_calls[0].function.arguments"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    result = await call_api("POST", "/v1/chat/completions", {"messages": image})
    assert result.status == 400 and result.json()["error"]["param"] == "messages[0].content[0].type"


TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


async def test_http_and_engine_chat_build_the_same_prompt(call_api, api_engine, monkeypatch) -> None:
    # Several text parts, a developer message and a tool call with its result: the API flattens them
    # as ``engine.chat`` does, text parts joined by a newline.
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Use tools."}]},
        {"role": "user", "content": [{"type": "text", "text": "Weather"}, {"type": "text", "text": "in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "22 C"}, {"type": "text", "text": "sunny"}]},
    ]
    worker = default_worker(api_engine)
    prepare = worker.prepare
    prompts: list[list[int]] = []

    def spy(prompt_ids, *args):
        prompts.append(list(prompt_ids))
        return prepare(prompt_ids, *args)

    monkeypatch.setattr(worker, "prepare", spy)
    result = await call_api("POST", "/v1/chat/completions", {"messages": messages, "tools": TOOLS, "max_tokens": 1})
    assert result.status == 200, result.body
    tokenized = await call_api("POST", "/tokenize", {"messages": messages, "tools": TOOLS})
    direct = await api_engine.chat(messages, tools=TOOLS, max_tokens=1)
    assert prompts == [direct.prompt_token_ids, direct.prompt_token_ids]
    assert tokenized.json()["tokens"] == direct.prompt_token_ids
    rendered = api_engine.apply_chat_template(messages, tools=TOOLS)
    assert "Weather\nin Paris?" in rendered and "22 C\nsunny" in rendered


async def test_tools_reach_the_template_unless_tool_choice_none(call_api) -> None:
    async def prompt_tokens(**extra) -> int:
        body = {"messages": HELLO, "max_tokens": 1, **extra}
        result = await call_api("POST", "/v1/chat/completions", body)
        assert result.status == 200, result.body
        return result.json()["usage"]["prompt_tokens"]

    plain = await prompt_tokens()
    assert await prompt_tokens(tools=TOOLS, tool_choice="auto", parallel_tool_calls=False) > plain
    assert await prompt_tokens(tools=TOOLS, tool_choice="none") == plain


async def test_named_tool_choice_must_name_an_offered_tool(call_api) -> None:
    body = {"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    result = await call_api("POST", "/v1/chat/completions", body)
    assert result.status == 400 and result.json()["error"]["param"] == "tool_choice.function.name"


async def test_forced_tool_choice_needs_tools(call_api) -> None:
    # Without tools a forced call cannot be made: refused, rather than answered with text.
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        result = await call_api("POST", "/v1/chat/completions", {"messages": HELLO, "tool_choice": choice, "max_tokens": 2})
        assert result.status == 400 and result.json()["error"]["param"] == "tool_choice"


needs_guided = pytest.mark.skipif(not guided.GUIDED_SUPPORTED, reason="the engine has no constrained decoding")
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"], "additionalProperties": False}}}
NOOP = {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {},
                                                                         "additionalProperties": False}}}


@needs_guided
async def test_json_schema_response_format(call_api) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    body = {"messages": HELLO, "max_tokens": 40, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": schema}}}
    choice = (await call_api("POST", "/v1/chat/completions", body)).json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert isinstance(json.loads(choice["message"]["content"])["ok"], bool)
    broken = {**body, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/x"}}}}
    result = await call_api("POST", "/v1/chat/completions", broken)
    assert result.status == 400 and result.json()["error"]["param"] == "response_format.json_schema.schema"


@needs_guided
async def test_named_tool_choice_forces_that_call(call_api) -> None:
    body = {"messages": HELLO, "max_tokens": 60, "temperature": 0, "tools": [WEATHER, NOOP],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    choice = (await call_api("POST", "/v1/chat/completions", body)).json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"])["unit"] in ("c", "f")


@needs_guided
async def test_required_tool_choice_streams_a_call(call_api) -> None:
    body = {"messages": HELLO, "max_tokens": 60, "temperature": 0, "tools": [WEATHER, NOOP], "tool_choice": "required",
            "parallel_tool_calls": False, "stream": True}
    events = (await call_api("POST", "/v1/chat/completions", body)).events
    assert events[-1] == "[DONE]"
    calls = [tc for e in events[:-1] for tc in e["choices"][0]["delta"].get("tool_calls", [])]
    assert calls[0]["function"]["arguments"] == "" and calls[0]["function"]["name"] in ("get_weather", "noop")
    assert all(c["index"] == 0 for c in calls)
    json.loads("".join(c["function"]["arguments"] for c in calls))
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_streamed_tool_call_deltas() -> None:
    chunks = ChatChunks("chatcmpl-x", 1, "tiny", include_usage=False, logprobs=False)
    splitter = TurnSplitter(ToolSettings(frozenset({"get_weather", "get_time"}), parallel=True), None)
    pieces = ["Checking", " now.<tool", '_call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool_call>',
              '\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>']
    raw = b""
    for k, text in enumerate(pieces):
        last = k == len(pieces) - 1
        delta = Delta(index=0, text=text, token_ids=[1], finish_reason="stop" if last else None,
                      usage=Usage(10, 5) if last else None)
        raw += b"".join(chunks.on_event(e) for e in splitter.on_delta(delta))
    events = [json.loads(block[6:]) for block in raw.split(b"\n\n") if block]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas[1:]) == "Checking now."
    calls = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 0, 1, 1]
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Paris"} and "id" not in calls[1]
    assert calls[2]["function"]["name"] == "get_time" and calls[2]["id"] != calls[0]["id"]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_errors_before_the_first_delta_are_plain_http_errors(call_api) -> None:
    long = [{"role": "user", "content": "word " * 2000}]
    for stream in (False, True):
        result = await call_api("POST", "/v1/chat/completions", {"messages": long, "stream": stream})
        assert result.status == 400 and result.events is None
        assert result.json()["error"]["code"] == "context_length_exceeded"
    result = await call_api("POST", "/v1/chat/completions", {"model": "gpt-9", "messages": HELLO, "stream": True})
    assert result.status == 404
    error = result.json()["error"]
    assert error["code"] == "model_not_found" and "tiny" in error["message"] and error["param"] == "model"
    result = await call_api("POST", "/v1/chat/completions", {"model": "minilm", "messages": HELLO})
    assert result.status == 400 and result.json()["error"]["param"] == "model"
    result = await call_api("POST", "/v1/chat/completions", {"messages": HELLO, "temperature": -1})
    assert result.status == 400 and result.json()["error"]["param"] == "temperature"
    result = await call_api("POST", "/v1/chat/completions", body=b'{"messages": [')
    assert result.status == 400 and result.json()["error"]["code"] == "invalid_json"


async def test_closing_the_stream_cancels_the_request(api, api_engine) -> None:
    body = json.dumps({"messages": HELLO, "max_tokens": 400, "stream": True, "ignore_eos": True}).encode()
    with StepLog(default_worker(api_engine)) as log:
        request = Request("POST", "/v1/chat/completions", "/ai", {"content-type": "application/json"}, body=body)
        response = await api.handle(request)
        assert response.stream is not None
        await anext(response.stream)
        assert api_engine.stats("tiny")["running"] == 1
        await response.stream.aclose()
        for _ in range(3000):  # a hang guard: the step log tells whether it was cancelled
            if api_engine.stats("tiny")["running"] == 0:
                break
            await asyncio.sleep(0.02)
    assert log.steps_after_abort(dict(response.headers)["x-request-id"]) in (0, 1)
    assert api_engine.stats("tiny")["running"] == 0
