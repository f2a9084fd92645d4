"""A turn's events rendered as Anthropic's message and stream frames, read back by the official SDK's accumulator."""

from __future__ import annotations

import json

from anthropic.lib.streaming._messages import accumulate_event

from llm_middleware.api.anthropic.errors import FRAMING
from llm_middleware.api.anthropic.render import MessageStream, content_blocks, stop_reason, usage
from llm_middleware.api.core.responses import encoder
from llm_middleware.api.core.sse import EventStream
from llm_middleware.conversation.answer import ToolCall
from llm_middleware.conversation.events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnUsage
from llm_middleware.errors import EngineStepError

CALL = ToolCall(0, "call_1", "get_forecast", '{"city": "Paris", "days": 3}')
LATER = ToolCall(1, "call_2", "get_time", "{}")


def _frames(stream: MessageStream, events: list) -> list[tuple[str, dict]]:
    raw = b"".join(stream.on_event(event) for event in events) + stream.closing()
    frames = []
    for frame in raw.decode().strip().split("\n\n"):
        event_line, data_line = frame.split("\n")
        frames.append((event_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))))
    return frames


def test_blocks_open_and_close_as_the_kind_of_output_changes() -> None:
    events = [
        ReasoningDelta(0, "Let me "), ReasoningDelta(0, "think."), TextDelta(0, ""), TextDelta(0, "Checking"),
        TextDelta(0, " now."), ToolCallMade(0, CALL), ToolCallMade(0, LATER), ChoiceDone(0, "tool_calls"),
        TurnUsage(prompt_tokens=20, completion_tokens=15),
    ]
    frames = _frames(MessageStream("msg_1", "tiny"), events)
    assert all(name == data["type"] for name, data in frames)
    shape = [(name, data.get("index"), (data.get("delta") or data.get("content_block") or {}).get("type"))
             for name, data in frames]
    assert shape == [
        ("message_start", None, None), ("ping", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None), ("message_stop", None, None),
    ]
    assert frames[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert frames[-2][1]["usage"] == {"output_tokens": 15, "input_tokens": 20, "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0}

    snapshot, buffers = None, {}
    for _, data in frames:
        if data["type"] != "ping":
            snapshot = accumulate_event(event=data, current_snapshot=snapshot, json_bufs=buffers)
    whole = content_blocks("Let me think.", "Checking now.", [CALL, LATER])
    assert snapshot.model_dump(exclude_none=True)["content"] == json.loads(encoder.encode(whole))
    assert snapshot.stop_reason == "tool_use" and snapshot.usage.input_tokens == 20
    assert snapshot.usage.output_tokens == 15


def test_an_empty_answer_is_a_message_without_blocks() -> None:
    frames = _frames(MessageStream("msg_2", "tiny"), [ChoiceDone(0, "length"), TurnUsage(3, 0)])
    assert [name for name, _ in frames] == ["message_start", "ping", "message_delta", "message_stop"]
    assert frames[2][1]["delta"]["stop_reason"] == "max_tokens"


def test_whole_message_parts() -> None:
    assert content_blocks(None, "", []) == []
    assert [type(b).__name__ for b in content_blocks("", "hi", [CALL])] == ["TextBlock", "ToolUseBlock"]
    assert content_blocks(None, None, [CALL])[0].input == {"city": "Paris", "days": 3}
    assert [stop_reason(r) for r in ("stop", "length", "tool_calls")] == ["end_turn", "max_tokens", "tool_use"]
    counted = usage(TurnUsage(prompt_tokens=20, completion_tokens=5))
    assert (counted.input_tokens, counted.cache_read_input_tokens, counted.output_tokens) == (20, 0, 5)


async def test_a_failure_mid_stream_ends_with_an_error_event() -> None:
    async def events():
        yield TextDelta(0, "Hello")
        raise EngineStepError("A model step failed.")

    frames = MessageStream("msg_3", "tiny")
    stream = EventStream(events(), frames.on_event, FRAMING, closing=frames.closing)
    raw = b"".join([chunk async for chunk in stream]).decode()
    names = [frame.split("\n")[0].removeprefix("event: ") for frame in raw.strip().split("\n\n")]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "error"]
    assert stream.failed
    error = json.loads(raw.strip().split("\n\n")[-1].split("\n")[1].removeprefix("data: "))
    assert error == {"type": "error", "error": {"type": "api_error", "message": "A model step failed."}}


def test_the_servers_calls_come_where_they_happened_in_the_stream_and_the_whole_message() -> None:
    from llm_middleware.conversation.tool_loop import ToolDone, ToolRunning
    from llm_middleware.tools.calls import ToolResult

    events = [
        ReasoningDelta(0, "Look it up."), TextDelta(0, "One moment."), ToolRunning(0, 1, CALL, "app"),
        ToolDone(0, 1, CALL, ToolResult("call_1", "get_forecast", "Error: get_forecast failed.", "error", 0.1)),
        TextDelta(0, "It failed."), ChoiceDone(0, "stop"), TurnUsage(prompt_tokens=30, completion_tokens=9),
    ]
    stream = MessageStream("msg_1", "tiny")
    frames = _frames(stream, events)
    starts = [data["content_block"] for name, data in frames if name == "content_block_start"]
    assert [block["type"] for block in starts] == ["thinking", "text", "mcp_tool_use", "mcp_tool_result", "text"]
    assert starts[2]["input"] == {"city": "Paris", "days": 3} and starts[2]["server_name"] == "app"
    assert starts[3] == {"type": "mcp_tool_result", "tool_use_id": "call_1", "content": "Error: get_forecast failed.",
                         "is_error": True}
    whole = json.loads(encoder.encode(stream.message()))
    assert [block["type"] for block in whole["content"]] == [block["type"] for block in starts]
    assert whole["content"][0]["thinking"] == "Look it up." and whole["content"][4]["text"] == "It failed."
    assert whole["stop_reason"] == "end_turn" and whole["usage"]["output_tokens"] == 9
