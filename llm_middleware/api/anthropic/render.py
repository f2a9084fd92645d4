"""A turn's events -> Anthropic's message: whole, or as its stream of ``event:`` frames.

A message answers one choice.  Its content is a sequence of blocks in the order the model wrote
them: thinking, text, and one ``tool_use`` block per call.  A stream opens a block when its kind of
output starts, and closes it when another kind starts or the choice ends.
"""

from __future__ import annotations

import json
from typing import Any

from ...conversation.answer import ToolCall
from ...conversation.events import ChoiceDone, ReasoningDelta, TextDelta, ToolCallMade, TurnUsage
from ..core.responses import encoder
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
    StopReason,
    StreamEvent,
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


def sse(event: StreamEvent) -> bytes:
    """One frame: the ``event:`` line names the event's type (Anthropic's clients dispatch on it)."""
    name = type(event).__struct_config__.tag
    return b"event: " + name.encode() + b"\ndata: " + encoder.encode(event) + b"\n\n"


class MessageStream:
    """Turns the events of one turn into the frames of a streamed message; holds the stream's state.

    ``message_start`` (and a ``ping``) go out with the first event, with no usage counted yet (the
    engine counts at the end); :meth:`closing` closes the open block and sends ``message_delta``
    (stop reason, the whole usage) and ``message_stop``.
    """

    def __init__(self, message_id: str, model: str) -> None:
        self._id = message_id
        self._model = model
        self._started = False
        self._open: str | None = None  # the kind of the open block: "thinking", "text" or None
        self._blocks = 0
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
        return [sse(MessageStart(message=message)), sse(Ping())]

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        self._blocks += 1
        return [sse(ContentBlockStop(index=self._blocks - 1))]

    def _open_block(self, kind: str, block: ContentBlock) -> list[bytes]:
        if self._open == kind:
            return []
        frames = self._close()
        self._open = kind
        return [*frames, sse(ContentBlockStart(index=self._blocks, content_block=block))]

    def on_event(self, event: Any) -> bytes:
        """The frames ``event`` produces, joined (``b""`` for none)."""
        frames = self._start()
        if isinstance(event, ReasoningDelta) and event.text:
            frames += self._open_block("thinking", ThinkingBlock(thinking=""))
            frames.append(sse(ContentBlockDelta(index=self._blocks, delta=ThinkingDelta(thinking=event.text))))
        elif isinstance(event, TextDelta) and event.text:
            frames += self._open_block("text", TextBlock(text=""))
            frames.append(sse(ContentBlockDelta(index=self._blocks, delta=TextDeltaOut(text=event.text))))
        elif isinstance(event, ToolCallMade):
            frames += self._close()
            call = event.call
            block = ToolUseBlock(id=call.id, name=call.name, input={})
            start = ContentBlockStart(index=self._blocks, content_block=block)
            arguments = ContentBlockDelta(index=self._blocks, delta=InputJsonDelta(partial_json=call.arguments))
            frames += [sse(start), sse(arguments), sse(ContentBlockStop(index=self._blocks))]
            self._blocks += 1
        elif isinstance(event, ChoiceDone):
            frames += self._close()
            self._stop_reason = stop_reason(event.finish_reason, event.stop_sequence)
            self._stop_sequence = event.stop_sequence
        elif isinstance(event, TurnUsage):
            self._usage = usage(event)
        return b"".join(frames)

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
        frames += [sse(delta), sse(MessageStop())]
        return b"".join(frames)
