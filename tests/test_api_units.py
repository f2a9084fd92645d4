"""Pure pieces of the API layer: body decoding, error mapping, SSE framing, tool-call parsing, grammars."""

from __future__ import annotations

import base64
import json
import struct

import msgspec
import pytest

from llm_middleware import errors
from llm_middleware.api.core.decoding import decode_body, validation_error_param
from llm_middleware.api.core.http import Request
from llm_middleware.api.core.options import sampling_options
from llm_middleware.api.core.sse import EventStream, event
from llm_middleware.api.openai.embeddings import base64_float32
from llm_middleware.api.openai.errors import error_response, exception_response
from llm_middleware.api.openai.guided import output_format
from llm_middleware.api.openai.messages import tool_specs
from llm_middleware.api.openai.streaming import DONE, FRAMING
from llm_middleware.api.openai.types.chat import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    ResponseFormat,
    chat_request_decoder,
)
from llm_middleware.conversation import guided
from llm_middleware.conversation.stream import TurnSplitter, TurnStream
from llm_middleware.conversation.tool_calls import ParsedToolCall, ToolCallParser, new_tool_call_id, parse_tool_calls
from llm_middleware.conversation.turn import Turn, guided_spec


def _request(body: bytes, content_type: str | None = "application/json") -> Request:
    headers = {} if content_type is None else {"content-type": content_type}
    return Request(method="POST", path="/v1/chat/completions", root_path="/ai", headers=headers, body=body)


# ---- decoding and errors -------------------------------------------------------------------------


def test_decode_accepts_unknown_fields_and_content_parts() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "vendor_extra": {"anything": 1},
        "max_completion_tokens": 7,
    }
    req = decode_body(_request(json.dumps(body).encode()), chat_request_decoder)
    assert req.messages[0].content[0].text == "hi"
    assert req.max_completion_tokens == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": 1, "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"content": "x"}]}, "messages[0].role"),
        ({}, "messages"),
        ({"messages": [], "temperature": "hot"}, "temperature"),
        ({"messages": [], "tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ],
)
def test_validation_errors_name_the_field(body: dict, param: str) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        decode_body(_request(json.dumps(body).encode()), chat_request_decoder)
    assert info.value.param == param
    assert info.value.status == 400
    assert param in info.value.message


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"messages": [', "application/json", 400, "invalid_json"),
        (b"", "application/json", 400, "invalid_json"),
        (b'{"model": "\xff", "messages": []}', "application/json", 400, "invalid_encoding"),
        (b"messages=hi", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"{}", "application/json; charset=latin-1", 415, "unsupported_media_type"),
    ],
)
def test_malformed_bodies_are_client_errors(body: bytes, content_type: str, status: int, code: str) -> None:
    with pytest.raises(errors.LLMError) as info:
        decode_body(_request(body, content_type), chat_request_decoder)
    assert (info.value.status, info.value.code) == (status, code)


def test_missing_content_type_is_read_as_json() -> None:
    req = decode_body(_request(b'{"messages": []}', None), chat_request_decoder)
    assert req.messages == []


def test_validation_param_for_nested_missing_field() -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        chat_request_decoder.decode(b'{"messages": [{"role": "user"}], "tool_choice": {"function": {}}}')
    assert validation_error_param(info.value) == "tool_choice.function.name"


def test_error_response_shape_and_retry_after() -> None:
    response = exception_response(errors.EngineOverloadedError("queue full", retry_after=2.2))
    assert response.status == 429
    assert ("retry-after", "3") in response.headers
    assert json.loads(response.body) == {
        "error": {"message": "queue full", "type": "rate_limit_error", "param": None, "code": "overloaded"}
    }
    loading = exception_response(errors.EngineNotReadyError("loading"))
    assert loading.status == 503 and ("retry-after", "1") in loading.headers
    bad = exception_response(errors.ContextLengthExceededError("too long", param="messages"))
    assert bad.status == 400 and json.loads(bad.body)["error"]["code"] == "context_length_exceeded"
    assert not any(name == "retry-after" for name, _ in bad.headers)


def test_unexpected_exceptions_become_opaque_500() -> None:
    response = exception_response(RuntimeError("secret internals"))
    assert response.status == 500
    assert b"secret" not in response.body
    assert json.loads(response.body)["error"]["type"] == "server_error"


def test_error_response_helper() -> None:
    response = error_response(413, "too big", code="request_too_large", headers=[("x-a", "b")])
    assert response.status == 413
    assert dict(response.headers) == {"content-type": "application/json", "x-a": "b"}
    assert json.loads(response.body)["error"]["code"] == "request_too_large"


# ---- sampling options --------------------------------------------------------------------------


def test_sampling_options_leave_out_unset_fields_and_convert_logit_bias() -> None:
    req = chat_request_decoder.decode(
        b'{"messages": [], "temperature": 0, "logit_bias": {"5": -100, "7": 3}, "top_k": 4, "stop": "x"}'
    )
    assert sampling_options(req, max_tokens=9) == {
        "temperature": 0.0, "top_k": 4, "stop": "x", "max_tokens": 9, "logit_bias": {5: -100.0, 7: 3.0},
    }


def test_logit_bias_with_non_integer_key_is_rejected() -> None:
    req = chat_request_decoder.decode(b'{"messages": [], "logit_bias": {"hello": 1}}')
    with pytest.raises(errors.InvalidRequestError) as info:
        sampling_options(req, max_tokens=None)
    assert info.value.param == "logit_bias" and "hello" in info.value.message


# ---- SSE ---------------------------------------------------------------------------------------


def test_sse_framing() -> None:
    chunk = ChatCompletionChunk(
        id="chatcmpl-1", created=1, model="m",
        choices=[ChatChunkChoice(index=0, delta=ChatDelta(content="hé"))],
    )
    data = event(chunk)
    assert data.startswith(b"data: ") and data.endswith(b"\n\n") and data.count(b"\n") == 2
    payload = json.loads(data[6:])
    assert payload["choices"][0] == {"index": 0, "delta": {"content": "hé"}, "logprobs": None, "finish_reason": None}
    assert "usage" not in payload  # absent unless include_usage
    assert DONE == b"data: [DONE]\n\n"


def test_base64_embedding_is_little_endian_float32() -> None:
    vector = [0.5, -1.25, 3.0]
    raw = base64.b64decode(base64_float32(vector))
    assert struct.unpack("<3f", raw) == tuple(vector)


# ---- tool calls --------------------------------------------------------------------------------

HERMES = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n' \
    '<tool_call>\n{"name": "get_time", "arguments": {"tz": "CET"}}\n</tool_call>'


def test_hermes_tool_calls() -> None:
    content, calls = parse_tool_calls(HERMES)
    assert content == "Let me check."
    assert calls == [
        ParsedToolCall("get_weather", '{"city": "Paris"}'),
        ParsedToolCall("get_time", '{"tz": "CET"}'),
    ]


def test_unclosed_hermes_call_at_end_of_output_is_parsed() -> None:
    content, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {}}\n')
    assert content is None and calls == [ParsedToolCall("f", "{}")]


def test_llama3_json_calls_need_an_offered_name() -> None:
    text = '{"name": "search", "parameters": {"q": "llm"}}'
    assert parse_tool_calls(text, {"search"}) == (None, [ParsedToolCall("search", '{"q": "llm"}')])
    # A JSON answer that is not a call of an offered tool stays content, untouched.
    assert parse_tool_calls(text, {"other"}) == (text, [])
    two = '<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"x": 1}}'
    assert parse_tool_calls(two) == (None, [ParsedToolCall("a", "{}"), ParsedToolCall("b", '{"x": 1}')])


def test_mistral_calls_both_layouts() -> None:
    text = '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "neg", "arguments": {"a": 3}}]'
    assert parse_tool_calls(text)[1] == [ParsedToolCall("add", '{"a": 1, "b": 2}'), ParsedToolCall("neg", '{"a": 3}')]
    newer = '[TOOL_CALLS]add[ARGS]{"a": 1}[TOOL_CALLS]neg[ARGS]{"a": 2}'
    assert parse_tool_calls(newer)[1] == [ParsedToolCall("add", '{"a": 1}'), ParsedToolCall("neg", '{"a": 2}')]


@pytest.mark.parametrize(
    "text",
    [
        "no calls here, just <tool text> and [brackets]",
        "<tool_call>\nthis is not json\n</tool_call> after",
        "[TOOL_CALLS] not json either",
        "  leading spaces and trailing  ",
    ],
)
def test_text_without_valid_calls_is_kept_verbatim(text: str) -> None:
    assert parse_tool_calls(text, {"f"}) == (text, [])


@pytest.mark.parametrize("text", [HERMES, '[TOOL_CALLS][{"name": "x", "arguments": {"é": "東京"}}]', "plain <tool"])
@pytest.mark.parametrize("piece", [1, 3, 7])
def test_streaming_parser_matches_whole_parse(text: str, piece: int) -> None:
    parser = ToolCallParser()
    items = []
    for start in range(0, len(text), piece):
        items += parser.feed(text[start : start + piece])
    items += parser.finish()
    content = "".join(i for i in items if isinstance(i, str))
    calls = [i for i in items if isinstance(i, ParsedToolCall)]
    whole_content, whole_calls = parse_tool_calls(text)
    assert calls == whole_calls
    assert content.strip() == (whole_content or "").strip()


def test_streaming_parser_releases_content_before_a_call_starts() -> None:
    parser = ToolCallParser()
    assert parser.feed("Sure, ") == ["Sure, "]
    assert parser.feed("<tool") == []  # could be the start of a marker: held
    assert parser.feed("_call>") == []
    out = parser.feed('{"name": "f", "arguments": {"a": 1}}</tool_call>')
    assert out == [ParsedToolCall("f", '{"a": 1}')]
    assert parser.finish() == []


def test_tool_call_ids() -> None:
    ids = {new_tool_call_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("call_") and len(i) == 29 and i[5:].isalnum() for i in ids)


# ---- constrained decoding specs ----------------------------------------------------------------


def _tools() -> list:
    req = msgspec.json.decode(
        json.dumps({
            "messages": [],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": {
                    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "noop"}},
            ],
        }),
        type=ChatCompletionRequest,
    )
    return req.tools


def _turn(**fields) -> Turn:
    return Turn(messages=[{"role": "user", "content": "Hi"}], tools=tool_specs(_tools()), **fields)


def test_constrained_requests_are_refused_without_engine_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guided, "GUIDED_SUPPORTED", False)
    with pytest.raises(errors.InvalidRequestError) as info:
        guided_spec(_turn(output=output_format(ResponseFormat(type="json_object"), None)))
    assert (info.value.param, info.value.code) == ("response_format", "unsupported_parameter")
    with pytest.raises(errors.InvalidRequestError) as info:
        guided_spec(_turn(tool_choice="required"))
    assert info.value.param == "tool_choice"
    assert guided_spec(_turn(output=output_format(ResponseFormat(type="text"), None))) is None
    assert guided_spec(_turn(tool_choice="auto")) is None


def test_guided_specs_when_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guided, "GUIDED_SUPPORTED", True)
    json_object = output_format(ResponseFormat(type="json_object"), None)
    assert guided_spec(_turn(output=json_object)) == {"json_schema": {"type": "object"}}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    fmt = msgspec.convert({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, ResponseFormat)
    assert guided_spec(_turn(output=output_format(fmt, None))) == {"json_schema": schema}
    broken = msgspec.convert(
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/missing"}}}, ResponseFormat
    )
    with pytest.raises(errors.InvalidRequestError) as info:
        guided_spec(_turn(output=output_format(broken, None)))
    assert info.value.param == "response_format.json_schema.schema"
    with pytest.raises(errors.InvalidRequestError) as info:
        guided_spec(_turn(tool_choice="missing"))
    assert info.value.param == "tool_choice.name"


def _accepts(tokenizer, grammar: str, text: str) -> bool:
    import llguidance
    import llguidance.hf

    matcher = llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer), grammar)
    ids = tokenizer.encode(text, add_special_tokens=False)
    return matcher.consume_tokens(ids) and matcher.is_accepting()


def test_forced_tool_call_grammar_accepts_exactly_hermes_calls(monkeypatch: pytest.MonkeyPatch, tiny_model_dir) -> None:
    from llguidance import LLMatcher
    from transformers import AutoTokenizer

    monkeypatch.setattr(guided, "GUIDED_SUPPORTED", True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    named = guided_spec(_turn(tool_choice="get_weather"))
    assert named is not None
    grammar = LLMatcher.grammar_from_lark(named["lark"])
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert _accepts(tokenizer, grammar, good)
    assert not _accepts(tokenizer, grammar, good.replace("get_weather", "noop"))
    assert not _accepts(tokenizer, grammar, good + '\n' + good)  # named: exactly one call
    required = LLMatcher.grammar_from_lark(guided_spec(_turn(tool_choice="required"))["lark"])
    other = '<tool_call>\n{"name": "noop", "arguments": {}}\n</tool_call>'
    assert _accepts(tokenizer, required, good + "\n" + other)
    single = LLMatcher.grammar_from_lark(guided_spec(_turn(tool_choice="required", parallel_tool_calls=False))["lark"])
    assert _accepts(tokenizer, single, other) and not _accepts(tokenizer, single, good + "\n" + other)


# ---- stream plumbing ---------------------------------------------------------------------------


async def test_failure_mid_stream_becomes_an_error_event_then_done() -> None:
    from llm_middleware.api.openai.chat import ChatChunks
    from llm_middleware.engine.outputs import Delta

    closed = []

    async def deltas():
        try:
            yield Delta(index=0, text="partial", token_ids=[1])
            raise errors.EngineStepError("the model step failed")
        finally:
            closed.append(True)

    stream = deltas()
    first = await anext(stream)
    chunks = ChatChunks("chatcmpl-1", 1, "m", include_usage=False, logprobs=False)
    turn = TurnStream(first, stream, TurnSplitter(None, None))
    events = EventStream(turn, chunks.on_event, FRAMING, closing=chunks.closing)
    raw = b"".join([part async for part in events])
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert json.loads(blocks[-2][6:]) == {
        "error": {"message": "the model step failed", "type": "server_error", "param": None, "code": "engine_error"}
    }
    assert blocks[-1] == b"data: [DONE]" and closed == [True]


async def test_closing_an_event_stream_never_read_closes_its_sources() -> None:
    from llm_middleware.api.core.streams import merge, resume

    closed: list[str] = []

    async def source(name: str):
        try:
            while True:
                yield name
        finally:
            closed.append(name)

    one = source("one")
    first = await anext(one)
    events = EventStream(one, lambda item: event({"item": item}), FRAMING, first=first)
    await events.aclose()  # the client went away before the first event was sent
    assert closed == ["one"] and not events.failed
    assert [part async for part in events] == []

    a, b = source("a"), source("b")
    firsts = [await anext(a), await anext(b)]
    merged = merge([resume(first, stream) for first, stream in zip(firsts, [a, b])])
    events = EventStream(merged, lambda item: event({"item": item[1]}), FRAMING, sources=[a, b])
    await events.aclose()  # a merge never started has no reads to cancel: its sources are closed all the same
    assert sorted(closed) == ["a", "b", "one"]


async def test_merge_interleaves_and_closing_it_closes_every_stream() -> None:
    import asyncio

    from llm_middleware.api.core.streams import merge

    second_seen = asyncio.Event()
    closed: list[int] = []

    async def first():  # its second item waits until the consumer has seen the other stream's item
        yield "a0"
        await second_seen.wait()
        yield "a1"

    async def second():
        yield "b0"

    async def consume() -> list[str]:
        items = []
        async for _, item in merge([first(), second()]):
            items.append(item)
            if item == "b0":
                second_seen.set()
        return items

    items = await asyncio.wait_for(consume(), 10)  # a merge that read the streams in turn would never end
    assert sorted(items[:2]) == ["a0", "b0"] and items[2] == "a1"

    async def endless(k: int):
        try:
            while True:
                await asyncio.sleep(0)
                yield k
        finally:
            closed.append(k)

    merged = merge([endless(0), endless(1)])
    await anext(merged)
    await merged.aclose()
    assert sorted(closed) == [0, 1]