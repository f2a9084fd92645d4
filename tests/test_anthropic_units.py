"""Anthropic Messages adapter without an engine: request decoding and translation, error shape."""

from __future__ import annotations

import json

import msgspec
import pytest

from llm_middleware.api.anthropic import request as translate
from llm_middleware.api.anthropic.errors import error_event, exception_response
from llm_middleware.api.anthropic.types import messages_request_decoder
from llm_middleware.api.core.decoding import decode_body
from llm_middleware.api.core.http import Request
from llm_middleware.conversation.turn import ToolSpec
from llm_middleware.errors import EngineOverloadedError, InvalidRequestError, LLMError, ModelNotFoundError
from llm_middleware.middleware.policy.auth import AuthenticationError

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _decode(body: dict):
    request = Request(method="POST", path="/v1/messages", root_path="/ai",
                      headers={"content-type": "application/json"}, body=json.dumps(body).encode())
    return decode_body(request, messages_request_decoder)


def _body(**fields) -> dict:
    return {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], **fields}


def test_conversation_with_tool_round_trip_becomes_template_messages() -> None:
    body = _decode(_body(
        system=[{"type": "text", "text": "Be brief."},
                {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Use the tool.", "signature": "x"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny", "is_error": False},
                {"type": "text", "text": "And tomorrow?"},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_2",
                 "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ]},
        ],
    ))
    assert translate.template_messages(body) == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Use the tool.",
         "tool_calls": [{"id": "toolu_1", "type": "function",
                         "function": {"name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "a\nb"},
    ]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        ([{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}], "messages[0].content[0].type"),
        ([{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}],
         "messages[0].content[0].content[0].type"),
        ([{"type": "document", "source": {}}], "messages[0].content[0].type"),
        ([{"type": "tool_use", "id": "t", "name": "f", "input": {}}], "messages[0].content[0].type"),
        ([], "messages[0].content"),
    ],
)
def test_blocks_this_server_cannot_take_are_refused_by_name(content: list, param: str) -> None:
    body = _decode(_body(messages=[{"role": "user", "content": content}]))
    with pytest.raises(InvalidRequestError) as refused:
        translate.template_messages(body)
    assert refused.value.param == param


def test_unknown_block_types_and_missing_max_tokens_fail_decoding() -> None:
    with pytest.raises(InvalidRequestError) as unknown:
        _decode(_body(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]))
    assert unknown.value.param == "messages[0].content[0].type"
    body = _body()
    del body["max_tokens"]
    with pytest.raises(InvalidRequestError) as missing:
        _decode(body)
    assert missing.value.param == "max_tokens"
    with pytest.raises(InvalidRequestError) as hot:
        _decode(_body(temperature=1.5))
    assert hot.value.param == "temperature"


def test_tools_tool_choice_thinking_and_sampling() -> None:
    body = _decode(_body(
        tools=[{"name": "weather", "description": "Look it up", "input_schema": WEATHER},
               {"name": "clock", "input_schema": {"type": "object"}, "type": "custom"}],
        tool_choice={"type": "tool", "name": "weather"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        stop_sequences=["END"], temperature=0.5, top_k=3, metadata={"user_id": "u1"},
    ))
    assert translate.tools(body) == [
        ToolSpec("weather", "Look it up", WEATHER, param="tools[0].input_schema"),
        ToolSpec("clock", None, {"type": "object"}, param="tools[1].input_schema"),
    ]
    assert translate.tool_choice(body.tool_choice) == ("weather", False)
    assert translate.thinking(body.thinking) is True
    assert translate.sampling(body) == {"max_tokens": 8, "temperature": 0.5, "top_k": 3, "stop": ["END"]}

    choices = {
        None: ("auto", True),
        json.dumps({"type": "auto", "disable_parallel_tool_use": True}): ("auto", False),
        json.dumps({"type": "any"}): ("required", True),
        json.dumps({"type": "none"}): ("none", True),
    }
    for choice, expected in choices.items():
        fields = {"tool_choice": json.loads(choice)} if choice else {}
        parsed = _decode(_body(tools=[{"name": "weather", "input_schema": WEATHER}], **fields))
        assert translate.tool_choice(parsed.tool_choice) == expected
    assert translate.thinking(_decode(_body(thinking={"type": "disabled"})).thinking) is False
    assert translate.thinking(_decode(_body(thinking={"type": "adaptive"})).thinking) is None
    assert translate.thinking(_decode(_body()).thinking) is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"name": "weather"}]}, "tools[0].input_schema"),
    ],
)
def test_bad_tools_are_refused_by_name(fields: dict, param: str) -> None:
    body = _decode(_body(**fields))
    with pytest.raises(InvalidRequestError) as refused:
        translate.tools(body)
    assert refused.value.param == param


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequestError("bad"), 400, "invalid_request_error"),
        (AuthenticationError(), 401, "authentication_error"),
        (ModelNotFoundError("no model"), 404, "not_found_error"),
        (EngineOverloadedError("busy", retry_after=2), 429, "rate_limit_error"),
        (RuntimeError("/secret/path"), 500, "api_error"),
    ],
)
def test_errors_in_anthropic_shape(error: Exception, status: int, kind: str) -> None:
    response = exception_response(error)
    body = json.loads(response.body)
    assert response.status == status and body["type"] == "error" and body["error"]["type"] == kind
    assert "secret" not in body["error"]["message"]
    if status == 429:
        assert ("retry-after", "2") in response.headers


def test_error_event_is_a_named_frame() -> None:
    frame = error_event(LLMError("engine failed"))
    name, data = frame.decode().strip().split("\n")
    assert name == "event: error"
    body = msgspec.json.decode(data[len("data: "):])
    assert body == {"type": "error", "error": {"type": "api_error", "message": "engine failed"}}
