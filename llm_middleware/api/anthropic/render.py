"""A turn's events -> Anthropic's message: whole, or as its stream of ``event:`` frames.

A message answers one choice.  Its content is a sequence of blocks in the order the model wrote
them: thinking, text, one ``tool_use`` block per call, and the calls the server ran with their results.  A stream opens a block when its kind of
output starts, and closes it when another kind starts or the choice ends.
"""

from __future__ import annotations

import json
from typing import Any

from ...conversation.answer import ToolCall
from ...conversation.events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnUsage
from ...conversation.tool_loop import ToolDone, ToolRunning
from ..core.sse import named_event
from .types import (
    ContentBlock,
    ContentBlockDelta,
    ContentBlockStart,
    ContentBlockStop,
    InputJsonDelta,
    Message,
    MessageDelta,
    MessageDeltaFields,
    MessageDeltaUsage,
    MessageStart,
    MessageStop,
    Ping,
    ServerToolResultBlock,
    ServerToolUseBlock,
    SignatureDelta,
    StopReason,
    TextBlock,
    ThinkingBlock,
    ThinkingDelta,
    ToolUseBlock,
    MessageUsage,
)
from .types import TextDelta as TextDeltaOut

_STOP_REASONS: dict[str, StopReason] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def stop_reason(finish_reason: str, stop_sequence: str | None = None) -> StopReason:
    """Anthropic's ``stop_reason`` for a choice's finish reason (and the stop string that ended it, if one did)."""
    if finish_reason == "stop" and stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def usage(counts: TurnUsage) -> MessageUsage:
    """The message's usage: Anthropic counts prompt tokens read from the cache apart from ``input_tokens``."""
    return MessageUsage(
        input_tokens=counts.prompt_tokens - counts.cached_tokens,
        output_tokens=counts.completion_tokens,
        cache_read_input_tokens=counts.cached_tokens,
    )


def tool_use(call: ToolCall) -> ToolUseBlock:
    """A tool call as a ``tool_use`` block (its arguments decoded: they are always a JSON object)."""
    return ToolUseBlock(id=call.id, name=call.name, input=json.loads(call.arguments))


def content_blocks(reasoning: str | None, text: str | None, calls: list[ToolCall]) -> list[ContentBlock]:
    """A whole choice's content: its thinking, its text, then its tool calls (empty parts left out)."""
    blocks: list[ContentBlock] = []
    if reasoning:
        blocks.append(ThinkingBlock(thinking=reasoning))
    if text:
        blocks.append(TextBlock(text=text))
    blocks += [tool_use(call) for call in calls]
    return blocks


class MessageStream:
    """Turns the events of one turn (or of the tool loop) into the frames of a streamed message, and
    keeps the message they add up to (:meth:`message`).

    ``message_start`` (and a ``ping``) go out with the first event, with no usage counted yet (the
    engine counts at the end); :meth:`closing` closes the open block and sends ``message_delta``
    (stop reason, the whole usage) and ``message_stop``.  A call the server runs is an ``mcp_tool_use``
    block, its result an ``mcp_tool_result`` block, in the order they happened.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self._id = message_id
        self._model = model
        self._started = False
        self._open: str | None = None  # the kind of the open block: "thinking", "text" or None
        self._pieces: list[str] = []  # the open block's text so far
        self._content: list[ContentBlock] = []
        self._stop_reason: StopReason | None = None
        self._stop_sequence: str | None = None
        self._usage: MessageUsage | None = None

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        message = Message(
            id=self._id, model=self._model, content=[], stop_reason=None, stop_sequence=None,
            usage=MessageUsage(input_tokens=0, output_tokens=0),
        )
        return [named_event(MessageStart(message=message)), named_event(Ping())]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        index, block = len(self._content) - 1, self._content[-1]
        text, self._pieces = "".join(self._pieces), []
        frames = []
        if isinstance(block, ThinkingBlock):
            block.thinking = text
            frames.append(named_event(ContentBlockDelta(index=index, delta=SignatureDelta())))
        elif isinstance(block, TextBlock):
            block.text = text
        self._open = None
        return [*frames, named_event(ContentBlockStop(index=index))]

    def _open_block(self, kind: str, block: ContentBlock) -> list[bytes]:
        if self._open == kind:
            return []
        frames = self._close()
        self._open = kind
        self._content.append(block)
        return [*frames, named_event(ContentBlockStart(index=len(self._content) - 1, content_block=block))]

    def _whole(self, block: ContentBlock, shown: ContentBlock, arguments: str | None = None) -> list[bytes]:
        """A block that comes whole: its start (``shown``), its arguments as one delta, its stop."""
        frames = self._close()
        index = len(self._content)
        self._content.append(block)
        frames.append(named_event(ContentBlockStart(index=index, content_block=shown)))
        if arguments is not None:
            frames.append(named_event(ContentBlockDelta(index=index, delta=InputJsonDelta(partial_json=arguments))))
        return [*frames, named_event(ContentBlockStop(index=index))]

    def on_event(self, event: Any) -> bytes:
        """The frames ``event`` produces, joined (``b""`` for none)."""
        frames = self._start()
        if isinstance(event, ReasoningDelta) and event.text:
            frames += self._open_block("thinking", ThinkingBlock(thinking=""))
            self._pieces.append(event.text)
            frames.append(named_event(ContentBlockDelta(index=len(self._content) - 1, delta=ThinkingDelta(thinking=event.text))))
        elif isinstance(event, TextDelta) and event.text:
            frames += self._open_block("text", TextBlock(text=""))
            self._pieces.append(event.text)
            frames.append(named_event(ContentBlockDelta(index=len(self._content) - 1, delta=TextDeltaOut(text=event.text))))
        elif isinstance(event, ToolCallMade):
            call = event.call
            frames += self._whole(tool_use(call), ToolUseBlock(id=call.id, name=call.name, input={}), call.arguments)
        elif isinstance(event, ToolRunning):
            call = event.call
            # Whole in its start: the SDK's stream accumulator reads input deltas of ``tool_use`` blocks only.
            block = ServerToolUseBlock(id=call.id, name=call.name, server_name=event.source, input=json.loads(call.arguments))
            frames += self._whole(block, block)
        elif isinstance(event, ToolDone):
            result = ServerToolResultBlock(tool_use_id=event.call.id, content=event.result.content,
                                           is_error=event.result.outcome != "ok")
            frames += self._whole(result, result)
        elif isinstance(event, ChoiceDone):
            frames += self._close()
            self._stop_reason = stop_reason(event.finish_reason, event.stop_sequence)
            self._stop_sequence = event.stop_sequence
        elif isinstance(event, TurnUsage):
            self._usage = usage(event)
        return b"".join(frames)

    def message(self) -> Message:
        """The whole message the events so far add up to (the open block closed)."""
        self._close()
        return Message(id=self._id, model=self._model, content=self._content, stop_reason=self._stop_reason,
                       stop_sequence=self._stop_sequence,
                       usage=self._usage or MessageUsage(input_tokens=0, output_tokens=0))

    def closing(self) -> bytes:
        """The last frames: the open block's stop, ``message_delta`` and ``message_stop``."""
        frames = [*self._start(), *self._close()]
        totals = self._usage or MessageUsage(input_tokens=0, output_tokens=0)
        delta = MessageDelta(
            delta=MessageDeltaFields(stop_reason=self._stop_reason, stop_sequence=self._stop_sequence),
            # Totals, input included: some clients (LangChain) read the usage from here only.
            usage=MessageDeltaUsage(
                output_tokens=totals.output_tokens,
                input_tokens=totals.input_tokens,
                cache_creation_input_tokens=totals.cache_creation_input_tokens,
                cache_read_input_tokens=totals.cache_read_input_tokens,
            ),
        )
        frames += [named_event(delta), named_event(MessageStop())]
        return b"".join(frames)
