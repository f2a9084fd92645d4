"""A turn's output as Responses items and events: one builder for streamed, whole and background responses.

The builder takes what the model writes (thinking, answer text, tool calls, the end) and returns
the events OpenAI streams for it, numbered by ``sequence_number``, while it keeps the response
object up to date; a whole response is the builder's final object, its events dropped.
"""

from __future__ import annotations

import time
import msgspec

from ...errors import LLMError
from .items import ID_PREFIXES, new_id
from .types import (
    ContentPartAdded,
    ContentPartDone,
    ErrorEvent,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    MessageItem,
    OutputItemAdded,
    OutputItem,
    OutputItemDone,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    OutputTokensDetails,
    ReasoningItem,
    ReasoningText,
    ReasoningTextDelta,
    ReasoningTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseError,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    ResponseQueued,
    ResponseUsage,
    ServerToolArgumentsDelta,
    ServerToolArgumentsDone,
    ServerToolCallItem,
    ServerToolCompleted,
    ServerToolFailed,
    ServerToolInProgress,
    StreamEvent,
    TokenLogprob,
    ToolExecutionError,
)

#: Statuses of a response still being made.
RUNNING = ("queued", "in_progress")


def usage_of(input_tokens: int, output_tokens: int, cached_tokens: int = 0) -> ResponseUsage:
    """Token counts as the response's ``usage``: ``cached_tokens`` of the input came from the prefix
    cache (reasoning tokens are not counted apart: 0)."""
    return ResponseUsage(
        input_tokens=input_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=cached_tokens),
        output_tokens=output_tokens,
        output_tokens_details=OutputTokensDetails(),
        total_tokens=input_tokens + output_tokens,
    )


def copy(response: ResponseObject) -> ResponseObject:
    """``response`` with its output list copied, so later items do not show in events already made."""
    return msgspec.structs.replace(response, output=list(response.output))


class ResponseBuilder:
    """Builds one response and its events; ``response`` is the object as it stands."""

    def __init__(self, response: ResponseObject, *, sequence_number: int = 0) -> None:
        self.response = response
        self._sequence = sequence_number
        self._open: MessageItem | ReasoningItem | None = None  # the item text is flowing into
        self._text: list[str] = []
        self._logprobs: list[TokenLogprob] = []
        self._running: dict[str, int] = {}  # call id -> output index of a server call not yet ended

    def _next(self) -> int:
        number = self._sequence
        self._sequence += 1
        return number

    @property
    def output_index(self) -> int:
        """The index of the last output item."""
        return len(self.response.output) - 1

    # ---- the beginning ----------------------------------------------------------------------------

    def created(self) -> list[StreamEvent]:
        """``response.created``, then ``response.queued`` or ``response.in_progress`` as the status says."""
        events: list[StreamEvent] = [ResponseCreated(sequence_number=self._next(), response=copy(self.response))]
        if self.response.status == "queued":
            events.append(ResponseQueued(sequence_number=self._next(), response=copy(self.response)))
        else:
            events.append(ResponseInProgress(sequence_number=self._next(), response=copy(self.response)))
        return events

    def in_progress(self) -> list[StreamEvent]:
        """A queued response starts."""
        self.response.status = "in_progress"
        return [ResponseInProgress(sequence_number=self._next(), response=copy(self.response))]

    # ---- what the model writes ------------------------------------------------------------------

    def server_call(self, call_id: str, name: str, arguments: str, source: str) -> list[StreamEvent]:
        """The server runs the call ``call_id`` itself: an ``mcp_call`` item in progress."""
        item = ServerToolCallItem(id=new_id(ID_PREFIXES["mcp_call"]), server_label=source, name=name, arguments="",
                                  status="in_progress")
        events = self._add(item)
        index = self.output_index
        events += [
            ServerToolArgumentsDelta(sequence_number=self._next(), item_id=item.id, output_index=index, delta=arguments),
            ServerToolArgumentsDone(sequence_number=self._next(), item_id=item.id, output_index=index,
                                    arguments=arguments),
            ServerToolInProgress(sequence_number=self._next(), item_id=item.id, output_index=index),
        ]
        item.arguments = arguments
        self._running[call_id] = index
        return events

    def server_result(self, call_id: str, output: str, ok: bool) -> list[StreamEvent]:
        """The call ``call_id`` the server ran ended: its result, or (not ``ok``) what the model was told instead."""
        index = self._running.pop(call_id)
        item = self.response.output[index]
        assert isinstance(item, ServerToolCallItem)
        event: type[ServerToolCompleted | ServerToolFailed]
        if ok:
            item.output, item.status, event = output, "completed", ServerToolCompleted
        else:
            item.error, item.status, event = ToolExecutionError(content=output), "failed", ServerToolFailed
        return [event(sequence_number=self._next(), item_id=item.id, output_index=index),
                OutputItemDone(sequence_number=self._next(), output_index=index, item=item)]

    def _add(self, item: OutputItem) -> list[StreamEvent]:
        events = self._close("completed")
        self.response.output.append(item)
        # A copy: the item changes as it fills, and each event shows it as it was.
        events.append(OutputItemAdded(sequence_number=self._next(), output_index=self.output_index,
                                      item=msgspec.structs.replace(item)))
        return events

    def reasoning(self, text: str) -> list[StreamEvent]:
        """The model thought ``text``."""
        events: list[StreamEvent] = []
        if not isinstance(self._open, ReasoningItem):
            item = ReasoningItem(id=new_id(ID_PREFIXES["reasoning"]), status="in_progress")
            events += self._add(item)
            self._open = item
            events.append(ContentPartAdded(sequence_number=self._next(), item_id=item.id,
                                           output_index=self.output_index, content_index=0,
                                           part=ReasoningText(text="")))
        self._text.append(text)
        events.append(ReasoningTextDelta(sequence_number=self._next(), item_id=self._open.id,
                                         output_index=self.output_index, content_index=0, delta=text))
        return events

    def text(self, text: str, logprobs: list[TokenLogprob] | None = None) -> list[StreamEvent]:
        """The model answered ``text`` (with its tokens' log-probabilities when asked for)."""
        events: list[StreamEvent] = []
        if not isinstance(self._open, MessageItem):
            item = MessageItem(id=new_id(ID_PREFIXES["message"]), status="in_progress")
            events += self._add(item)
            self._open = item
            events.append(ContentPartAdded(sequence_number=self._next(), item_id=item.id,
                                           output_index=self.output_index, content_index=0,
                                           part=OutputText(text="")))
        self._text.append(text)
        self._logprobs += logprobs or ()
        events.append(OutputTextDelta(sequence_number=self._next(), item_id=self._open.id,
                                      output_index=self.output_index, content_index=0, delta=text,
                                      logprobs=logprobs or []))
        return events

    def tool_call(self, call_id: str, name: str, arguments: str) -> list[StreamEvent]:
        """The model called ``name``; a call arrives whole, its arguments as one delta."""
        item = FunctionCallItem(id=new_id(ID_PREFIXES["function_call"]), call_id=call_id, name=name, arguments="",
                                status="in_progress")
        events = self._add(item)
        index = self.output_index
        events.append(FunctionCallArgumentsDelta(sequence_number=self._next(), item_id=item.id, output_index=index,
                                                 delta=arguments))
        events.append(FunctionCallArgumentsDone(sequence_number=self._next(), item_id=item.id, output_index=index,
                                                name=name, arguments=arguments))
        item.arguments = arguments
        item.status = "completed"
        events.append(OutputItemDone(sequence_number=self._next(), output_index=index, item=item))
        return events

    def _close(self, status: str) -> list[StreamEvent]:
        """Finish the item text flows into: its part's ``.done`` events, then the item's."""
        item, self._open = self._open, None
        if item is None:
            return []
        text, self._text = "".join(self._text), []
        index = self.output_index
        events: list[StreamEvent]
        if isinstance(item, ReasoningItem):
            part = ReasoningText(text=text)
            events = [ReasoningTextDone(sequence_number=self._next(), item_id=item.id, output_index=index,
                                        content_index=0, text=text)]
        else:
            logprobs, self._logprobs = self._logprobs, []
            part = OutputText(text=text, logprobs=logprobs)  # type: ignore[assignment]
            events = [OutputTextDone(sequence_number=self._next(), item_id=item.id, output_index=index,
                                     content_index=0, text=text, logprobs=logprobs)]
        events.append(ContentPartDone(sequence_number=self._next(), item_id=item.id, output_index=index,
                                      content_index=0, part=part))
        item.content = [part]  # type: ignore[list-item]
        item.status = status
        events.append(OutputItemDone(sequence_number=self._next(), output_index=index, item=item))
        return events

    # ---- the end -----------------------------------------------------------------------------------

    def finish(self, reason: str, usage: ResponseUsage | None) -> list[StreamEvent]:
        """The turn ended for ``reason`` (``length``: cut at ``max_output_tokens``): close the open item,
        then ``response.completed`` or ``response.incomplete``."""
        incomplete = reason == "length"
        events = self._close("incomplete" if incomplete else "completed")
        now = int(time.time())
        self.response.usage = usage
        if incomplete:
            self.response.status = "incomplete"
            self.response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
            events.append(ResponseIncomplete(sequence_number=self._next(), response=copy(self.response)))
        else:
            self.response.status = "completed"
            self.response.completed_at = now
            events.append(ResponseCompleted(sequence_number=self._next(), response=copy(self.response)))
        return events

    def fail(self, error: LLMError) -> list[StreamEvent]:
        """The turn failed: an ``error`` event, then ``response.failed`` (the item in progress marked incomplete)."""
        events: list[StreamEvent] = [
            ErrorEvent(sequence_number=self._next(), code=error.code, message=error.message, param=error.param)
        ]
        events += self._close("incomplete")
        self.response.status = "failed"
        self.response.error = ResponseError(code=error_code(error), message=error.message)
        events.append(ResponseFailed(sequence_number=self._next(), response=copy(self.response)))
        return events


def error_code(error: LLMError) -> str:
    """The ``error.code`` of a failed response: OpenAI's codes are few; ours map onto them."""
    if error.status == 429:
        return "rate_limit_exceeded"
    if error.status < 500:
        return "invalid_prompt"
    return "server_error"
